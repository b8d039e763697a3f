import { isIPv4, type Socket } from 'node:net';
import { parseProxyV2, type ProxyEndpoint, type ProxyInvalid } from './proxy-protocol.js';

/**
 * The first-byte deadline in front of the admission queue (issue 17, item 7).
 *
 * A TCP connection takes a handshake slot (admission.ts) only once its first bytes (a TLS client
 * sends its ClientHello at once) are readable. Before that it costs a file descriptor and nothing
 * else, and one that sends nothing within `timeoutMs` (default 3 s) is closed. Without this an idle
 * connection held its source's slot for the whole 10 s TLS handshake timeout: 16 of them from one
 * address blocked every other connection from that address (a NAT's other agents, a probe).
 *
 * Nothing is consumed: the bytes are read into the socket's own buffer (a 'readable' listener, no
 * read()), and the TLS socket that later wraps it feeds that buffer to its TLS state first
 * (node's _tls_wrap.js: "Socket already has some buffered data - emulate receiving it"), so the
 * handshake sees the whole ClientHello. test/server/client-hello.test.ts checks that it does.
 *
 * At most `maxPerSource` connections of one address wait for their first byte, and at most `maxTotal`
 * of all addresses together (many addresses are cheap: an IPv6 /64); one more is closed at once, so
 * the descriptors silent connections hold stay bounded by these caps, not by anyone's connect rate.
 *
 * With the PROXY protocol on (`--proxy-protocol`, issue 14), a connection must first bring a v2 header
 * (proxy-protocol.ts) from an allowed peer, then its first ClientHello byte, both within the same
 * deadline. The header is the one thing consumed; the bytes after it are put back (unshift) unread.
 */
export type HelloOutcome = 'ready' | 'timeout' | 'closed' | 'source_full' | 'proxy_refused' | 'proxy_invalid' | 'proxy_timeout';

/** What `wait` learnt of a connection besides its outcome. */
export interface HelloDetail {
  /** The client the PROXY header named; null: the socket's peer is the client (no header, LOCAL, UNSPEC). */
  client: ProxyEndpoint | null;
  /** Why a PROXY header was refused ('proxy_invalid'). */
  invalid?: ProxyInvalid;
}

/**
 * The PROXY protocol stage (`--proxy-protocol`, proxy-protocol.ts): every connection must start with a
 * v2 header, sent by an allowed peer, before its ClientHello; both within the same `timeoutMs`.
 */
export interface ProxyStage {
  /** Whether the socket's peer (a load balancer) may send a header at all; one that may not is closed at once. */
  allowed(address: string | undefined): boolean;
  /**
   * Whether a connection waiting for its header counts against its peer's per-source cap. false for a
   * list of balancers (`--proxy-protocol-from`): every client stands behind their few addresses, and
   * the total cap and the deadline bound what they hold; true when any peer may send a header.
   */
  countPeer: boolean;
}

export interface ClientHelloGateOptions {
  /** Read at every accept, so a changed value applies to the next connection (SIGHUP reload). */
  timeoutMs: () => number;
  maxPerSource: number;
  maxTotal: number;
  /** null or absent: connections start with their ClientHello. */
  proxy?: ProxyStage | null;
}

export class ClientHelloGate {
  readonly #options: ClientHelloGateOptions;
  readonly #waitingBySource = new Map<string, number>();
  readonly #pending = new Set<Socket>();

  constructor(options: ClientHelloGateOptions) {
    this.#options = options;
  }

