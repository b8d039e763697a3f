import { randomBytes, timingSafeEqual } from 'node:crypto';
import { blake2s } from '@noble/hashes/blake2.js';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { isIP } from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';
import { z } from 'zod';
import { wgKeySchema } from '../../contract/mesh-events.js';
import { MeshlinkError } from '../../errors.js';
import type { Logger } from '../../util/logger.js';
import { TokenBuckets } from '../../util/token-bucket.js';
import { zodErrorText } from '../../util/zod-error.js';

/**
 * The UDP relay the server runs for pairs whose NATs allow no direct path (docs/MESH.md, "Relay").
 *
 * One allocation per pair of nodes: two UDP ports, one per member. Member A's WireGuard sends to port A,
 * member B's to port B; a packet that arrives on port A from A leaves from port B to B, and back, so
 * each member hears its peer from the port it sends to (WireGuard roams an endpoint to the source of
 * what it receives: any other port would pull it off the relay). Each
 * port latches the first source (IP and port) that sends a WireGuard handshake initiation or response
 * from an IP the server observed for that member (`ips`: its control connection's source, its STUN
 * reflexive address); from then on only that source is accepted on that port, but see re-latching
 * below. Everything else is dropped and counted by reason.
 *
 * The relay sees only ciphertext: WireGuard's messages have fixed sizes and a type byte followed by
 * three zero bytes, which is all it checks (wireguard.com/papers/wireguard.pdf §5.4):
 *   type 1 handshake initiation, 148 bytes; type 2 handshake response, 92 bytes;
 *   type 3 cookie reply, 64 bytes; type 4 transport data, 32 bytes or more, a multiple of 16.
 * Only types 1 and 2 latch a port; after latching, any of the four is forwarded. So the relay is no
 * open UDP forwarder: a sender must come from the member's observed IP and speak WireGuard's framing,
 * and what it can send is capped by the allocation's token bucket.
 *
 * An allocation expires after `idleMs` without a forwarded packet (120 s by default: WireGuard's
 * persistent keepalive, 25 s here, renews it while the tunnel is up); an expired allocation forwards
 * nothing and is closed by the next sweep.
 *
 * Re-latching (a NAT rebinding: the member's router gave its WireGuard port a new public port). The
 * relay cannot authenticate WireGuard, but the member's peer can, and says so in a way the relay can
 * read: a handshake response (type 2) carries, as its receiver index (bytes 8..11), the sender index
 * (bytes 4..7) of the initiation it answers, and WireGuard answers only an initiation that decrypts
 * with the peer's keys and carries a fresh timestamp (a replay gets no answer). So a latch moves only
 * when all of these hold:
 *   1. the latched source has been silent for `relatchAfterMs` (default 10 s; a rebound member's old
 *      mapping is silent for good, a live one sends keepalives and its own handshakes);
 *   2. a handshake initiation arrives from one of the member's `ips`, from another port: it becomes a
 *      candidate (at most 4 per port, kept 10 s) and is forwarded to the peer;
 *   3. the peer answers with a handshake response whose receiver index is that candidate's sender
 *      index, within those 10 s, and the latched source stayed silent meanwhile.
 * Then the port latches the candidate and the response goes to it. An attacker who can send from the
 * member's IP (another host behind the same NAT or CGNAT) can make candidates, but without the
 * member's private key gets no matching response; one who sees the member's packets on the path
 * could copy an index, but could drop or redirect them anyway.
 *
 * Confirmation (the first latch). The first handshake from a member's IP latches its port at once,
 * because the peer can only answer a source the relay forwards to; but such a latch is *unconfirmed*:
 * another host behind the member's NAT could have sent it first, and keep it fresh with junk. The
 * relay keeps the sender indices (bytes 4..7) of the handshakes the unconfirmed source sent (at most
 * 4), and the latch becomes confirmed when the peer proves it took one of them:
 *   - a handshake response whose receiver index (bytes 8..11) is one of them (the peer answered the
 *     source's initiation), or
 *   - a transport packet whose receiver index (bytes 4..7) is one of them (the peer completed the
 *     handshake the source answered: the initiator's first data carries the responder's index).
 * Both need the peer's WireGuard to have decrypted the source's handshake, so junk never confirms.
 * While a latch is unconfirmed, rule 1 above does not apply: an initiation from another port of the
 * member's IPs is a candidate at once, and the latched source's traffic does not void candidates;
 * a confirmed candidate replaces the unconfirmed latch, and is confirmed itself. A candidate may not
 * use an index the latched source offered or another candidate holds (copied off the wire, it would
 * take the answer meant for the member); an answer naming the latched source's own index confirms
 * the latch in place. Without the members' keys, a squatter that keeps *flooding* the candidate list
 * (4 entries) faster than the peer answers still keeps the port: MAC1 (below) is what stops it. Cookie replies
 * (type 3) confirm nothing: a cookie reply answers any initiation with a valid MAC1, which needs only
 * the peer's public key.
 *
 * MAC1 (when the server gives the members' WireGuard public keys, as it always does). Every WireGuard
 * handshake message carries `mac1`, a keyed BLAKE2s-128 of the message before it, under
 * HASH("mac1----" || the receiver's static public key) (wireguard.pdf §5.4.4): initiation bytes
 * 116..131 over 0..115, response bytes 60..75 over 0..59. It proves nothing about the sender's
 * identity, but it proves the sender knows the receiver's public key, which a host that merely shares
 * a member's NAT does not. So a handshake toward a member whose key is known must carry a valid MAC1,
 * or it is dropped (`bad_mac`) before it can latch, become a candidate or confirm: junk can no longer
 * take a port, flood the candidate list or vouch for a squatter. The previous key stays accepted after
 * a change (a member's peers learn a rotated key a moment after the relay). Without a key (tests, the
 * bench) nothing is checked.
 *
 * Addresses keep the form the socket reported them in for sending (a dual-stack `::` socket reports
 * and needs `::ffff:192.0.2.1`); comparisons and what `list()` shows use the plain form (192.0.2.1).
 *
 * The clock is injected (`now`) so that tests move time instead of sleeping.
 */

