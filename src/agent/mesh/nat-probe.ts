import { randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import {
  StunAttribute,
  StunMessageType,
  decodeStunAddress,
  decodeStunErrorCode,
  encodeStunMessage,
  mappedEndpoint,
  parseStunMessage,
  stunAttribute,
  type StunEndpoint,
} from '../../contract/stun.js';
import { MeshlinkError } from '../../errors.js';

/**
 * The agent's side of endpoint discovery (docs/MESH.md, "NAT traversal"): from one local UDP port, a
 * STUN Binding request to the server's primary STUN port and one to its alternate port (named by the
 * first answer's OTHER-ADDRESS). The two reflexive addresses classify the NAT's mapping:
 *
 * - `none`: the reflexive address is one of this host's own addresses and the port is the local one:
 *   no NAT (or a 1:1 one): the node is reachable where it listens;
 * - `endpoint-independent`: both destinations saw the same public address and port: the NAT keeps one
 *   mapping per local port, so a peer that learns it can reach the node there once the node has sent
 *   it a packet (WireGuard's keepalive opens the hole);
 * - `endpoint-dependent`: the destinations saw different ports: a peer would see yet another mapping,
 *   so only a relay works;
 * - `unknown`: the alternate port did not answer (filtered, or an old server): treat as dependent.
 *
 * The probe must run from the WireGuard listen port for the reflexive address to be WireGuard's: the
 * kernel's WireGuard socket holds that port while the interface is up, so the agent probes before it
 * configures the port (see MeshAgent), and with endpoint-independent mapping the NAT gives WireGuard the
 * same public port afterwards.
 */

export type NatMapping = 'none' | 'endpoint-independent' | 'endpoint-dependent' | 'unknown';

export interface NatProbeOptions {
  /** The server's STUN primary port: a host name or IP address and a port. */
  server: { host: string; port: number };
  /** The local UDP port to probe from (the WireGuard listen port); 0 picks any. */
  localPort: number;
  /** Overall deadline for each of the two transactions (default 3 s). */
  timeoutMs?: number;
}

export interface NatProbeResult {
  /** The local port the probe ran from. */
  localPort: number;
  /** The server address the probe used (resolved). */
  server: StunEndpoint;
  /** What the primary port saw. */
  reflexive: StunEndpoint;
  /** What the alternate port saw; null when it did not answer. */
  alternateReflexive: StunEndpoint | null;
  mapping: NatMapping;
}

/**
 * Retransmission schedule of one transaction (ms after the first send). RFC 8489 §6.2.1 doubles from
 * 500 ms up to 39.5 s; a probe the agent repeats on every (re)connect wants an answer or a verdict
 * within seconds, so this one sends at most five times within the first 1.6 s and then waits out
 * `timeoutMs`.
 */
const RETRANSMIT_AT_MS = [0, 100, 300, 700, 1500];

export async function probeNat(options: NatProbeOptions): Promise<NatProbeResult> {
  const timeoutMs = options.timeoutMs ?? 3_000;
  const address = isIP(options.server.host) ? options.server.host : (await lookup(options.server.host)).address;
  const server = { address, port: options.server.port };
  const socket = await bindLocal(isIP(address) === 6 ? 'udp6' : 'udp4', options.localPort);
  try {
    const localPort = socket.address().port;
    const first = await transaction(socket, server, timeoutMs);
    if (!first) throw new MeshlinkError('ML_ERR_STUN_NO_ANSWER', `no STUN answer from ${formatEndpoint(server)} within ${timeoutMs} ms (is UDP ${server.port} open and the responder on?)`);
    let alternateReflexive: StunEndpoint | null = null;
    const other = first.otherAddress;
    if (other && other.port !== server.port) {
      // OTHER-ADDRESS of a responder bound to every address says 0.0.0.0 (or ::): same address, other port.
      const alternate = { address: isUnspecified(other.address) ? server.address : other.address, port: other.port };
      alternateReflexive = (await transaction(socket, alternate, timeoutMs))?.reflexive ?? null;
    }
    return { localPort, server, reflexive: first.reflexive, alternateReflexive, mapping: classify(localPort, first.reflexive, alternateReflexive) };
  } finally {
    socket.close();
  }
}

/** The mapping class from the two answers (pure; see the module comment). */
export function classify(localPort: number, reflexive: StunEndpoint, alternate: StunEndpoint | null, ownAddresses: ReadonlySet<string> = localAddresses()): NatMapping {
  if (reflexive.port === localPort && ownAddresses.has(reflexive.address)) return 'none';
  if (!alternate) return 'unknown';
  return alternate.address === reflexive.address && alternate.port === reflexive.port ? 'endpoint-independent' : 'endpoint-dependent';
}

interface BindingAnswer {
  reflexive: StunEndpoint;
  otherAddress: StunEndpoint | undefined;
}

/**
 * One Binding transaction: sends, retransmits on the schedule, and takes the first answer that
 * carries our transaction id and comes from the address asked. Resolves null at the deadline; an
 * error answer (e.g. 420) rejects with ML_ERR_STUN_NO_ANSWER naming its code.
 */
function transaction(socket: Socket, to: StunEndpoint, timeoutMs: number): Promise<BindingAnswer | null> {
  const transactionId = randomBytes(12);
  const request = encodeStunMessage({ type: StunMessageType.bindingRequest, transactionId });
  return new Promise((resolve, reject) => {
    const timers = RETRANSMIT_AT_MS.filter((at) => at < timeoutMs).map((at) => setTimeout(() => socket.send(request, to.port, to.address), at));
    const deadline = setTimeout(() => finish(() => resolve(null)), timeoutMs);
    const finish = (settle: () => void): void => {
      for (const t of timers) clearTimeout(t);
      clearTimeout(deadline);
      socket.off('message', onMessage);
      settle();
    };
    const onMessage = (datagram: Buffer, from: { address: string; port: number }): void => {
      if (from.address !== to.address || from.port !== to.port) return;
      const parsed = parseStunMessage(datagram);
      if (!parsed.ok || !parsed.message.transactionId.equals(transactionId)) return;
      const message = parsed.message;
      if (message.type === StunMessageType.bindingError) {
        const code = decodeStunErrorCode(stunAttribute(message, StunAttribute.errorCode) ?? Buffer.alloc(0));
        finish(() => reject(new MeshlinkError('ML_ERR_STUN_ERROR', `the STUN server ${formatEndpoint(to)} answered with error ${code ?? 'without a code'}`)));
        return;
      }
      const reflexive = message.type === StunMessageType.bindingSuccess ? mappedEndpoint(message) : undefined;
      if (!reflexive) return;
      const other = stunAttribute(message, StunAttribute.otherAddress);
      finish(() => resolve({ reflexive, otherAddress: other ? decodeStunAddress(other) : undefined }));
    };
    socket.on('message', onMessage);
  });
}

function bindLocal(type: 'udp4' | 'udp6', port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket({ type });
    const onBindError = (err: NodeJS.ErrnoException): void => {
      socket.close();
      reject(err.code === 'EADDRINUSE' ? new MeshlinkError('ML_ERR_STUN_PORT_BUSY', `UDP port ${port} is in use (the WireGuard interface holds its listen port while it is up)`) : err);
    };
    socket.once('error', onBindError);
    socket.bind(port, () => {
      socket.off('error', onBindError);
      // Later errors are per datagram (an ICMP unreachable): the transaction's deadline handles them.
      socket.on('error', () => undefined);
      resolve(socket);
    });
  });
}

function localAddresses(): Set<string> {
  return new Set(
    Object.values(networkInterfaces())
      .flat()
      .map((i) => i?.address)
      .filter((a): a is string => typeof a === 'string'),
  );
}

function isUnspecified(address: string): boolean {
  return address === '0.0.0.0' || address === '::';
}

function formatEndpoint(e: StunEndpoint): string {
  return isIP(e.address) === 6 ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`;
}
