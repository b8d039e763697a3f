/**
 * Where the bytes ahead of an interactive frame sit (issue 12), `node dist/bench/mux-queue.js`:
 * one meshlink connection to bench/mux-peer.ts (its own process) on loopback, one stream pushing
 * 16 KiB writes as fast as it may and, on a second stream, a 64 B echo timed one at a time. Every
 * SAMPLE_MS the sender's queues are read:
 *   scheduler   nothing here: bytes meshlink still holds are not ahead of a priority frame
 *   inflight    session.inflightBytes: handed to ws, its send callback not yet called
 *   ws          ws.bufferedAmount (ws's own queue; 0 unless it is compressing or the socket is corked)
 *   socket      the TLS socket's writableLength (Node's userland buffer, not yet in the kernel)
 *   unacked     session.unackedBytes: handed to the transport and not yet confirmed by the peer
 *   kernel tx   the sender socket's Send-Q (`ss`: in the kernel, not yet acknowledged by TCP)
 *   kernel rx   the receiver socket's Recv-Q (arrived, not yet read by the receiving process)
 * Node exposes no TCP_NOTSENT_LOWAT or SIOCOUTQ; `ss` (every KERNEL_MS, default 100) is how the
 * kernel's share is seen here.
 * Variants (rounds alternate): the pipe limit on (pipeFloor 128 KiB) and off (pipeFloor 0; the default is on).
 * Env: ROUNDS (default 3), RUN_MS (default 3000), SAMPLE_MS (default 5).
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import type { TLSSocket } from 'node:tls';
import { attachSession } from '../src/net/ws-session.js';
import { connect } from './lib/mux-client.js';
import { startPeer } from './lib/peer-process.js';
import { makePki } from './lib/pki.js';
import { median, percentile, round } from './lib/stats.js';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const RUN_MS = Number(process.env.RUN_MS ?? 3000);
const SAMPLE_MS = Number(process.env.SAMPLE_MS ?? 5);
const KERNEL_MS = Number(process.env.KERNEL_MS ?? 100);
const MIB = 1024 * 1024;

/**
 * Send-Q of the sender's socket and Recv-Q of the receiver's, from `ss` (netlink, filtered in the
 * kernel; reading /proc/net/tcp walks the whole table and took 16 ms a read here, which skewed
 * everything). Runs in its own process, every KERNEL_MS.
 */
function kernelQueues(localPort: number, remotePort: number): Promise<{ tx: number; rx: number } | null> {
  return new Promise((resolve) => {
    execFile('ss', ['-tnH', `( sport = :${localPort} or sport = :${remotePort} ) and ( dport = :${localPort} or dport = :${remotePort} )`], (err, stdout) => {
      if (err) return resolve(null);
      let tx = NaN;
      let rx = NaN;
      for (const line of stdout.split('\n')) {
        const f = line.trim().split(/\s+/);
        if (f.length < 5) continue;
        if (f[3]!.endsWith(`:${localPort}`)) tx = Number(f[2]);
        if (f[3]!.endsWith(`:${remotePort}`)) rx = Number(f[1]);
      }
      resolve({ tx, rx });
    });
  });
}

type Sample = Record<'inflight' | 'ws' | 'socket' | 'unacked' | 'limit' | 'kernelTx' | 'kernelRx', number>;

