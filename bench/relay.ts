/**
 * npm run bench:relay — the mesh UDP relay (src/server/mesh/relay.ts, docs/MESH.md "Relay") on loopback.
 *
 * The relay runs in a child process of its own (as in the server process), the two members live in
 * this one: member A at 127.0.0.1, member B at 127.0.0.2 (Linux routes all of 127/8 to lo). The
 * datagrams are WireGuard-shaped (type 4 transport data, 1440 bytes: a full WireGuard packet at MTU
 * 1420) with random contents, as ciphertext is; the relay checks type and length only.
 *
 * 1. Throughput, interleaved round by round: PACKETS datagrams A → B, (a) directly, (b) through the
 *    relay. UDP has no flow control, so the sender keeps at most WINDOW datagrams in flight (counted
 *    at the receiver); a datagram not seen within 50 ms counts as lost. Mbit/s of UDP payload received.
 * 2. Latency: 64-byte datagrams ping-ponged A ↔ B, one at a time, ROUND_TRIPS per round; p50/p99 of
 *    the round-trip time, direct and relayed. Added latency = relayed − direct p50 (two relay hops
 *    per round trip).
 * 3. The relay child's CPU time (user + system, process.cpuUsage) during the relayed throughput phase,
 *    per Gbit relayed.
 *
 * Options (env): ROUNDS (3), PACKETS (100000), WINDOW (128), ROUND_TRIPS (2000). Last line: one JSON object of the medians.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { UdpRelay } from '../src/server/mesh/relay.js';
import { createLogger } from '../src/util/logger.js';
import { median, percentile, round } from './lib/stats.js';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const PACKETS = Number(process.env.PACKETS ?? 100_000);
const WINDOW = Number(process.env.WINDOW ?? 128);
const ROUND_TRIPS = Number(process.env.ROUND_TRIPS ?? 2000);
const SIZE = 1440;

type ChildRequest = { op: 'allocate' } | { op: 'stats' };
interface ChildStats {
  cpuMicros: number;
  relayedBytes: number;
  relayedPackets: number;
  dropped: Record<string, number>;
}

function wg(type: 1 | 2 | 4, length: number): Buffer {
  const b = randomBytes(length);
  b[0] = type;
  b[1] = b[2] = b[3] = 0;
  return b;
}

// ------------------------------------------------------------------ the relay child

async function relayChild(): Promise<void> {
  // The cap is far above what loopback carries: the benchmark measures forwarding, not the bucket.
  const relay = new UdpRelay({ host: '0.0.0.0', logger: createLogger({ name: 'bench-relay', level: 'silent' }), bytesPerSecond: 1e11, burstBytes: 1e9, idleMs: 3_600_000 });
  process.on('message', (m: ChildRequest) => {
    if (m.op === 'allocate') {
      void relay.allocate({ a: { nodeId: 'a', ips: ['127.0.0.1'] }, b: { nodeId: 'b', ips: ['127.0.0.2'] } }).then((alloc) => process.send!({ ports: [alloc.a.port, alloc.b.port] }));
    } else {
      const cpu = process.cpuUsage();
      const stats: ChildStats = { cpuMicros: cpu.user + cpu.system, relayedBytes: relay.counters.relayedBytes, relayedPackets: relay.counters.relayedPackets, dropped: relay.counters.dropped };
      process.send!(stats);
    }
  });
  process.on('disconnect', () => void relay.close().then(() => process.exit(0)));
}

function ask<T>(child: ChildProcess, request: ChildRequest): Promise<T> {
  return new Promise((resolve) => {
    child.once('message', (m) => resolve(m as T));
    child.send(request);
  });
}

// ------------------------------------------------------------------ members

async function member(ip: string): Promise<Socket> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, ip, resolve));
  // Large buffers, as WireGuard's own sockets have: the window, not the buffer, limits what is in flight.
  socket.setRecvBufferSize(4 * 1024 * 1024);
  socket.setSendBufferSize(4 * 1024 * 1024);
  return socket;
}

/** PACKETS datagrams from `from` to port/address; returns Mbit/s received at `to` and the loss. */
async function throughput(from: Socket, to: Socket, port: number, address: string): Promise<{ mbps: number; lost: number }> {
  let received = 0;
  let wake: (() => void) | null = null;
  const onMessage = (): void => {
    received++;
    wake?.();
  };
  to.on('message', onMessage);
  const packet = wg(4, SIZE);
  let sent = 0;
  let lost = 0;
  const started = process.hrtime.bigint();
  while (sent < PACKETS) {
    while (sent < PACKETS && sent - received - lost < WINDOW) {
      from.send(packet, port, address);
      sent++;
    }
    const before = received;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 50);
      wake = () => {
        if (received - before >= WINDOW / 4 || received + lost >= sent) {
          clearTimeout(timer);
          resolve();
        }
      };
    });
    wake = null;
    // Nothing arrived for 50 ms: what is in flight is lost.
    if (received === before) lost = sent - received;
  }
  const deadline = Date.now() + 2000;
  while (received + lost < sent && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  to.off('message', onMessage);
  return { mbps: (received * SIZE * 8) / seconds / 1e6, lost: sent - received };
}

