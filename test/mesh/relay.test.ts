import { randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { blake2s } from '@noble/hashes/blake2.js';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshlinkError } from '../../src/errors.js';
import { UdpRelay, wgMessageType, type UdpRelayOptions } from '../../src/server/mesh/relay.js';
import { createLogger } from '../../src/util/logger.js';

/**
 * The UDP relay over real UDP sockets on loopback. Linux routes all of 127.0.0.0/8 to lo, so members
 * and strangers get distinct source IPs (127.0.0.1, .2, .3). Time moves through the injected clock:
 * no test sleeps to make time pass; waits are for conditions, with generous deadlines.
 */

const logger = createLogger({ name: 'relay-test', level: 'silent' });
const open: Array<{ close(): unknown }> = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

function relay(options: Partial<UdpRelayOptions> = {}): { relay: UdpRelay; clock: { now: number } } {
  const clock = { now: 1_000_000 };
  const r = new UdpRelay({ host: '127.0.0.1', logger, sweepIntervalMs: 0, now: () => clock.now, ...options });
  open.push(r);
  return { relay: r, clock };
}

interface Peer {
  socket: Socket;
  port: number;
  /** Datagrams received, in order. */
  inbox: Buffer[];
}

async function peer(ip: string): Promise<Peer> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, ip, resolve));
  const p: Peer = { socket, port: socket.address().port, inbox: [] };
  socket.on('message', (m) => p.inbox.push(m));
  open.push({ close: () => new Promise<void>((resolve) => socket.close(() => resolve())) });
  return p;
}

/** A datagram shaped like a WireGuard message of the type (random bytes after the header, as ciphertext is). */
function wg(type: 1 | 2 | 3 | 4, length = type === 1 ? 148 : type === 2 ? 92 : type === 3 ? 64 : 160): Buffer {
  const b = randomBytes(length);
  b[0] = type;
  b[1] = b[2] = b[3] = 0;
  return b;
}

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const send = (from: Peer, port: number, packet: Buffer) => new Promise<void>((resolve, reject) => from.socket.send(packet, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));

/** Sends and waits until the relay has either forwarded or dropped it. */
async function sendSettled(r: UdpRelay, from: Peer, port: number, packet: Buffer): Promise<void> {
  const before = settled(r);
  await send(from, port, packet);
  await until('the relay to handle the packet', () => settled(r) === before + 1);
}
const settled = (r: UdpRelay) => r.counters.relayedPackets + Object.values(r.counters.dropped).reduce((a, b) => a + b, 0);

/** Handshake and transport messages with the indices the relay reads (the rest random, as ciphertext is). */
function initiation(sender: number): Buffer {
  const p = wg(1);
  p.writeUInt32LE(sender, 4);
  return p;
}
function response(sender: number, receiver: number): Buffer {
  const p = wg(2);
  p.writeUInt32LE(sender, 4);
  p.writeUInt32LE(receiver, 8);
  return p;
}
function transport(receiver: number, length = 160): Buffer {
  const p = wg(4, length);
  p.writeUInt32LE(receiver, 4);
  return p;
}

/**
 * A pair with both ports latched: A at 127.0.0.1, B at 127.0.0.2. A's latch is confirmed (B's
 * response answers A's initiation, index 0x0a); B's is not yet (nothing from A has named 0x0b).
 */
async function latchedPair(r: UdpRelay) {
  const a = await peer('127.0.0.1');
  const b = await peer('127.0.0.2');
  const alloc = await r.allocate({ a: { nodeId: 'node-a', ips: ['127.0.0.1'] }, b: { nodeId: 'node-b', ips: ['127.0.0.2'] } });
  // A's initiation latches A's port; B's is not latched yet, so it goes nowhere (WireGuard retries).
  await sendSettled(r, a, alloc.a.port, initiation(0x0a));
  expect(r.counters.dropped.peer_not_latched).toBe(1);
  expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { port: a.port }, confirmed: false });
  const answer = response(0x0b, 0x0a);
  await sendSettled(r, b, alloc.b.port, answer);
  await until('the response at A', () => a.inbox.length === 1);
  expect(a.inbox[0]).toEqual(answer);
  expect(r.get('node-a', 'node-b')).toMatchObject({ a: { confirmed: true }, b: { latched: { port: b.port }, confirmed: false } });
  return { a, b, alloc };
}