/** WireGuard message types (the first byte; the next three are zero). */
export const WgMessageType = { initiation: 1, response: 2, cookieReply: 3, transport: 4 } as const;
const WG_INITIATION_LENGTH = 148;
const WG_RESPONSE_LENGTH = 92;
const WG_COOKIE_REPLY_LENGTH = 64;
const WG_TRANSPORT_MIN_LENGTH = 32;

/** 1 or 2 for a well-formed handshake initiation/response, 3 or 4 for the others, 0 for anything else. */
export function wgMessageType(packet: Buffer): number {
  if (packet.length < WG_TRANSPORT_MIN_LENGTH || packet[1] !== 0 || packet[2] !== 0 || packet[3] !== 0) return 0;
  const type = packet[0]!;
  switch (type) {
    case WgMessageType.initiation:
      return packet.length === WG_INITIATION_LENGTH ? type : 0;
    case WgMessageType.response:
      return packet.length === WG_RESPONSE_LENGTH ? type : 0;
    case WgMessageType.cookieReply:
      return packet.length === WG_COOKIE_REPLY_LENGTH ? type : 0;
    case WgMessageType.transport:
      // Any length from the header and tag up (checked above). Not "a multiple of 16": WireGuard pads
      // the plaintext to 16 only up to the interface MTU, so a full-size packet at MTU 1420 is
      // 1420 + 32 = 1452 bytes, and requiring the multiple dropped every full-size packet (bulk TCP
      // through the relay stalled while pings passed; found by bench:relay through real WireGuard).
      return type;
    default:
      return 0;
  }
}

export const RELAY_DROP_REASONS = ['wrong_source', 'not_wireguard', 'bad_mac', 'not_latched', 'peer_not_latched', 'rate_limited', 'expired'] as const;
export type RelayDropReason = (typeof RELAY_DROP_REASONS)[number];

/** Candidates for re-latching kept per port (see above), and how long each waits for its response. */
const MAX_CANDIDATES = 4;
/** Sender indices of an unconfirmed latch's handshakes kept for its confirmation (see "Confirmation"). */
const MAX_OFFERED = 4;
const CANDIDATE_TTL_MS = 10_000;

const ipSchema = z.string().refine((v) => isIP(v) !== 0, 'an IP address');
const nodeIdSchema = z.string().min(1).max(128);
/**
 * A member: its node, the IPs it may send from (observed by the server: control connection, STUN),
 * and its WireGuard public key, under which the handshakes sent to it carry their MAC1 (see "MAC1").
 */