/** ROUND_TRIPS ping-pongs of 64 bytes; `echo` answers each on the path back. Returns the RTTs in µs. */
async function latency(a: Socket, b: Socket, toB: { port: number; address: string }, toA: { port: number; address: string }): Promise<number[]> {
  const echo = (m: Buffer): void => void b.send(m, toA.port, toA.address);
  b.on('message', echo);
  const packet = wg(4, 64);
  const rtts: number[] = [];
  for (let i = 0; i < ROUND_TRIPS; i++) {
    const t0 = process.hrtime.bigint();
    const answered = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 1000);
      a.once('message', () => {
        clearTimeout(timer);
        resolve(true);
      });
      a.send(packet, toB.port, toB.address);
    });
    if (answered) rtts.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  b.off('message', echo);
  return rtts;
}

async function main(): Promise<void> {
  const child = fork(fileURLToPath(import.meta.url), ['relay-child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const { ports } = await ask<{ ports: [number, number] }>(child, { op: 'allocate' });
  const a = await member('127.0.0.1');
  const b = await member('127.0.0.2');
  // Latch both ports: A's initiation, then B's response (which reaches A).
  a.send(wg(1, 148), ports[0], '127.0.0.1');
  await new Promise((r) => setTimeout(r, 100));
  const latched = new Promise<void>((resolve) => a.once('message', () => resolve()));
  b.send(wg(2, 92), ports[1], '127.0.0.1');
  await latched;

  const rows: Array<Record<string, number>> = [];
  for (let round_ = 0; round_ < ROUNDS; round_++) {
    const direct = await throughput(a, b, b.address().port, '127.0.0.2');
    const before = await ask<ChildStats>(child, { op: 'stats' });
    const relayed = await throughput(a, b, ports[0], '127.0.0.1');
    const after = await ask<ChildStats>(child, { op: 'stats' });
    const gbit = ((after.relayedBytes - before.relayedBytes) * 8) / 1e9;
    const cpuSecPerGbit = (after.cpuMicros - before.cpuMicros) / 1e6 / gbit;
    const rttDirect = await latency(a, b, { port: b.address().port, address: '127.0.0.2' }, { port: a.address().port, address: '127.0.0.1' });
    const rttRelay = await latency(a, b, { port: ports[0], address: '127.0.0.1' }, { port: ports[1], address: '127.0.0.1' });
    const row = {
      directMbps: round(direct.mbps, 0),
      relayMbps: round(relayed.mbps, 0),
      ratio: round(relayed.mbps / direct.mbps, 3),
      directLost: direct.lost,
      relayLost: relayed.lost,
      relayCpuSecPerGbit: round(cpuSecPerGbit, 3),
      rttDirectP50us: round(median(rttDirect), 1),
      rttDirectP99us: round(percentile(rttDirect, 99), 1),
      rttRelayP50us: round(median(rttRelay), 1),
      rttRelayP99us: round(percentile(rttRelay, 99), 1),
      addedRttP50us: round(median(rttRelay) - median(rttDirect), 1),
    };
    rows.push(row);
    console.log(`round ${round_ + 1}/${ROUNDS}: ${JSON.stringify(row)}`);
  }
  const final = await ask<ChildStats>(child, { op: 'stats' });
  const summary: Record<string, unknown> = { rounds: ROUNDS, packets: PACKETS, size: SIZE, window: WINDOW, roundTrips: ROUND_TRIPS, loadavg: loadavg().map((l) => round(l, 2)), node: process.version, relayDropped: final.dropped };
  for (const key of Object.keys(rows[0]!)) summary[key] = median(rows.map((r) => r[key]!));
  a.close();
  b.close();
  child.disconnect();
  console.log(JSON.stringify(summary));
}

if (process.argv[2] === 'relay-child') await relayChild();
else await main();