async function run(port: number, pki: ReturnType<typeof makePki>, pipeFloor: number | undefined): Promise<{ samples: Sample[]; rtts: number[]; mbps: number; minRtt: number | null }> {
  const ws = await connect({ port, pki }, '/mux', true);
  const session = attachSession(ws, { role: 'agent', ...(pipeFloor !== undefined ? { pipeFloor } : {}) });
  await session.handshake({ agentVersion: 'bench' });
  const socket = (ws as unknown as { _socket: TLSSocket })._socket;
  const localPort = socket.localPort!;
  const bulk = await session.openStream('file.open', { path: '/bulk', direction: 'push' });
  const echo = await session.openStream('file.open', { path: '/echo', direction: 'push' });
  bulk.resume();
  let got = 0;
  let waiting: (() => void) | null = null;
  echo.on('data', (c: Buffer) => {
    got += c.length;
    if (waiting && got % 64 === 0) {
      const w = waiting;
      waiting = null;
      w();
    }
  });
  const payload = Buffer.alloc(16 * 1024, 7);
  let stop = false;
  let sent = 0;
  const pushing = (async () => {
    while (!stop) {
      sent += payload.length;
      if (!bulk.write(payload)) await once(bulk, 'drain');
    }
  })();
  while (sent < 4 * MIB) await new Promise((r) => setTimeout(r, 1));
  const samples: Sample[] = [];
  const kernel: Array<{ tx: number; rx: number }> = [];
  let asking = false;
  const kernelSampler = setInterval(() => {
    if (asking) return;
    asking = true;
    void kernelQueues(localPort, port).then((q) => {
      asking = false;
      if (q) kernel.push(q);
    });
  }, KERNEL_MS);
  const sampler = setInterval(() => {
    samples.push({
      inflight: session.inflightBytes,
      ws: ws.bufferedAmount,
      socket: socket.writableLength,
      unacked: session.unackedBytes,
      limit: session.pipeLimit,
      kernelTx: NaN,
      kernelRx: NaN,
    });
  }, SAMPLE_MS);
  const rtts: number[] = [];
  const t0 = performance.now();
  const sent0 = sent;
  while (performance.now() - t0 < RUN_MS) {
    const t = performance.now();
    await new Promise<void>((resolve) => {
      waiting = resolve;
      echo.write(Buffer.alloc(64, 1));
    });
    rtts.push(performance.now() - t);
  }
  const mbps = (sent - sent0) / MIB / ((performance.now() - t0) / 1000);
  clearInterval(sampler);
  clearInterval(kernelSampler);
  for (const q of kernel) samples.push({ inflight: NaN, ws: NaN, socket: NaN, unacked: NaN, limit: NaN, kernelTx: q.tx, kernelRx: q.rx });
  stop = true;
  await pushing;
  bulk.destroy();
  const minRtt = session.rttMs;
  session.close();
  ws.terminate();
  return { samples, rtts, mbps, minRtt };
}

const pki = makePki();
const { child, port } = await startPeer('mux-peer.js', pki);
try {
  const out: Record<string, Record<string, number[]>> = {};
  const add = (v: string, k: string, x: number): void => void ((out[v] ??= {})[k] ??= []).push(x);
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? (['on', 'off'] as const) : (['off', 'on'] as const);
    for (const v of order) {
      const res = await run(port, pki, v === 'off' ? 0 : 128 * 1024);
      for (const key of ['inflight', 'ws', 'socket', 'unacked', 'limit', 'kernelTx', 'kernelRx'] as const) {
        const xs = res.samples.map((s) => s[key]).filter((x) => Number.isFinite(x));
        add(v, `${key}P50`, median(xs));
        add(v, `${key}Max`, Math.max(...xs));
      }
      add(v, 'echoP50', percentile(res.rtts, 50));
      add(v, 'echoP99', percentile(res.rtts, 99));
      add(v, 'bulkMBps', res.mbps);
      add(v, 'minRttMs', res.minRtt ?? NaN);
    }
    process.stderr.write(`round ${r + 1}/${ROUNDS} done\n`);
  }
  const kib = (x: number): string => String(round(x / 1024, 1));
  console.log(`meshlink bench:mux-queue — bytes ahead of an interactive frame while one stream pushes bulk, KiB (median of per-round medians; max of per-round maxima), ${ROUNDS} rounds`);
  console.log('pipe   inflight      ws  socket  unacked  limit  kernel tx  kernel rx   echo p50/p99 ms  bulk MB/s  min RTT ms');
  const summary: Record<string, Record<string, number>> = {};
  for (const v of ['on', 'off']) {
    const m = (k: string): number => median(out[v]![k]!);
    const mx = (k: string): number => Math.max(...out[v]![k]!);
    const cols = ['inflight', 'ws', 'socket', 'unacked', 'limit', 'kernelTx', 'kernelRx'].map((k) => `${kib(m(`${k}P50`))} (${kib(mx(`${k}Max`))})`);
    console.log(`${v.padEnd(5)}  ${cols.join('  ')}  ${round(m('echoP50'), 3)} / ${round(m('echoP99'), 2)}  ${round(m('bulkMBps'), 1)}  ${round(m('minRttMs'), 3)}`);
    summary[v] = Object.fromEntries(Object.keys(out[v]!).map((k) => [k, round(k.endsWith('Max') ? mx(k) : m(k), 3)]));
  }
  console.log(JSON.stringify({ rounds: ROUNDS, runMs: RUN_MS, ...summary }));
} finally {
  child.kill();
  pki.cleanup();
}