const memberSchema = z.object({ nodeId: nodeIdSchema, ips: z.array(ipSchema).min(1).max(4), publicKey: wgKeySchema.optional() });
/** What the server's mesh feature asks for: the pair and the IPs it observed for each member. */
export const relayAllocationRequestSchema = z
  .object({ a: memberSchema, b: memberSchema })
  .refine((r) => r.a.nodeId !== r.b.nodeId, { message: 'the two members must be different nodes', path: ['b', 'nodeId'] });
export type RelayAllocationRequest = z.infer<typeof relayAllocationRequestSchema>;

export interface UdpRelayOptions {
  /** The IP address to bind the allocations' ports to (0.0.0.0 for every address). */
  host: string;
  /** The UDP ports allocations take theirs from (a firewall opens just these); absent: any the OS gives. */
  ports?: { low: number; high: number } | null;
  /** Idle time after which an allocation stops forwarding (default 120 s), renewed by every forwarded packet. */
  idleMs?: number;
  /** Allocations at most (default 1,000: two ports each). */
  maxAllocations?: number;
  /** Bandwidth cap per allocation and direction, bytes per second (default 12.5 MB/s, 100 Mbit/s). */
  bytesPerSecond?: number;
  /** Burst per allocation and direction, bytes (default a quarter second of `bytesPerSecond`, at least 64 KiB). */
  burstBytes?: number;
  /** Silence of a latched source after which a confirmed handshake from another port may re-latch (default 10 s). */
  relatchAfterMs?: number;
  /** The clock (ms); Date.now by default. */
  now?: () => number;
  /** How often expired allocations are closed (default 5 s); 0 turns the timer off (tests call sweep()). */
  sweepIntervalMs?: number;
  /** Registers the relay's metrics here when given. */
  registry?: Registry;
  logger: Logger;
}

export interface RelayMember {
  nodeId: string;
  /** The IPs the server observed for the node (plain form): the only ones that may latch its port. */
  ips: string[];
  /** The UDP port of the relay this member sends to. */
  port: number;
  /** The latched source (plain form), once a handshake came from it. */
  latched: { address: string; port: number } | null;
  /** Whether the peer's WireGuard has vouched for the latched source (see "Confirmation"). */
  confirmed: boolean;
  /** The member's WireGuard public key, under which handshakes to it must carry their MAC1; null: unchecked. */
  publicKey: string | null;
  /** How often the latch moved to a new source (a NAT rebinding, see "Re-latching"). */
  relatched: number;
}

export interface RelayAllocationInfo {
  id: string;
  a: RelayMember;
  b: RelayMember;
  createdAt: number;
  lastActiveAt: number;
  expiresAt: number;
  bytes: number;
  packets: number;
}

export interface RelayCounters {
  relayedBytes: number;
  relayedPackets: number;
  /** Bytes by direction: from member `a` to `b` ("a_to_b") and back, summed over allocations. */
  relayedBytesAtoB: number;
  relayedBytesBtoA: number;
  /** Latches moved to a new source (see "Re-latching"). */
  relatched: number;
  dropped: Record<RelayDropReason, number>;
}

interface Source {
  /** As the socket reported it: the form to send to. */
  address: string;
  port: number;
}

interface Side {
  member: RelayMember;
  socket: Socket;
  /** The latched source in the socket's form (member.latched is the plain form). */
  target: Source | null;
  /** When the latched source last sent anything accepted. */
  heardAt: number;
  /** Re-latch candidates by the sender index of their initiation. */
  candidates: Map<number, Source & { at: number }>;
  /** While the latch is unconfirmed: the sender indices of the latched source's handshakes, oldest first. */
  offered: number[];
  /** The MAC1 keys of handshakes sent *to* the member (member.publicKey's, then the previous one's). */
  mac1Keys: Uint8Array[];
}

class Allocation {
  readonly id: string;
  readonly sides: [Side, Side];
  readonly createdAt: number;
  lastActiveAt: number;
  bytes = 0;
  packets = 0;
  closed = false;

  constructor(id: string, sides: [Side, Side], now: number) {
    this.id = id;
    this.sides = sides;
    this.createdAt = now;
    this.lastActiveAt = now;
  }
}

