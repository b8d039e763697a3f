import { BlockList, isIP } from 'node:net';
import { keyOf } from './admission.js';
import type { ProxyEndpoint } from './proxy-protocol.js';

/**
 * The client's address of a gateway connection. Without the PROXY protocol it is the socket's peer;
 * behind a load balancer that sends a PROXY v2 header (`--proxy-protocol`, proxy-protocol.ts) it is
 * the address the header names. Everything keyed by "source" asks here: the first-byte gate's and the
 * handshake queue's per-source caps, the enrollment failure limit, the gateway's logs, the agent's
 * observed address (the mesh's `observedAddress`) and the enrollment audit record.
 *
 * Kept by the connection's key (the balancer's address and port, which the TLS socket that later wraps
 * the raw one shares), from the moment the header is read until the raw socket closes.
 */
export class ClientAddresses {
  readonly #byKey = new Map<string, ProxyEndpoint>();

  /** Records `client` as the peer of `socket` until it closes. */
  set(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined; once(event: 'close', fn: () => void): unknown }, client: ProxyEndpoint): void {
    const key = keyOf(socket);
    this.#byKey.set(key, client);
    socket.once('close', () => {
      if (this.#byKey.get(key) === client) this.#byKey.delete(key);
    });
  }

  /** The client's address of a connection (raw or TLS socket): the header's, else the socket's peer. */
  of(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
    return this.#byKey.get(keyOf(socket))?.address ?? socket.remoteAddress ?? 'unknown';
  }

  /** The balancer's address when the connection came through one (for logs), else null. */
  via(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string | null {
    return this.#byKey.has(keyOf(socket)) ? (socket.remoteAddress ?? null) : null;
  }
}

/** `a.b.c.d/n`, `x:y::z/n`, or a bare address (a /32 or /128); null when it is none of these. */
export function parseCidr(text: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | null {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const version = isIP(address);
  if (version === 0) return null;
  const max = version === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p)) return null;
    prefix = Number(p);
    if (prefix > max) return null;
  }
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/**
 * Whether a peer may send a PROXY header: an empty list allows every peer (then a firewall must
 * keep everyone but the balancer away from the port: docs/SERVER.md), else its address must be in
 * one of the networks. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.5`, a dual-stack listener) is matched
 * as the IPv4 address it is.
 */
export function proxyPeerFilter(cidrs: readonly string[]): (address: string | undefined) => boolean {
  if (cidrs.length === 0) return () => true;
  const list = new BlockList();
  for (const text of cidrs) {
    const cidr = parseCidr(text);
    if (!cidr) throw new Error(`not an address or network: ${text}`);
    list.addSubnet(cidr.address, cidr.prefix, cidr.family);
  }
  return (address) => {
    if (address === undefined) return false;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    const plain = mapped ? mapped[1]! : address;
    const version = isIP(plain);
    return version !== 0 && list.check(plain, version === 4 ? 'ipv4' : 'ipv6');
  };
}