  /** How many connections wait for their first byte now. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Calls `then` once: 'ready' with the socket's first ClientHello bytes buffered (unread), else after
   * the socket was destroyed ('timeout': nothing within the deadline; 'closed': the peer left first;
   * 'source_full': its address already has `maxPerSource` connections waiting, or `maxTotal` wait in all;
   * with the PROXY stage, 'proxy_refused': a peer not allowed to send a header, 'proxy_invalid': no
   * valid v2 header first, 'proxy_timeout': no complete header within the deadline).
   *
   * With the PROXY stage a connection counts against the client's address once the header is read, so
   * the per-source cap applies to each client behind the balancer. Before that it counts in the total,
   * and against its peer's address only when any peer may send a header (ProxyStage.countPeer).
   * The header's bytes, and only those, are consumed: the rest is put back for the TLS server.
   */
  wait(socket: Socket, then: (outcome: HelloOutcome, detail: HelloDetail) => void): void {
    const proxy = this.#options.proxy ?? null;
    const detail: HelloDetail = { client: null };
    // No peer address: the connection is gone already (reset before its accept was handled; an
    // haproxy TCP check connects, sends its header and leaves at once).
    if (socket.remoteAddress === undefined) {
      socket.destroy();
      then('closed', detail);
      return;
    }
    if (proxy && !proxy.allowed(socket.remoteAddress)) {
      socket.destroy();
      then('proxy_refused', detail);
      return;
    }
    const peer = socket.remoteAddress ?? 'unknown';
    const countPeer = proxy === null || proxy.countPeer;
    if (this.#pending.size >= this.#options.maxTotal || (countPeer && !this.#enter(peer))) {
      socket.destroy();
      then('source_full', detail);
      return;
    }
    /** The address this connection is counted against; null while it is counted in the total only. */
    let counted: string | null = countPeer ? peer : null;
    this.#pending.add(socket);
    let done = false;
    /** The PROXY header's bytes so far; null when there is none to read (off, or read). */
    let header: Buffer | null = proxy ? Buffer.alloc(0) : null;
    const finish = (outcome: HelloOutcome): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.off('error', onError);
      this.#pending.delete(socket);
      if (counted !== null) this.#leave(counted);
      if (outcome !== 'ready') socket.destroy();
      then(outcome, detail);
    };
    // The header is read (and so consumed) as it arrives; what follows it is unshifted back, unread.
    // Returns false once finished (refused), else true.
    const readHeader = (): boolean => {
      for (;;) {
        const chunk = socket.read() as Buffer | null;
        if (chunk === null) return true;
        const seen: Buffer = Buffer.concat([header!, chunk]);
        const parsed = parseProxyV2(seen);
        if (parsed.kind === 'incomplete') {
          header = seen;
          continue;
        }
        if (parsed.kind === 'invalid') {
          detail.invalid = parsed.reason;
          finish('proxy_invalid');
          return false;
        }
        header = null;
        if (parsed.length < seen.length) socket.unshift(seen.subarray(parsed.length));
        if (parsed.header.command === 'proxy') {
          // An IPv4 client named in an INET6 header (::ffff:a.b.c.d) is the same client as over INET:
          // one key for the caps, the limiter and the displays.
          const source = parsed.header.source;
          detail.client = { ...source, address: unmapIpv4(source.address) };
          // From now on the connection waits as the client's, whose address may be at its cap already.
          if (counted !== null) this.#leave(counted);
          counted = null;
          const client = detail.client.address;
          if (!this.#enter(client)) {
            finish('source_full');
            return false;
          }
          counted = client;
        }
        return true;
      }
    };
    const onReadable = (): void => {
      if (header !== null) {
        if (!readHeader() || header !== null) return;
        // The header is in; the ClientHello may have come with it, or comes with a later 'readable'.
        if (socket.readableLength > 0) finish('ready');
        return;
      }
      // 'readable' also fires at end-of-stream with nothing buffered: a peer that closed without a byte.
      finish(socket.readableLength > 0 ? 'ready' : 'closed');
    };
    // Reading the header (paused mode), the end of the stream shows as 'end': a peer that left mid-header.
    const onEnd = (): void => finish('closed');
    const onClose = (): void => finish('closed');
    const onError = (): void => finish('closed');
    const timer = setTimeout(() => finish(header !== null ? 'proxy_timeout' : 'timeout'), this.#options.timeoutMs());
    timer.unref();
    socket.on('readable', onReadable);
    socket.once('end', onEnd);
    socket.once('close', onClose);
    socket.once('error', onError);
  }

  /** Counts one more connection waiting from `source`; false (nothing counted) when it is at its cap. */
  #enter(source: string): boolean {
    const waiting = this.#waitingBySource.get(source) ?? 0;
    if (waiting >= this.#options.maxPerSource) return false;
    this.#waitingBySource.set(source, waiting + 1);
    return true;
  }

  #leave(source: string): void {
    const n = (this.#waitingBySource.get(source) ?? 1) - 1;
    if (n > 0) this.#waitingBySource.set(source, n);
    else this.#waitingBySource.delete(source);
  }

  /** Closes every connection still waiting (server shutdown). */
  close(): void {
    for (const socket of [...this.#pending]) socket.destroy();
  }
}

/** `::ffff:a.b.c.d` → `a.b.c.d`; any other address as it is. */
export function unmapIpv4(address: string): string {
  const m = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  return m && isIPv4(m[1]!) ? m[1]! : address;
}