export class UdpRelay {
  readonly counters: RelayCounters = {
    relayedBytes: 0,
    relayedPackets: 0,
    relayedBytesAtoB: 0,
    relayedBytesBtoA: 0,
    relatched: 0,
    dropped: Object.fromEntries(RELAY_DROP_REASONS.map((r) => [r, 0])) as Record<RelayDropReason, number>,
  };
  readonly #o: { host: string; ports: { low: number; high: number } | null; idleMs: number; maxAllocations: number; relatchAfterMs: number; now: () => number };
  readonly #log: Logger;
  readonly #buckets: TokenBuckets;
  /** By pair key (the two node ids, sorted). */
  readonly #allocations = new Map<string, Allocation>();
  /** Sockets being bound count against the cap too, so concurrent allocate() calls cannot overshoot it. */
  #pending = 0;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(options: UdpRelayOptions) {
    if (isIP(options.host) === 0) throw new MeshlinkError('ML_ERR_CONFIG', `the relay listen address must be an IP address, got "${options.host}"`);
    const bytesPerSecond = options.bytesPerSecond ?? 12_500_000;
    if (!(bytesPerSecond > 0)) throw new MeshlinkError('ML_ERR_CONFIG', `the relay bandwidth cap must be positive, got ${bytesPerSecond}`);
    const ports = options.ports ?? null;
    if (ports && !(Number.isInteger(ports.low) && Number.isInteger(ports.high) && ports.low >= 1 && ports.high <= 65_535 && ports.high > ports.low)) {
      throw new MeshlinkError('ML_ERR_CONFIG', `the relay port range must be LOW-HIGH with 1 <= LOW < HIGH <= 65535, got ${ports.low}-${ports.high}`);
    }
    this.#o = { host: options.host, ports, idleMs: options.idleMs ?? 120_000, maxAllocations: options.maxAllocations ?? 1000, relatchAfterMs: options.relatchAfterMs ?? 10_000, now: options.now ?? Date.now };
    this.#log = options.logger.child({ component: 'relay' });
    // One bucket per allocation and direction; the table holds two per allocation.
    const capacity = options.burstBytes ?? Math.max(65_536, bytesPerSecond / 4);
    this.#buckets = new TokenBuckets({ perMinute: bytesPerSecond * 60, capacity, maxEntries: this.#o.maxAllocations * 2 + 16 });
    const interval = options.sweepIntervalMs ?? 5000;
    if (interval > 0) {
      this.#timer = setInterval(() => {
        const expired = this.sweep();
        if (expired.length > 0) this.onExpired?.(expired);
      }, interval);
      this.#timer.unref();
    }
    if (options.registry) this.#registerMetrics(options.registry);
  }

  /**
   * The pair's allocation, made when there is none (two fresh ports); renewed when there is one, and
   * then the members' IPs are the request's (a member that reconnected from a new address may latch
   * or re-latch from it; a latch already made stays).
   */
  async allocate(request: RelayAllocationRequest): Promise<RelayAllocationInfo> {
    const parsed = relayAllocationRequestSchema.safeParse(request);
    if (!parsed.success) throw new MeshlinkError('ML_ERR_RELAY_BAD_ALLOCATION', zodErrorText(parsed.error));
    if (this.#closed) throw new MeshlinkError('ML_ERR_RELAY_FULL', 'the relay is closed');
    const { a, b } = parsed.data;
    const key = pairKey(a.nodeId, b.nodeId);
    const existing = this.#allocations.get(key);
    if (existing && !this.#expired(existing)) {
      existing.lastActiveAt = this.#o.now();
      updateMembers(existing, a, b);
      return this.#info(existing);
    }
    if (existing) this.#close(key, existing, 'expired');
    if (this.#allocations.size + this.#pending >= this.#o.maxAllocations) {
      throw new MeshlinkError('ML_ERR_RELAY_FULL', `the relay holds ${this.#o.maxAllocations} allocations, its maximum`);
    }
    this.#pending++;
    let sockets: [Socket, Socket];
    try {
      const first = await bindIn(this.#o.host, this.#o.ports);
      try {
        sockets = [first, await bindIn(this.#o.host, this.#o.ports)];
      } catch (err) {
        first.close();
        throw err;
      }
    } finally {
      this.#pending--;
    }
    if (this.#closed) {
      sockets.forEach((s) => s.close());
      throw new MeshlinkError('ML_ERR_RELAY_FULL', 'the relay is closed');
    }
    const [sa, sb] = sockets;
    const now = this.#o.now();
    const side = (m: RelayAllocationRequest['a'], socket: Socket): Side => {
      const made: Side = { member: { nodeId: m.nodeId, ips: ipsOf(m.ips), port: socket.address().port, latched: null, confirmed: false, publicKey: null, relatched: 0 }, socket, target: null, heardAt: now, candidates: new Map(), offered: [], mac1Keys: [] };
      setPublicKey(made, m.publicKey);
      return made;
    };
    // Random ids: agents keep the sessions they were assigned across a server restart, so a counter
    // starting again at 1 would name a new session like an old one.
    const allocation = new Allocation(`r${randomBytes(9).toString('base64url')}`, [side(a, sa), side(b, sb)], now);
    // A concurrent allocate() for the same pair may have won: keep one allocation per pair.
    const raced = this.#allocations.get(key);
    if (raced && !raced.closed) {
      sockets.forEach((s) => s.close());
      raced.lastActiveAt = this.#o.now();
      return this.#info(raced);
    }
    this.#allocations.set(key, allocation);
    allocation.sides.forEach((side, index) => {
      side.socket.on('message', (packet, from) => this.#onPacket(allocation, index as 0 | 1, packet, from));
      // Errors of a UDP socket are per datagram (an ICMP unreachable for an earlier send): log, go on.
      side.socket.on('error', (err) => this.#log.debug({ err, allocation: allocation.id }, 'relay: socket error'));
    });
    this.#log.info({ allocation: allocation.id, a: a.nodeId, b: b.nodeId, ports: [sa.address().port, sb.address().port] }, 'relay allocation made');
    return this.#info(allocation);
  }

  /** Where allocations bind. */
  get listen(): { host: string; ports: { low: number; high: number } | null } {
    return { host: this.#o.host, ports: this.#o.ports ? { ...this.#o.ports } : null };
  }

  /** Checks that a port of the address (and range) binds, as `server start` does before it runs the relay. */
  static async probe(host: string, ports: { low: number; high: number } | null = null): Promise<void> {
    const socket = await bindIn(host, ports);
    await new Promise<void>((resolve) => socket.close(() => resolve()));
  }

  /**
   * Gives the pair's live allocation the members' current IPs and keys without renewing it (a reconcile must not
   * keep an idle allocation alive); false when the pair has none, or only an expired one.
   */
  updateIps(request: RelayAllocationRequest): boolean {
    const parsed = relayAllocationRequestSchema.safeParse(request);
    if (!parsed.success) throw new MeshlinkError('ML_ERR_RELAY_BAD_ALLOCATION', zodErrorText(parsed.error));
    const { a, b } = parsed.data;
    const allocation = this.#allocations.get(pairKey(a.nodeId, b.nodeId));
    if (!allocation || allocation.closed || this.#expired(allocation)) return false;
    updateMembers(allocation, a, b);
    return true;
  }

  /** The pair's allocation, or null. */
  get(nodeA: string, nodeB: string): RelayAllocationInfo | null {
    const allocation = this.#allocations.get(pairKey(nodeA, nodeB));
    return allocation ? this.#info(allocation) : null;
  }

  /** Every allocation (for listings and tests). */
  list(): RelayAllocationInfo[] {
    return [...this.#allocations.values()].map((a) => this.#info(a));
  }

  get size(): number {
    return this.#allocations.size;
  }

  /** Closes the pair's allocation; false when it had none. */
  release(nodeA: string, nodeB: string): boolean {
    const key = pairKey(nodeA, nodeB);
    const allocation = this.#allocations.get(key);
    if (!allocation) return false;
    this.#close(key, allocation, 'released');
    return true;
  }

  /** Closes every expired allocation and returns them (the mesh feature revokes their sessions); also runs on the timer, which hands them to `onExpired`. */
  sweep(): RelayAllocationInfo[] {
    const gone: RelayAllocationInfo[] = [];
    for (const [key, allocation] of this.#allocations) {
      if (this.#expired(allocation)) {
        gone.push(this.#info(allocation));
        this.#close(key, allocation, 'expired');
      }
    }
    return gone;
  }

  /** Called with what each timer sweep closed (server/mesh/relay-sessions.ts revokes them). */
  onExpired: ((expired: RelayAllocationInfo[]) => void) | null = null;

  /** Closes every allocation and stops the sweep timer. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    const closing = [...this.#allocations.values()].flatMap((a) => a.sides.map((s) => new Promise<void>((resolve) => s.socket.close(() => resolve()))));
    for (const a of this.#allocations.values()) a.closed = true;
    this.#allocations.clear();
    await Promise.all(closing);
  }

  #expired(allocation: Allocation): boolean {
    return this.#o.now() - allocation.lastActiveAt >= this.#o.idleMs;
  }

  #close(key: string, allocation: Allocation, why: 'expired' | 'released'): void {
    if (this.#allocations.get(key) === allocation) this.#allocations.delete(key);
    if (allocation.closed) return;
    allocation.closed = true;
    for (const side of allocation.sides) side.socket.close();
    this.#buckets.forget((k) => k.startsWith(`${allocation.id}/`));
    this.#log.info({ allocation: allocation.id, why, bytes: allocation.bytes, packets: allocation.packets }, 'relay allocation closed');
  }

  #drop(reason: RelayDropReason): void {
    this.counters.dropped[reason]++;
  }

  #onPacket(allocation: Allocation, index: 0 | 1, packet: Buffer, from: RemoteInfo): void {
    if (allocation.closed) return;
    const here = allocation.sides[index];
    const there = allocation.sides[1 - index]!;
    const latched = here.target;
    const now = this.#o.now();
    let candidate = false;
    // The latched source is compared in the socket's own form (it was one of its sources): the common
    // case costs two comparisons, no normalisation.
    if (latched) {
      if (from.port !== latched.port || from.address !== latched.address) {
        // Another source: only a handshake initiation from the member's IPs, and only as a candidate;
        // against a confirmed latch, only after the latched source went silent (see "Re-latching").
        const silent = !here.member.confirmed || now - here.heardAt >= this.#o.relatchAfterMs;
        if (!here.member.ips.includes(normalizeIp(from.address)) || wgMessageType(packet) !== WgMessageType.initiation || !silent) return this.#drop('wrong_source');
        candidate = true;
      }
    } else if (!here.member.ips.includes(normalizeIp(from.address))) {
      return this.#drop('wrong_source');
    }
    const type = wgMessageType(packet);
    if (type === 0) return this.#drop('not_wireguard');
    // A handshake toward the peer must show that its sender knows the peer's public key (see "MAC1").
    if ((type === WgMessageType.initiation || type === WgMessageType.response) && there.mac1Keys.length > 0 && !mac1Valid(packet, type, there.mac1Keys)) return this.#drop('bad_mac');
    if (now - allocation.lastActiveAt >= this.#o.idleMs) return this.#drop('expired');
    if (!latched) {
      if (type !== WgMessageType.initiation && type !== WgMessageType.response) return this.#drop('not_latched');
      this.#latch(allocation, here, from, now, false);
      here.offered.push(packet.readUInt32LE(4));
    } else if (candidate) {
      // A candidate may not claim an index the latched source already used (one who sees the member's
      // packets could copy it, and take the port with the answer meant for the member), nor replace
      // another source's candidate for the same index.
      const senderIndex = packet.readUInt32LE(4);
      if (here.offered.includes(senderIndex) || here.candidates.has(senderIndex)) return this.#drop('wrong_source');
      if (here.candidates.size >= MAX_CANDIDATES) here.candidates.delete(here.candidates.keys().next().value!);
      here.candidates.set(senderIndex, { address: from.address, port: from.port, at: now });
    } else {
      here.heardAt = now;
      if (here.member.confirmed) {
        // The confirmed source is alive: no candidate may take its place on a response meant for it.
        here.candidates.clear();
      } else if (type === WgMessageType.initiation || type === WgMessageType.response) {
        if (here.offered.length >= MAX_OFFERED) here.offered.shift();
        here.offered.push(packet.readUInt32LE(4));
      }
    }
    // The peer's WireGuard vouches for a source of this member's port by naming its index. An index the
    // latched source offered confirms the latch in place (below) and moves nothing.
    const named = type === WgMessageType.response ? packet.readUInt32LE(8) : type === WgMessageType.transport ? packet.readUInt32LE(4) : -1;
    const namesLatched = !there.member.confirmed && there.target !== null && named >= 0 && there.offered.includes(named);
    if (type === WgMessageType.response && there.candidates.size > 0 && !namesLatched) {
      // A response that answers a candidate's initiation: the candidate takes the port.
      const confirmed = there.candidates.get(packet.readUInt32LE(8));
      if (confirmed && now - confirmed.at < CANDIDATE_TTL_MS) {
        const old = there.member.latched;
        this.#latch(allocation, there, confirmed, now, true);
        there.member.relatched++;
        this.counters.relatched++;
        this.#log.info({ allocation: allocation.id, node: there.member.nodeId, from: old, to: there.member.latched }, 'relay port re-latched (a handshake answered from a new source)');
      }
    }
    if (namesLatched) {
      // A response answering the latched source's initiation, or data completing a handshake it answered.
      there.member.confirmed = true;
      there.offered = [];
      there.candidates.clear();
      this.#log.info({ allocation: allocation.id, node: there.member.nodeId, port: there.target!.port }, 'relay port latch confirmed by the peer');
    }
    const target = there.target;
    if (!target) return this.#drop('peer_not_latched');
    if (!this.#buckets.takeMany(`${allocation.id}/${index}`, packet.length, now)) return this.#drop('rate_limited');
    allocation.lastActiveAt = now;
    allocation.bytes += packet.length;
    allocation.packets++;
    this.counters.relayedBytes += packet.length;
    this.counters.relayedPackets++;
    if (index === 0) this.counters.relayedBytesAtoB += packet.length;
    else this.counters.relayedBytesBtoA += packet.length;
    there.socket.send(packet, target.port, target.address);
  }

  #latch(allocation: Allocation, side: Side, source: Source, now: number, confirmed: boolean): void {
    const first = side.member.latched === null;
    side.target = { address: source.address, port: source.port };
    side.member.latched = { address: normalizeIp(source.address), port: source.port };
    side.member.confirmed = confirmed;
    side.heardAt = now;
    side.candidates.clear();
    side.offered = [];
    if (first) this.#log.info({ allocation: allocation.id, node: side.member.nodeId, port: source.port }, 'relay port latched (unconfirmed until the peer answers)');
  }

  #info(a: Allocation): RelayAllocationInfo {
    const copy = (m: RelayMember): RelayMember => ({ ...m, ips: [...m.ips], latched: m.latched ? { ...m.latched } : null });
    return { id: a.id, a: copy(a.sides[0].member), b: copy(a.sides[1].member), createdAt: a.createdAt, lastActiveAt: a.lastActiveAt, expiresAt: a.lastActiveAt + this.#o.idleMs, bytes: a.bytes, packets: a.packets };
  }

  /**
   * prom-client metrics read from the plain counters at scrape time: the per-packet path touches
   * numbers only, never a label lookup.
   */
  #registerMetrics(registry: Registry): void {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const relay = this;
    new Gauge({
      name: 'meshlink_relay_allocations',
      help: 'Relay allocations open (two UDP ports each)',
      registers: [registry],
      collect() {
        this.set(relay.size);
      },
    });
    const exported = { packets: 0, dropped: Object.fromEntries(RELAY_DROP_REASONS.map((r) => [r, 0])) as Record<RelayDropReason, number> };
    const exportedDir = { a_to_b: 0, b_to_a: 0 };
    new Counter({
      name: 'meshlink_relay_bytes_total',
      help: 'Bytes the relay forwarded (WireGuard ciphertext, UDP payload), by direction: from the pair\'s first member (node ids in order) to the second, and back',
      labelNames: ['direction'],
      registers: [registry],
      collect() {
        const now = { a_to_b: relay.counters.relayedBytesAtoB, b_to_a: relay.counters.relayedBytesBtoA };
        for (const direction of ['a_to_b', 'b_to_a'] as const) {
          this.inc({ direction }, now[direction] - exportedDir[direction]);
          exportedDir[direction] = now[direction];
        }
      },
    });
    let exportedRelatched = 0;
    new Counter({
      name: 'meshlink_relay_relatched_total',
      help: 'Relay ports whose latch moved to a new source (a NAT rebinding; docs/MESH.md, "Relay")',
      registers: [registry],
      collect() {
        this.inc(relay.counters.relatched - exportedRelatched);
        exportedRelatched = relay.counters.relatched;
      },
    });
    new Counter({
      name: 'meshlink_relay_packets_total',
      help: 'Packets the relay forwarded',
      registers: [registry],
      collect() {
        this.inc(relay.counters.relayedPackets - exported.packets);
        exported.packets = relay.counters.relayedPackets;
      },
    });
    new Counter({
      name: 'meshlink_relay_dropped_packets_total',
      help: 'Packets the relay dropped, by reason',
      labelNames: ['reason'],
      registers: [registry],
      collect() {
        for (const reason of RELAY_DROP_REASONS) {
          this.inc({ reason }, relay.counters.dropped[reason] - exported.dropped[reason]);
          exported.dropped[reason] = relay.counters.dropped[reason];
        }
      },
    });
  }
}

function pairKey(a: string, b: string): string {
  return a < b ? `${a}\n${b}` : `${b}\n${a}`;
}

const MAC1_LABEL = Buffer.from('mac1----');
/** Where MAC1 sits in a handshake message: it covers the bytes before it (wireguard.pdf §5.4.4). */
const MAC1_OFFSET = { [WgMessageType.initiation]: 116, [WgMessageType.response]: 60 } as const;

/** HASH(LABEL_MAC1 || Spub): the key of the MAC1 of handshakes sent to the holder of `publicKey`. */
function mac1KeyOf(publicKey: string): Uint8Array {
  return blake2s(Buffer.concat([MAC1_LABEL, Buffer.from(publicKey, 'base64')]));
}

/** Whether a well-formed initiation or response carries a MAC1 valid under one of `keys`. */
function mac1Valid(packet: Buffer, type: 1 | 2, keys: readonly Uint8Array[]): boolean {
  const at = MAC1_OFFSET[type];
  const carried = packet.subarray(at, at + 16);
  for (const key of keys) if (timingSafeEqual(blake2s(packet.subarray(0, at), { key, dkLen: 16 }), carried)) return true;
  return false;
}

/** A member's key: a new one becomes current, and the one before stays accepted (see "MAC1"). */
function setPublicKey(side: Side, publicKey: string | undefined): void {
  if (publicKey === undefined || publicKey === side.member.publicKey) return;
  side.mac1Keys = [mac1KeyOf(publicKey), ...side.mac1Keys.slice(0, 1)];
  side.member.publicKey = publicKey;
}

/** Applies a request's IPs and keys to an allocation's members. */
function updateMembers(allocation: Allocation, a: RelayAllocationRequest['a'], b: RelayAllocationRequest['b']): void {
  for (const side of allocation.sides) {
    const m = side.member.nodeId === a.nodeId ? a : b;
    side.member.ips = ipsOf(m.ips);
    setPublicKey(side, m.publicKey);
  }
}

/** A member's IPs in the plain form, without duplicates. */
function ipsOf(ips: readonly string[]): string[] {
  return [...new Set(ips.map(normalizeIp))];
}

/**
 * An IPv4-mapped IPv6 source (::ffff:192.0.2.1, from a dual-stack socket) compares as its IPv4
 * address. For comparison and display only: sending keeps the socket's form (Source).
 */
export function normalizeIp(ip: string): string {
  const lower = ip.toLowerCase();
  return lower.startsWith('::ffff:') && isIP(lower.slice(7)) === 4 ? lower.slice(7) : lower;
}

/**
 * A socket on a port of the range (from a random point on, the next free one; ML_ERR_RELAY_FULL when
 * every port is taken), or on any port the OS gives when there is no range.
 */
async function bindIn(host: string, range: { low: number; high: number } | null): Promise<Socket> {
  if (range === null) return bind(host, 0);
  const size = range.high - range.low + 1;
  const start = Math.floor(Math.random() * size);
  for (let i = 0; i < size; i++) {
    try {
      return await bind(host, range.low + ((start + i) % size));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    }
  }
  throw new MeshlinkError('ML_ERR_RELAY_FULL', `every port of the relay's range ${range.low}-${range.high} is in use`);
}

function bind(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // `::` must take IPv4 too (most members): say so, whatever the host's net.ipv6.bindv6only is.
    const socket = isIP(host) === 6 ? createSocket({ type: 'udp6', ipv6Only: false }) : createSocket({ type: 'udp4' });
    const onError = (err: Error): void => {
      socket.close();
      reject(err);
    };
    socket.once('error', onError);
    socket.bind(port, host, () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}
