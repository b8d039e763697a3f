/**
 * node dist/bench/mux-echo-path.js (issue 12) — where a 64 B round trip behind a bulk stream spends
 * its time, hop by hop, on loopback: one meshlink connection (bench/mux-peer.ts with `?stamp=1`, in
 * its own process), one stream pushing 16 KiB writes as fast as it may, and on another stream a
 * 64 B request every 2 ms, ECHOES times. Each request's time is split, by wall clocks of the same
 * machine (performance.timeOrigin + now) on both sides:
 *   queue     the sender's write → the message holding it handed to ws (meshlink's own queue)
 *   wire      handed to ws → the receiver's ws delivers that message (ws's and the kernel's buffers,
 *             and the receiver's backlog: the bytes committed ahead of it, at the receiver's pace)
 *   dispatch  the receiver's ws message → its stream's 'data'
 *   back      the receiver's answer → the sender's 'data' (the way back, and the sender's busy loop)
 * with the session's pipe limit and RTT estimate at each request. Variants, interleaved per round:
 * PIPE (default "0,131072": the pipe limit off, and on with the default floor); PIPE_GAIN and HW
 * (transport high-water mark, bytes) apply to all. Options: ROUNDS (3), ECHOES (400). Medians of the
 * rounds' medians; the last line is one JSON object.
 */
import { once } from 'node:events';
import { attachSession } from '../src/net/ws-session.js';
import { connect } from './lib/mux-client.js';
import { startPeer } from './lib/peer-process.js';
import { makePki, type BenchPki } from './lib/pki.js';
import { median, round } from './lib/stats.js';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const ECHOES = Number(process.env.ECHOES ?? 400);
const FLOORS = (process.env.PIPE ?? '0,131072').split(',').map(Number);
const GAIN = process.env.PIPE_GAIN;
const HW = process.env.HW;
const MIB = 1024 * 1024;
const REQUEST = Buffer.alloc(64, 1);
const wallNow = (): number => performance.timeOrigin + performance.now();

type Hops = Record<'total' | 'queue' | 'wire' | 'dispatch' | 'back' | 'limit' | 'rtt' | 'mbps', number>;

async function run(port: number, pki: BenchPki, pipeFloor: number): Promise<Hops> {
  const ws = await connect({ port, pki }, '/mux?stamp=1', true);
  // The time the message carrying the request is handed to ws (the request's bytes are in it).
  let handedAt = 0;
  // Every argument passed through: the session gives ws.send options and a completion callback.
  const send = ws.send.bind(ws) as (data: Uint8Array, ...rest: unknown[]) => void;
  (ws as unknown as { send: typeof send }).send = (data, ...rest) => {
    if (Buffer.from(data.buffer, data.byteOffset, data.byteLength).indexOf(REQUEST) >= 0) handedAt = wallNow();
    send(data, ...rest);
  };
  const session = attachSession(ws, { role: 'agent', pipeFloor, ...(GAIN ? { pipeGain: Number(GAIN) } : {}), ...(HW ? { transportHighWater: Number(HW) } : {}) });
  try {
    await session.handshake({ agentVersion: 'bench' });
    const echo = await session.openStream('file.open', { path: '/echo', direction: 'push' });
    const bulk = await session.openStream('file.open', { path: '/bulk', direction: 'push' });
    let stop = false;
    let sent = 0;
    const chunk = Buffer.alloc(16 * 1024, 7);
    const pusher = (async () => {
      while (!stop) {
        sent += chunk.length;
        if (!bulk.write(chunk)) await once(bulk, 'drain');
      }
      bulk.end();
    })();
    while (sent < 8 * MIB) await new Promise((r) => setTimeout(r, 1));
    const hops: Record<keyof Hops, number[]> = { total: [], queue: [], wire: [], dispatch: [], back: [], limit: [], rtt: [], mbps: [] };
    const sent0 = sent;
    const t0 = performance.now();
    for (let i = 0; i < ECHOES; i++) {
      const start = wallNow();
      const answer = once(echo, 'data');
      echo.write(REQUEST);
      const [c] = (await answer) as [Buffer];
      const end = wallNow();
      const delivered = c.readDoubleLE(0);
      const message = c.readDoubleLE(8);
      hops.total.push(end - start);
      hops.queue.push(handedAt - start);
      hops.wire.push(message - handedAt);
      hops.dispatch.push(delivered - message);
      hops.back.push(end - delivered);
      hops.limit.push(session.pipeLimit);
      hops.rtt.push(session.rttMs ?? NaN);
      await new Promise((r) => setTimeout(r, 2));
    }
    const mbps = (sent - sent0) / MIB / ((performance.now() - t0) / 1000);
    stop = true;
    await pusher;
    return { ...(Object.fromEntries(Object.entries(hops).map(([k, v]) => [k, median(v)])) as Hops), mbps };
  } finally {
    ws.close();
  }
}

async function main(): Promise<void> {
  const pki = makePki();
  const { child, port } = await startPeer('mux-peer.js', pki);
  try {
    const results = new Map<number, Hops[]>(FLOORS.map((f) => [f, []]));
    for (let r = 0; r < ROUNDS; r++) {
      for (const f of r % 2 ? [...FLOORS].reverse() : FLOORS) results.get(f)!.push(await run(port, pki, f));
      process.stderr.write(`round ${r + 1}/${ROUNDS} done\n`);
    }
    const out: Record<string, Record<string, number>> = {};
    console.log(`meshlink bench echo path — 64 B round trips behind one bulk stream on loopback, ${ROUNDS} rounds, medians (ms; limit bytes; bulk MB/s)`);
    console.log('pipe floor   total   queue    wire  dispatch    back     limit     rtt   bulk');
    for (const [f, rs] of results) {
      const m = (k: keyof Hops, d = 3): number => round(median(rs.map((x) => x[k])), d);
      out[`floor${f}`] = { totalMs: m('total'), queueMs: m('queue'), wireMs: m('wire'), dispatchMs: m('dispatch'), backMs: m('back'), pipeLimit: m('limit', 0), rttMs: m('rtt'), bulkMBps: m('mbps', 0) };
      const row = out[`floor${f}`]!;
      console.log(`${String(f).padEnd(10)} ${[row.totalMs, row.queueMs, row.wireMs, row.dispatchMs, row.backMs, row.pipeLimit, row.rttMs, row.bulkMBps].map((v) => String(v).padStart(7)).join(' ')}`);
    }
    console.log(JSON.stringify({ rounds: ROUNDS, gain: GAIN ?? 'default', hw: HW ?? 'default', ...out }));
  } finally {
    if (child.connected) child.disconnect();
    pki.cleanup();
  }
}

await main();
