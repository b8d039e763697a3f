/**
 * npm run bench:mux-cpu — where the CPU of a bulk transfer goes: sender (this process) and receiver
 * (bench/mux-peer.ts, a child) CPU time per MiB, raw ws against one meshlink stream, over wss with
 * mutual TLS on loopback. CPU time moves far less with the machine's load than throughput does.
 *
 * Per run: 256 MiB in writes of SIZE bytes (default 256 KiB), 1 MiB in flight for raw ws. Rounds
 * interleave raw, raw with a zero masking key, and meshlink (which always uses the zero key, as the
 * agent does); RANDOM_KEY=1 makes meshlink use ws's random keys instead, to measure what the key
 * costs. The last line is one JSON object of medians.
 *
 * PIPE_AB=1 adds meshlinkPipe, the same with the pipe limit on (pipeFloor 128 KiB, PROTOCOL.md §7;
 * the default since 2026-12-04), interleaved against pipeFloor 0: what the markers cost each side per MiB.
 *
 * Options (env): SIZE, ROUNDS (default 3), RANDOM_KEY=1, PIPE_AB=1.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { attachSession } from '../src/net/ws-session.js';
import { connect, rawWs, type Peer } from './lib/mux-client.js';
import { startPeer } from './lib/peer-process.js';
import { makePki } from './lib/pki.js';
import { median, round } from './lib/stats.js';

const MIB = 1024 * 1024;
const SIZE = Number(process.env.SIZE ?? 256 * 1024);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const TOTAL = 256 * MIB;
const MUX_ZERO_KEY = process.env.RANDOM_KEY !== '1';

/** Raw ws for one run: 256 MiB in SIZE-byte messages (bench/lib/mux-client.ts). */
const raw = (peer: Peer, zeroKey: boolean): Promise<number> => rawWs(peer, SIZE, TOTAL, zeroKey);

async function mux(peer: Peer, pipe = false): Promise<void> {
  const ws = await connect(peer, '/mux', MUX_ZERO_KEY);
  const session = attachSession(ws, { role: 'agent', pipeFloor: pipe ? 128 * 1024 : 0 });
  await session.handshake({ agentVersion: 'bench' });
  const payload = Buffer.alloc(SIZE, 7);
  const stream = await session.openStream('file.open', { path: '/bench', direction: 'push' });
  const ended = new Promise((resolve) => {
    stream.on('data', () => {});
    stream.on('end', resolve);
  });
  for (let sent = 0; sent < TOTAL; sent += SIZE) if (!stream.write(payload)) await once(stream, 'drain');
  stream.end();
  await ended;
  session.close();
  ws.terminate();
}

function peerCpu(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    child.once('message', (m: { cpuMicros: number }) => resolve(m.cpuMicros));
    child.send('cpu');
  });
}

async function main(): Promise<void> {
  const pki = makePki();
  const { child, port } = await startPeer('mux-peer.js', pki);
  const peer: Peer = { port, pki };
  const variants: Array<[string, () => Promise<unknown>]> = [
    ['raw', () => raw(peer, false)],
    ['rawZeroKey', () => raw(peer, true)],
    ['meshlink', () => mux(peer)],
    ...(process.env.PIPE_AB === '1' ? [['meshlinkPipe', () => mux(peer, true)] as [string, () => Promise<unknown>]] : []),
  ];
  const results: Record<string, { mbps: number[]; sender: number[]; receiver: number[] }> = {};
  try {
    for (const [, run] of variants) await run(); // warm-up
    for (let r = 0; r < ROUNDS; r++) {
      for (const [name, run] of variants) {
        const p0 = await peerCpu(child);
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        await run();
        const secs = (performance.now() - t0) / 1000;
        const c = process.cpuUsage(c0);
        const p1 = await peerCpu(child);
        const res = (results[name] ??= { mbps: [], sender: [], receiver: [] });
        res.mbps.push(TOTAL / MIB / secs);
        res.sender.push((c.user + c.system) / (TOTAL / MIB));
        res.receiver.push((p1 - p0) / (TOTAL / MIB));
      }
    }
    console.log(`bench:mux-cpu — ${SIZE} B writes, 256 MiB per run, ${ROUNDS} rounds, medians; meshlink with ${MUX_ZERO_KEY ? 'zero' : 'random'} masking keys`);
    console.log('variant       MB/s   sender µs/MiB   receiver µs/MiB');
    const out: Record<string, number> = { size: SIZE, rounds: ROUNDS };
    for (const [name] of variants) {
      const r = results[name]!;
      const [mbps, snd, rcv] = [median(r.mbps), median(r.sender), median(r.receiver)].map((x) => round(x, 0)) as [number, number, number];
      console.log(`${name.padEnd(12)} ${String(mbps).padStart(5)}   ${String(snd).padStart(13)}   ${String(rcv).padStart(15)}`);
      Object.assign(out, { [`${name}MBps`]: mbps, [`${name}SenderMicrosPerMiB`]: snd, [`${name}ReceiverMicrosPerMiB`]: rcv });
    }
    console.log(JSON.stringify({ meshlinkMaskingKey: MUX_ZERO_KEY ? 'zero' : 'random', ...out }));
  } finally {
    child.kill();
    pki.cleanup();
  }
}

await main();