describe('wgMessageType', () => {
  it('knows the four WireGuard messages by type byte, zero reserved bytes and length only', () => {
    // 1452: a full-size packet at MTU 1420, whose padding stops at the MTU (not a multiple of 16).
    expect([wg(1), wg(2), wg(3), wg(4), wg(4, 32), wg(4, 33), wg(4, 1440), wg(4, 1452)].map(wgMessageType)).toEqual([1, 2, 3, 4, 4, 4, 4, 4]);
    const reserved = wg(1);
    reserved[2] = 1;
    expect([wg(1, 147), wg(1, 149), wg(2, 148), wg(3, 92), wg(4, 31), wg(4, 16), reserved, Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.alloc(0)].map(wgMessageType)).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const five = wg(4);
    five[0] = 5;
    expect(wgMessageType(five)).toBe(0);
  });
});

describe('UdpRelay', () => {
  it('latches each port on a handshake from the member IP and forwards both ways, from the port the receiver sends to', async () => {
    const registry = new Registry();
    const { relay: r } = relay({ registry });
    const { a, b, alloc } = await latchedPair(r);
    expect(r.get('node-b', 'node-a')).toMatchObject({ a: { latched: { address: '127.0.0.1', port: a.port } }, b: { latched: { address: '127.0.0.2', port: b.port } } });
    const fromB: number[] = [];
    a.socket.on('message', (_m, rinfo) => fromB.push(rinfo.port));
    const toB = [wg(4), wg(4, 1440), wg(3)];
    for (const p of toB) await send(a, alloc.a.port, p);
    await until('three packets at B', () => b.inbox.length === 3);
    expect(b.inbox).toEqual(toB);
    const toA = wg(4, 48);
    await send(b, alloc.b.port, toA);
    await until('the packet at A', () => a.inbox.length === 2);
    expect(a.inbox[1]).toEqual(toA);
    // A hears B from the port A sends to: WireGuard roams the peer's endpoint to the source of what it
    // receives, so that must stay A's port of the relay.
    expect(fromB).toEqual([alloc.a.port]);
    expect(r.counters.relayedPackets).toBe(5);
    expect(r.counters.relayedBytes).toBe(92 + 160 + 1440 + 64 + 48);
    const text = await registry.metrics();
    expect(text).toMatch(/^meshlink_relay_allocations 1$/m);
    expect(text).toMatch(/^meshlink_relay_packets_total 5$/m);
    expect(text).toMatch(new RegExp(`^meshlink_relay_bytes_total\\{direction="a_to_b"\\} ${160 + 1440 + 64}$`, 'm'));
    expect(text).toMatch(new RegExp(`^meshlink_relay_bytes_total\\{direction="b_to_a"\\} ${92 + 48}$`, 'm'));
    expect(text).toMatch(/^meshlink_relay_dropped_packets_total\{reason="peer_not_latched"\} 1$/m);
  });

  it('drops packets from any other source, before and after latching, and what is not WireGuard', async () => {
    const { relay: r } = relay();
    const stranger = await peer('127.0.0.3');
    const a = await peer('127.0.0.1');
    const b = await peer('127.0.0.2');
    const alloc = await r.allocate({ a: { nodeId: 'node-a', ips: ['127.0.0.1'] }, b: { nodeId: 'node-b', ips: ['127.0.0.2'] } });
    // Before latching: a handshake from another IP does not latch; a transport packet from the right IP does not either.
    await sendSettled(r, stranger, alloc.a.port, wg(1));
    await sendSettled(r, a, alloc.a.port, wg(4));
    // B's IP on A's port: each port belongs to one member.
    await sendSettled(r, b, alloc.a.port, wg(1));
    expect(r.get('node-a', 'node-b')!.a.latched).toBeNull();
    expect(r.counters.dropped).toMatchObject({ wrong_source: 2, not_latched: 1 });
    await sendSettled(r, a, alloc.a.port, initiation(1));
    await sendSettled(r, b, alloc.b.port, response(2, 1));
    await until('the response at A', () => a.inbox.length === 1);
    // After latching (and B's answer confirmed A's latch): the stranger, the member's IP from another port, and non-WireGuard bytes are dropped.
    const otherPortOfA = await peer('127.0.0.1');
    await sendSettled(r, stranger, alloc.a.port, wg(4));
    await sendSettled(r, stranger, alloc.b.port, wg(2));
    await sendSettled(r, otherPortOfA, alloc.a.port, wg(1));
    await sendSettled(r, a, alloc.a.port, Buffer.from('not wireguard at all, but long enough to be'));
    expect(r.counters.dropped).toMatchObject({ wrong_source: 5, not_latched: 1, not_wireguard: 1 });
    // Nothing of that reached B: the next packet B gets is the next legitimate one.
    const legit = wg(4);
    await send(a, alloc.a.port, legit);
    await until('the legitimate packet at B', () => b.inbox.length === 1);
    expect(b.inbox).toEqual([legit]);
    expect(stranger.inbox).toEqual([]);
    expect(otherPortOfA.inbox).toEqual([]);
  });

  it('expires after the idle time, renewed by traffic; an expired allocation forwards nothing and is swept', async () => {
    const { relay: r, clock } = relay({ idleMs: 120_000 });
    const { a, b, alloc } = await latchedPair(r);
    // Traffic renews: 119 s, a packet, 119 s more, and it still forwards.
    clock.now += 119_000;
    await send(a, alloc.a.port, wg(4));
    await until('packet 1 at B', () => b.inbox.length === 1);
    expect(r.get('node-a', 'node-b')!.expiresAt).toBe(clock.now + 120_000);
    clock.now += 119_000;
    expect(r.sweep()).toEqual([]);
    await send(b, alloc.b.port, wg(4));
    await until('packet 2 at A', () => a.inbox.length === 2);
    // 120 s idle: dropped as expired, in both directions, before any sweep.
    clock.now += 120_000;
    await sendSettled(r, a, alloc.a.port, wg(4));
    await sendSettled(r, b, alloc.b.port, wg(1));
    expect(r.counters.dropped.expired).toBe(2);
    expect(b.inbox.length).toBe(1);
    expect(a.inbox.length).toBe(2);
    expect(r.sweep().map((x) => x.id)).toEqual([alloc.id]);
    expect(r.size).toBe(0);
    expect(r.get('node-a', 'node-b')).toBeNull();
    // A new allocation for the pair gets new ports and must be latched again.
    const again = await r.allocate({ a: { nodeId: 'node-a', ips: ['127.0.0.1'] }, b: { nodeId: 'node-b', ips: ['127.0.0.2'] } });
    expect(again.id).not.toBe(alloc.id);
    expect(again.a.latched).toBeNull();
  });

  it('caps allocations in all (one per pair) and bandwidth per allocation', async () => {
    const { relay: r, clock } = relay({ maxAllocations: 1, bytesPerSecond: 1000, burstBytes: 1000 });
    const first = await r.allocate({ a: { nodeId: 'x', ips: ['127.0.0.1'] }, b: { nodeId: 'y', ips: ['127.0.0.2'] } });
    // The same pair, either order: the same allocation.
    expect((await r.allocate({ a: { nodeId: 'y', ips: ['127.0.0.2'] }, b: { nodeId: 'x', ips: ['127.0.0.1'] } })).id).toBe(first.id);
    const full = await r.allocate({ a: { nodeId: 'x', ips: ['127.0.0.1'] }, b: { nodeId: 'z', ips: ['127.0.0.3'] } }).catch((e: unknown) => e);
    expect(full).toBeInstanceOf(MeshlinkError);
    expect((full as MeshlinkError).code).toBe('ML_ERR_RELAY_FULL');
    expect(r.release('y', 'x')).toBe(true);
    expect(r.release('y', 'x')).toBe(false);

    const { a, b, alloc } = await latchedPair(r);
    // A burst of 1000 bytes per direction (A's initiation was dropped before the bucket): with the clock
    // still, 6 packets of 160 fit (960), the other 4 not.
    for (let i = 0; i < 10; i++) await sendSettled(r, a, alloc.a.port, wg(4));
    await until('6 packets at B', () => b.inbox.length === 6);
    expect(r.counters.dropped.rate_limited).toBe(4);
    // The other direction has its own bucket.
    await sendSettled(r, b, alloc.b.port, wg(4));
    await until('the packet at A', () => a.inbox.length === 2);
    // A second refills the bucket (to its 1000-byte cap): 6 more, then the 7th is over.
    clock.now += 1000;
    for (let i = 0; i < 6; i++) await sendSettled(r, a, alloc.a.port, wg(4));
    await until('12 packets at B', () => b.inbox.length === 12);
    expect(r.counters.dropped.rate_limited).toBe(4);
    await sendSettled(r, a, alloc.a.port, wg(4));
    expect(r.counters.dropped.rate_limited).toBe(5);
    expect(b.inbox.length).toBe(12);
  });

  it('re-latches a member that moved to a new port only when its peer answers the new source\'s handshake, after the old one went silent', async () => {
    const registry = new Registry();
    const { relay: r, clock } = relay({ relatchAfterMs: 10_000, registry });
    const { a, b, alloc } = await latchedPair(r);
    // A's NAT rebinds: A's WireGuard now sends from another port of the same IP.
    const moved = await peer('127.0.0.1');
    // Too early: the latched source spoke less than 10 s ago.
    clock.now += 9_999;
    await sendSettled(r, moved, alloc.a.port, initiation(7));
    expect(r.counters.dropped.wrong_source).toBe(1);
    // Silent long enough: a transport packet from the new port still does nothing, an initiation is a
    // candidate and reaches B, but the latch stays until B answers it.
    clock.now += 1;
    await sendSettled(r, moved, alloc.a.port, wg(4));
    expect(r.counters.dropped.wrong_source).toBe(2);
    const fromMoved = initiation(7);
    await sendSettled(r, moved, alloc.a.port, fromMoved);
    await until('the candidate initiation at B', () => b.inbox.length === 1);
    expect(b.inbox[0]).toEqual(fromMoved);
    expect(r.get('node-a', 'node-b')!.a.latched).toEqual({ address: '127.0.0.1', port: a.port });
    // A stranger on another IP cannot even be a candidate; a response for another index confirms nothing.
    const stranger = await peer('127.0.0.3');
    await sendSettled(r, stranger, alloc.a.port, initiation(9));
    expect(r.counters.dropped.wrong_source).toBe(3);
    await sendSettled(r, b, alloc.b.port, response(0x0c, 8));
    await until('the unmatched response at the old source', () => a.inbox.length === 2);
    expect(r.get('node-a', 'node-b')!.a.latched!.port).toBe(a.port);
    // B's WireGuard answers the candidate's initiation: the latch moves and the answer goes there.
    const answer = response(0x0d, 7);
    await sendSettled(r, b, alloc.b.port, answer);
    await until('the response at the new source', () => moved.inbox.length === 1);
    expect(moved.inbox[0]).toEqual(answer);
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { address: '127.0.0.1', port: moved.port }, relatched: 1 });
    // From now on the old source is the stranger.
    await sendSettled(r, a, alloc.a.port, wg(4));
    expect(r.counters.dropped.wrong_source).toBe(4);
    const data = wg(4);
    await send(moved, alloc.a.port, data);
    await until('data from the new source at B', () => b.inbox.length === 2);
    expect(b.inbox[1]).toEqual(data);
    expect(r.counters.relatched).toBe(1);
    expect(await registry.metrics()).toMatch(/^meshlink_relay_relatched_total 1$/m);
  });

  it('does not re-latch while the latched source keeps talking, nor on a response that comes too late', async () => {
    const { relay: r, clock } = relay({ relatchAfterMs: 10_000 });
    const { a, b, alloc } = await latchedPair(r);
    const other = await peer('127.0.0.1');
    const init = wg(1);
    init.writeUInt32LE(42, 4);
    const answer = wg(2);
    answer.writeUInt32LE(42, 8);
    clock.now += 10_000;
    await sendSettled(r, other, alloc.a.port, init);
    // The latched source speaks after the candidate: the candidate is void.
    await sendSettled(r, a, alloc.a.port, wg(4));
    await sendSettled(r, b, alloc.b.port, answer);
    await until('the answer at the latched source', () => a.inbox.length === 2);
    expect(r.get('node-a', 'node-b')!.a.latched!.port).toBe(a.port);
    // A candidate whose answer comes after 10 s is void too.
    clock.now += 10_000;
    await sendSettled(r, other, alloc.a.port, init);
    clock.now += 10_000;
    await sendSettled(r, b, alloc.b.port, answer);
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { port: a.port }, relatched: 0 });
    expect(other.inbox).toEqual([]);
  });

  it('keeps a first latch unconfirmed until the peer names one of its indices: a squatter behind the member\'s NAT loses the port to the member at once', async () => {
    const { relay: r } = relay({ relatchAfterMs: 10_000 });
    const alloc = await r.allocate({ a: { nodeId: 'node-a', ips: ['127.0.0.1'] }, b: { nodeId: 'node-b', ips: ['127.0.0.2'] } });
    // Another host behind A's NAT (A's IP, another port) sends the first initiation and takes A's port.
    const squatter = await peer('127.0.0.1');
    const a = await peer('127.0.0.1');
    const b = await peer('127.0.0.2');
    await sendSettled(r, squatter, alloc.a.port, initiation(0x51));
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { port: squatter.port }, confirmed: false });
    // B's real initiation latches B's port and reaches the squatter, which learns B's index and answers
    // with junk naming it: that confirms B (B's latch is B's own), never the squatter's latch.
    await sendSettled(r, b, alloc.b.port, initiation(0x61));
    await until('B\'s initiation at the squatter', () => squatter.inbox.length === 1);
    await sendSettled(r, squatter, alloc.a.port, response(0x52, 0x61));
    expect(r.get('node-a', 'node-b')).toMatchObject({ a: { confirmed: false }, b: { confirmed: true } });
    // B's WireGuard cannot decrypt the junk, so it never names 0x51 or 0x52; a cookie reply naming one
    // (it answers any initiation with a valid MAC1) and transport data naming another confirm nothing.
    const cookie = wg(3);
    cookie.writeUInt32LE(0x51, 4);
    await sendSettled(r, b, alloc.b.port, cookie);
    await sendSettled(r, b, alloc.b.port, transport(0x99));
    expect(r.get('node-a', 'node-b')!.a.confirmed).toBe(false);
    // The member's own initiation, while the squatter keeps the latch fresh with junk: against an
    // unconfirmed latch it is a candidate at once (no 10 s of silence), and the junk does not void it.
    const fromA = initiation(0x0a);
    await sendSettled(r, a, alloc.a.port, fromA);
    await until('A\'s initiation at B', () => b.inbox.length === 2);
    expect(b.inbox[1]).toEqual(fromA);
    const junk = [transport(0x62), initiation(0x53)];
    for (const p of junk) await sendSettled(r, squatter, alloc.a.port, p);
    // B answers A: the candidate takes the port, confirmed, and the answer goes to A.
    const answer = response(0x0b, 0x0a);
    await sendSettled(r, b, alloc.b.port, answer);
    await until('B\'s answer at A', () => a.inbox.length === 1);
    expect(a.inbox[0]).toEqual(answer);
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { address: '127.0.0.1', port: a.port }, confirmed: true, relatched: 1 });
    // Now the squatter is a stranger: its initiation is no candidate (A spoke just now) and its data is dropped.
    const dropped = r.counters.dropped.wrong_source;
    await sendSettled(r, squatter, alloc.a.port, initiation(0x54));
    await sendSettled(r, squatter, alloc.a.port, transport(0x0b));
    expect(r.counters.dropped.wrong_source).toBe(dropped + 2);
    const fromAData = transport(0x0b);
    await send(a, alloc.a.port, fromAData);
    await until('A\'s data at B', () => b.inbox.length === 5);
    // What B got: the squatter's junk while it held the port (WireGuard drops it), then only A's traffic.
    expect(b.inbox.slice(1)).toEqual([fromA, ...junk, fromAData]);
  });

  it('a source that copies the latched source\'s index, or another candidate\'s, is no candidate: the answer confirms the latch in place', async () => {
    const { relay: r } = relay();
    const alloc = await r.allocate({ a: { nodeId: 'node-a', ips: ['127.0.0.1'] }, b: { nodeId: 'node-b', ips: ['127.0.0.2'] } });
    const a = await peer('127.0.0.1');
    const copier = await peer('127.0.0.1');
    const b = await peer('127.0.0.2');
    // B's port first, then A's real initiation latches A's port (unconfirmed) and reaches B.
    await sendSettled(r, b, alloc.b.port, initiation(0x31));
    await sendSettled(r, a, alloc.a.port, initiation(0x0a));
    await until('A\'s initiation at B', () => b.inbox.length === 1);
    // Someone on A's network read 0x0a off the wire and sends an initiation with it from another port:
    // refused, as is a second claim on a candidate's index.
    const dropped = r.counters.dropped.wrong_source;
    await sendSettled(r, copier, alloc.a.port, initiation(0x0a));
    const other = await peer('127.0.0.1');
    await sendSettled(r, other, alloc.a.port, initiation(0x44));
    await sendSettled(r, copier, alloc.a.port, initiation(0x44));
    expect(r.counters.dropped.wrong_source).toBe(dropped + 2);
    // B answers A's initiation: A's latch is confirmed where it is, and the answer goes to A.
    const answer = response(0x0b, 0x0a);
    await sendSettled(r, b, alloc.b.port, answer);
    await until('B\'s answer at A', () => a.inbox.length === 1);
    expect(a.inbox[0]).toEqual(answer);
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { port: a.port }, confirmed: true, relatched: 0 });
    // The confirmation voided the candidates: an answer to 0x44 now moves nothing.
    await sendSettled(r, b, alloc.b.port, response(0x0c, 0x44));
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { port: a.port }, relatched: 0 });
    expect(copier.inbox).toEqual([]);
    expect(other.inbox).toEqual([]);
  });

  it('confirms a latch made by a handshake response when the peer\'s data names the response\'s index', async () => {
    const { relay: r } = relay();
    const alloc = await r.allocate({ a: { nodeId: 'node-a', ips: ['127.0.0.1'] }, b: { nodeId: 'node-b', ips: ['127.0.0.2'] } });
    const a = await peer('127.0.0.1');
    const b = await peer('127.0.0.2');
    // B's port latches on B's initiation (dropped: A's port is not latched). A's port latches on a
    // response: B's initiation reached A another way (say, directly, before the pair moved to the
    // relay), and A's WireGuard answers it to the endpoint it has for B, the relay.
    await sendSettled(r, b, alloc.b.port, initiation(0x21));
    await sendSettled(r, a, alloc.a.port, response(0x31, 0x21));
    await until('A\'s response at B', () => b.inbox.length === 1);
    expect(r.get('node-a', 'node-b')).toMatchObject({ a: { latched: { port: a.port }, confirmed: false }, b: { confirmed: true } });
    // B's first data names the index of A's response: A's latch is confirmed.
    await sendSettled(r, b, alloc.b.port, transport(0x77));
    expect(r.get('node-a', 'node-b')!.a.confirmed).toBe(false);
    await sendSettled(r, b, alloc.b.port, transport(0x31, 32));
    await until('B\'s data at A', () => a.inbox.length === 2);
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { port: a.port }, confirmed: true, relatched: 0 });
  });

  it('with the members\' public keys, a handshake without a valid MAC1 under its receiver\'s key cannot latch, be a candidate or confirm', async () => {
    const { relay: r } = relay();
    const key = (): string => randomBytes(32).toString('base64');
    const [keyA, keyB, keyB2] = [key(), key(), key()];
    // What WireGuard computes (wireguard.pdf §5.4.4): MAC1 = BLAKE2s-128 under HASH("mac1----" || the
    // receiver's public key), over the message up to MAC1 (initiation 116 bytes, response 60).
    const withMac = (packet: Buffer, receiverKey: string): Buffer => {
      const at = packet[0] === 1 ? 116 : 60;
      const macKey = blake2s(Buffer.concat([Buffer.from('mac1----'), Buffer.from(receiverKey, 'base64')]));
      Buffer.from(blake2s(packet.subarray(0, at), { key: macKey, dkLen: 16 })).copy(packet, at);
      return packet;
    };
    const alloc = await r.allocate({ a: { nodeId: 'node-a', ips: ['127.0.0.1'], publicKey: keyA }, b: { nodeId: 'node-b', ips: ['127.0.0.2'], publicKey: keyB } });
    expect([alloc.a.publicKey, alloc.b.publicKey]).toEqual([keyA, keyB]);
    const squatter = await peer('127.0.0.1');
    const a = await peer('127.0.0.1');
    const b = await peer('127.0.0.2');
    // Junk from a host behind A's NAT, and a handshake MAC'd under the wrong key: dropped, nothing latched.
    await sendSettled(r, squatter, alloc.a.port, initiation(0x51));
    await sendSettled(r, squatter, alloc.a.port, withMac(initiation(0x52), keyA));
    expect(r.counters.dropped.bad_mac).toBe(2);
    expect(r.get('node-a', 'node-b')!.a.latched).toBeNull();
    // A's real initiation (MAC'd under B's key) latches A's port; B's real one latches B's.
    await sendSettled(r, a, alloc.a.port, withMac(initiation(0x0a), keyB));
    await sendSettled(r, b, alloc.b.port, withMac(initiation(0x31), keyA));
    await until('B\'s initiation at A', () => a.inbox.length === 1);
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { port: a.port }, confirmed: false });
    // A flood of junk initiations from other ports makes no candidate (and takes no bandwidth).
    for (let i = 0; i < 20; i++) await sendSettled(r, squatter, alloc.a.port, initiation(0x100 + i));
    expect(r.counters.dropped.bad_mac).toBe(22);
    // Junk naming A's index cannot confirm it; B's real answer does.
    await sendSettled(r, b, alloc.b.port, response(0x0c, 0x0a));
    expect(r.get('node-a', 'node-b')!.a.confirmed).toBe(false);
    const answer = withMac(response(0x0b, 0x0a), keyA);
    await sendSettled(r, b, alloc.b.port, answer);
    await until('B\'s answer at A', () => a.inbox.length === 2);
    expect(a.inbox[1]).toEqual(answer);
    expect(r.get('node-a', 'node-b')!.a).toMatchObject({ latched: { port: a.port }, confirmed: true });
    expect(r.counters.dropped.bad_mac).toBe(23);
    // B rotates its key: handshakes to it under the new key pass, under the previous one still (its
    // peers learn the new key a moment later), under any other not.
    expect(r.updateIps({ a: { nodeId: 'node-a', ips: ['127.0.0.1'], publicKey: keyA }, b: { nodeId: 'node-b', ips: ['127.0.0.2'], publicKey: keyB2 } })).toBe(true);
    expect(r.get('node-a', 'node-b')!.b.publicKey).toBe(keyB2);
    const passed = r.counters.relayedPackets;
    await sendSettled(r, a, alloc.a.port, withMac(initiation(0x0d), keyB2));
    await sendSettled(r, a, alloc.a.port, withMac(initiation(0x0e), keyB));
    await sendSettled(r, a, alloc.a.port, withMac(initiation(0x0f), key()));
    expect(r.counters.relayedPackets).toBe(passed + 2);
    expect(r.counters.dropped.bad_mac).toBe(24);
    expect(squatter.inbox).toEqual([]);
  });

  it('on a dual-stack :: socket, forwards to IPv4 members in the socket\'s own form and shows them plain', async () => {
    const { relay: r } = relay({ host: '::' });
    const { a, b, alloc } = await latchedPair(r);
    expect(r.get('node-a', 'node-b')).toMatchObject({ a: { latched: { address: '127.0.0.1', port: a.port } }, b: { latched: { address: '127.0.0.2' } } });
    const p = wg(4);
    await send(a, alloc.a.port, p);
    await until('the packet at B', () => b.inbox.length === 1);
    expect(b.inbox[0]).toEqual(p);
  });

  it('names allocations with random ids (unique across restarts), and renews an allocation with the members\' new IPs', async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const { relay: r } = relay();
      const x = await r.allocate({ a: { nodeId: 'a', ips: ['127.0.0.1'] }, b: { nodeId: 'b', ips: ['127.0.0.2'] } });
      expect(x.id).toMatch(/^r[A-Za-z0-9_-]{12}$/);
      ids.add(x.id);
      const renewed = await r.allocate({ a: { nodeId: 'b', ips: ['127.0.0.4', '::ffff:127.0.0.2'] }, b: { nodeId: 'a', ips: ['127.0.0.1'] } });
      expect(renewed.id).toBe(x.id);
      expect(renewed.b.ips).toEqual(['127.0.0.4', '127.0.0.2']);
      await r.close();
    }
    expect(ids.size).toBe(3);
  });

  it('refuses a malformed request with ML_ERR_RELAY_BAD_ALLOCATION, and allocates nothing after close', async () => {
    const { relay: r } = relay();
    for (const bad of [
      { a: { nodeId: 'a', ips: ['example.com'] }, b: { nodeId: 'b', ips: ['127.0.0.2'] } },
      { a: { nodeId: 'a', ips: ['127.0.0.1'] }, b: { nodeId: 'a', ips: ['127.0.0.2'] } },
      { a: { nodeId: '', ips: ['127.0.0.1'] }, b: { nodeId: 'b', ips: ['127.0.0.2'] } },
    ]) {
      const err = await r.allocate(bad).catch((e: unknown) => e);
      expect((err as MeshlinkError).code).toBe('ML_ERR_RELAY_BAD_ALLOCATION');
    }
    await r.allocate({ a: { nodeId: 'a', ips: ['127.0.0.1'] }, b: { nodeId: 'b', ips: ['::ffff:127.0.0.2'] } });
    expect(r.get('a', 'b')!.b.ips).toEqual(['127.0.0.2']);
    await r.close();
    await r.close();
    expect(r.size).toBe(0);
    expect(((await r.allocate({ a: { nodeId: 'a', ips: ['127.0.0.1'] }, b: { nodeId: 'b', ips: ['127.0.0.2'] } }).catch((e: unknown) => e)) as MeshlinkError).code).toBe('ML_ERR_RELAY_FULL');
  });
});
