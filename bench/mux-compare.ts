/**
 * npm run bench:mux (issue 12) — meshlink's multiplexer against the ones a user could pick
 * instead, over one mutual-TLS connection on loopback with the same certificates (bench/lib/pki.ts):
 *   meshlink   wss, the agent's zero masking key (bench/mux-peer.ts)
 *   http2      node:http2 with tuned windows on both sides (bench/lib/h2.ts, bench/mux-peer-h2.ts)
 *   yamux      @chainsafe/libp2p-yamux 7 with its defaults over TLS (bench/lib/yamux.ts,
 *              bench/mux-peer-yamux.ts)
 *   raw wss    ws messages with the zero key, no multiplexer (throughput only; bench/mux-peer.ts)
 * Each receiver runs in its own process; this process sends. Per round, in an order that rotates
 * from round to round, every variant runs:
 *   bulk       100 streams × BULK_MIB MiB (default 1) in 16 KiB writes (raw: 16 KiB messages)
 *   small      SMALL_MB MiB (default 32) in 1 KiB writes spread over 100 streams (raw: 1 KiB messages)
 *   loaded     one stream pushes 16 KiB writes as fast as it may while, on another stream of the
 *              same connection, a 64 B request is echoed back, one at a time, LOAD_SAMPLES times
 *              (default 300) or for LOAD_MS ms (default 4000); for meshlink each echo is followed
 *              by a `session.ping()`, timed the same way. The same 64 B echo is timed idle first.
 * Throughput counts from the first stream's opening (after connection set-up) until every receiver
 * has answered its byte count. Ratios are taken per round; medians over rounds are reported. The
 * receiver's CPU time per MiB in bulk is read from its process (IPC) before and after.
 * The last line is one JSON object. Issue 2's matrix against raw ws alone (payload sizes, one stream
 * and 100, the ceiling of coalescing) is bench/mux.ts, `npm run bench:mux-ws`.
 *
 * Before the loaded round trips, the same one-stream bulk runs alone for ALONE_MS (default 2000):
 * `meshlinkLoadedVsAlone` is the loaded bulk MB/s over that (issue 12's "≥ 0.9× alone").
 * Options (env): ROUNDS (default 5), BULK_MIB, SMALL_MB, LOAD_SAMPLES, LOAD_MS, ALONE_MS; PARTS and
 * VARIANTS (comma lists) to run a subset; for A/B runs of meshlink's settings, MESHLINK_MAX_WINDOW
 * (receiver's largest auto-tuned stream window, bytes), MESHLINK_TRANSPORT_HW (sender's bytes handed
 * to ws and not yet written, bytes), MESHLINK_PIPE_FLOOR and MESHLINK_PIPE_GAIN (the sender's
 * pipe limit, PROTOCOL.md §7; on by default with a 128 KiB floor, MESHLINK_PIPE_FLOOR=0 turns it off).
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { connect as h2Connect } from 'node:http2';
import { connect as tlsConnect } from 'node:tls';
import type { Readable } from 'node:stream';
import type { Stream } from '@libp2p/interface';
import { attachSession } from '../src/net/ws-session.js';
import { BENCH_HOST, benchServerIdentity } from './lib/bench-host.js';
import { H2_CONNECTION_WINDOW, h2ClientOptions } from './lib/h2.js';
import { connect, rawWs, type Peer } from './lib/mux-client.js';
import { startPeer } from './lib/peer-process.js';
import { makePki, type BenchPki } from './lib/pki.js';
import { median, percentile, round } from './lib/stats.js';
import { Queue, TAG_ECHO, TAG_SINK, yamuxOver } from './lib/yamux.js';

const MIB = 1024 * 1024;
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const STREAMS = 100;
const BULK_PER_STREAM = Number(process.env.BULK_MIB ?? 1) * MIB;
const SMALL_TOTAL = Number(process.env.SMALL_MB ?? 32) * MIB;
const LOAD_SAMPLES = Number(process.env.LOAD_SAMPLES ?? 300);
const LOAD_MS = Number(process.env.LOAD_MS ?? 4000);
const BULK_WRITE = 16 * 1024;
const SMALL_WRITE = 1024;
const ECHO_BYTES = 64;
/** Bulk bytes written before the loaded round trips start: the bulk stream is at full speed by then. */
const LOAD_WARM = 4 * MIB;

/** Knobs for A/B runs of meshlink's own settings (bytes; unset: the defaults): the receiver's largest auto-tuned window, the sender's transport high-water mark. */
const MESHLINK_MAX_WINDOW = Number(process.env.MESHLINK_MAX_WINDOW ?? 0);
const MESHLINK_TRANSPORT_HW = Number(process.env.MESHLINK_TRANSPORT_HW ?? 0);
/** The sender's pipe limit (PROTOCOL.md §7): its floor in bytes (0 turns the bound off) and its gain over the measured bandwidth-delay product. */
const MESHLINK_PIPE_FLOOR = process.env.MESHLINK_PIPE_FLOOR;
const MESHLINK_PIPE_GAIN = process.env.MESHLINK_PIPE_GAIN;
/** Which parts and variants run (comma lists; default all): PARTS=bulk,small,loaded VARIANTS=meshlink,http2,yamux,raw. */
const PARTS = new Set((process.env.PARTS ?? 'bulk,small,loaded').split(','));
const VARIANTS = (process.env.VARIANTS ?? 'meshlink,http2,yamux,raw').split(',');
/** How long the loaded stream's bulk is first measured alone, ms. */
const ALONE_MS = Number(process.env.ALONE_MS ?? 2000);

/** One connection of one multiplexer. */
interface Conn {
  /** Writes `size`-byte chunks on each of `streams` new streams while `more(bytesSentOnIt)`; resolves with the bytes the receiver counted. */
  push(streams: number, size: number, more: (sent: number) => boolean): Promise<number>;
  /** Opens an echo stream; the function sends one request and resolves when all of it came back. */
  echo(): Promise<(payload: Buffer) => Promise<void>>;
  /** The multiplexer's own ping, where the comparison is asked for (meshlink). */
  ping?: () => Promise<unknown>;
  close(): void;
}

type Name = 'meshlink' | 'http2' | 'yamux';

/** Round trips over a Node stream that echoes: resolves once as many bytes came back as were sent. */
function echoer(readable: Readable, write: (b: Buffer) => void): (payload: Buffer) => Promise<void> {
  let got = 0;
  let want = 0;
  let done: (() => void) | undefined;
  readable.on('data', (c: Buffer) => {
    got += c.length;
    if (done && got >= want) {
      const d = done;
      done = undefined;
      d();
    }
  });
  return (payload) =>
    new Promise<void>((resolve) => {
      want = got + payload.length;
      done = resolve;
      write(payload);
    });
}

function text(readable: Readable): Promise<string> {
  return new Promise((resolve, reject) => {
    let s = '';
    readable.on('data', (c: Buffer) => (s += c.toString()));
    readable.on('end', () => resolve(s));
    readable.on('error', reject);
  });
}

function checkCount(name: string, i: number, got: number, sent: number): number {
  if (got !== sent) throw new Error(`${name} stream ${i}: receiver counted ${got} of ${sent} bytes`);
  return got;
}

async function meshlinkConn(peer: Peer): Promise<Conn> {
  const ws = await connect(peer, MESHLINK_MAX_WINDOW ? `/mux?maxWindow=${MESHLINK_MAX_WINDOW}` : '/mux', true);
  const session = attachSession(ws, {
    role: 'agent',
    ...(MESHLINK_TRANSPORT_HW ? { transportHighWater: MESHLINK_TRANSPORT_HW } : {}),
    ...(MESHLINK_PIPE_FLOOR !== undefined ? { pipeFloor: Number(MESHLINK_PIPE_FLOOR) } : {}),
    ...(MESHLINK_PIPE_GAIN !== undefined ? { pipeGain: Number(MESHLINK_PIPE_GAIN) } : {}),
  });
  await session.handshake({ agentVersion: 'bench' });
  return {
    async push(streams, size, more) {
      const payload = Buffer.alloc(size, 7);
      const counts = await Promise.all(
        Array.from({ length: streams }, async (_, i) => {
          const stream = await session.openStream('file.open', { path: `/bench/${i}`, direction: 'push' });
          const ack = text(stream);
          let sent = 0;
          while (more(sent)) {
            sent += size;
            if (!stream.write(payload)) await once(stream, 'drain');
          }
          stream.end();
          return checkCount('meshlink', i, Number(await ack), sent);
        }),
      );
      return counts.reduce((a, b) => a + b, 0);
    },
    async echo() {
      const stream = await session.openStream('file.open', { path: '/echo', direction: 'push' });
      return echoer(stream, (b) => stream.write(b));
    },
    ping: () => session.ping(),
    close() {
      session.close();
      ws.terminate();
    },
  };
}

async function h2Conn(port: number, pki: BenchPki): Promise<Conn> {
  const client = h2Connect(`https://${BENCH_HOST}:${port}`, {
    ...h2ClientOptions,
    // Our own socket, to set TCP_NODELAY as ws does (the session's socket may not be touched).
    createConnection: () => {
      const socket = tlsConnect({ host: BENCH_HOST, port, ca: pki.ca, cert: pki.clientCert, key: pki.clientKey, ALPNProtocols: ['h2'], checkServerIdentity: benchServerIdentity });
      socket.setNoDelay(true);
      return socket;
    },
  });
  client.on('error', () => {});
  await once(client, 'connect');
  client.setLocalWindowSize(H2_CONNECTION_WINDOW);
  return {
    async push(streams, size, more) {
      const payload = Buffer.alloc(size, 7);
      const counts = await Promise.all(
        Array.from({ length: streams }, async (_, i) => {
          const req = client.request({ ':method': 'POST', ':path': '/sink' });
          const ack = text(req);
          let sent = 0;
          while (more(sent)) {
            sent += size;
            if (!req.write(payload)) await once(req, 'drain');
          }
          req.end();
          return checkCount('http2', i, Number(await ack), sent);
        }),
      );
      return counts.reduce((a, b) => a + b, 0);
    },
    async echo() {
      const req = client.request({ ':method': 'POST', ':path': '/echo' });
      await once(req, 'response');
      return echoer(req, (b) => req.write(b));
    },
    close() {
      client.destroy();
    },
  };
}

async function yamuxConn(port: number, pki: BenchPki): Promise<Conn> {
  const socket = tlsConnect({ host: BENCH_HOST, port, ca: pki.ca, cert: pki.clientCert, key: pki.clientKey, checkServerIdentity: benchServerIdentity });
  socket.on('error', () => {});
  await once(socket, 'secureConnect');
  const muxer = yamuxOver(socket, 'outbound');
  const readAll = async (stream: Stream): Promise<string> => {
    let s = '';
    for await (const c of stream.source) s += Buffer.from(c.subarray()).toString();
    return s;
  };
  return {
    async push(streams, size, more) {
      const payload = Buffer.alloc(size, 7);
      const counts = await Promise.all(
        Array.from({ length: streams }, async (_, i) => {
          const stream = await muxer.newStream();
          const ack = readAll(stream);
          let sent = 0;
          await stream.sink(
            (async function* () {
              yield Uint8Array.of(TAG_SINK);
              while (more(sent)) {
                sent += size;
                yield payload;
              }
            })(),
          );
          return checkCount('yamux', i, Number(await ack), sent);
        }),
      );
      return counts.reduce((a, b) => a + b, 0);
    },
    async echo() {
      const stream = await muxer.newStream();
      const queue = new Queue<Uint8Array>();
      queue.push(Uint8Array.of(TAG_ECHO));
      void stream.sink(queue.iterable()).catch(() => {});
      let got = 0;
      let want = 0;
      let done: (() => void) | undefined;
      void (async () => {
        for await (const c of stream.source) {
          got += c.byteLength;
          if (done && got >= want) {
            const d = done;
            done = undefined;
            d();
          }
        }
      })().catch(() => {});
      return (payload) =>
        new Promise<void>((resolve) => {
          want = got + payload.length;
          done = resolve;
          queue.push(payload);
        });
    },
    close() {
      muxer.abort(new Error('bench done'));
      socket.destroy();
    },
  };
}

/** The child's CPU time so far, ms. */
async function cpuMs(child: ChildProcess): Promise<number> {
  const reply = once(child, 'message');
  child.send('cpu');
  const [m] = (await reply) as [{ cpuMicros: number }];
  return m.cpuMicros / 1000;
}

async function throughput(open: () => Promise<Conn>, child: ChildProcess, perStream: number, size: number): Promise<{ mbps: number; rxCpuMsPerMiB: number }> {
  const conn = await open();
  try {
    const cpu0 = await cpuMs(child);
    const t0 = performance.now();
    const bytes = await conn.push(STREAMS, size, (sent) => sent < perStream);
    const secs = (performance.now() - t0) / 1000;
    const cpu1 = await cpuMs(child);
    return { mbps: bytes / MIB / secs, rxCpuMsPerMiB: (cpu1 - cpu0) / (bytes / MIB) };
  } finally {
    conn.close();
  }
}

interface Loaded {
  idleP50: number;
  p50: number;
  p99: number;
  pingP50: number;
  pingP99: number;
  bulkMBps: number;
  aloneMBps: number;
  samples: number;
}

async function loaded(open: () => Promise<Conn>): Promise<Loaded> {
  const conn = await open();
  try {
    const rt = await conn.echo();
    const payload = Buffer.alloc(ECHO_BYTES, 1);
    const idle: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t = performance.now();
      await rt(payload);
      if (i >= 10) idle.push(performance.now() - t);
    }
    // The same bulk stream alone first, for as long: the target is the loaded bulk against this.
    const a0 = performance.now();
    const aloneBytes = await conn.push(1, BULK_WRITE, () => performance.now() - a0 < ALONE_MS);
    const aloneMBps = aloneBytes / MIB / ((performance.now() - a0) / 1000);
    let stop = false;
    let bulkSent = 0;
    const t0 = performance.now();
    const bulk = conn.push(1, BULK_WRITE, (sent) => {
      bulkSent = sent;
      return !stop;
    });
    while (bulkSent < LOAD_WARM) await new Promise((r) => setTimeout(r, 1));
    const samples: number[] = [];
    const pings: number[] = [];
    const tStart = performance.now();
    while (samples.length < LOAD_SAMPLES && performance.now() - tStart < LOAD_MS) {
      let t = performance.now();
      await rt(payload);
      samples.push(performance.now() - t);
      if (conn.ping) {
        t = performance.now();
        await conn.ping();
        pings.push(performance.now() - t);
      }
    }
    stop = true;
    const bytes = await bulk;
    const bulkMBps = bytes / MIB / ((performance.now() - t0) / 1000);
    return {
      idleP50: percentile(idle, 50),
      p50: percentile(samples, 50),
      p99: percentile(samples, 99),
      pingP50: percentile(pings, 50),
      pingP99: percentile(pings, 99),
      bulkMBps,
      aloneMBps,
      samples: samples.length,
    };
  } finally {
    conn.close();
  }
}

async function main(): Promise<void> {
  const pki = makePki();
  const children: ChildProcess[] = [];
  try {
    const mesh = await startPeer('mux-peer.js', pki);
    const raw = await startPeer('mux-peer.js', pki);
    const h2 = await startPeer('mux-peer-h2.js', pki);
    const ymx = await startPeer('mux-peer-yamux.js', pki);
    children.push(mesh.child, raw.child, h2.child, ymx.child);
    const muxes: Record<Name, { open: () => Promise<Conn>; child: ChildProcess }> = {
      meshlink: { open: () => meshlinkConn({ port: mesh.port, pki }), child: mesh.child },
      http2: { open: () => h2Conn(h2.port, pki), child: h2.child },
      yamux: { open: () => yamuxConn(ymx.port, pki), child: ymx.child },
    };
    const rawPeer: Peer = { port: raw.port, pki };
    const names = (['meshlink', 'http2', 'yamux', 'raw'] as const).filter((n) => VARIANTS.includes(n));
    const results: Record<string, number[]> = {};
    const push = (k: string, v: number): void => void (results[k] ??= []).push(v);

    // Warm-up: JIT and TLS, every variant once at a small size.
    for (const n of names) {
      if (n === 'raw') await rawWs(rawPeer, BULK_WRITE, 16 * MIB, true);
      else await throughput(muxes[n].open, muxes[n].child, 64 * 1024, BULK_WRITE);
    }

    for (let r = 0; r < ROUNDS; r++) {
      const order = names.map((_, i) => names[(i + r) % names.length]!);
      const bulk: Record<string, number> = {};
      const small: Record<string, number> = {};
      for (const n of PARTS.has('bulk') ? order : []) {
        if (n === 'raw') bulk[n] = await rawWs(rawPeer, BULK_WRITE, STREAMS * BULK_PER_STREAM, true);
        else {
          const t = await throughput(muxes[n].open, muxes[n].child, BULK_PER_STREAM, BULK_WRITE);
          bulk[n] = t.mbps;
          push(`${n}RxCpuMsPerMiB`, t.rxCpuMsPerMiB);
        }
      }
      for (const n of PARTS.has('small') ? order : []) {
        if (n === 'raw') small[n] = await rawWs(rawPeer, SMALL_WRITE, SMALL_TOTAL, true);
        else small[n] = (await throughput(muxes[n].open, muxes[n].child, Math.floor(SMALL_TOTAL / STREAMS / SMALL_WRITE) * SMALL_WRITE, SMALL_WRITE)).mbps;
      }
      for (const n of PARTS.has('loaded') ? order : []) {
        if (n === 'raw') continue;
        const l = await loaded(muxes[n].open);
        push(`${n}IdleP50`, l.idleP50);
        push(`${n}P50`, l.p50);
        push(`${n}P99`, l.p99);
        push(`${n}LoadedBulk`, l.bulkMBps);
        push(`${n}AloneBulk`, l.aloneMBps);
        push(`${n}LoadedVsAlone`, l.bulkMBps / l.aloneMBps);
        push(`${n}Samples`, l.samples);
        if (n === 'meshlink') {
          push('pingP50', l.pingP50);
          push('pingP99', l.pingP99);
        }
      }
      for (const n of names) {
        if (bulk[n] !== undefined) push(`${n}Bulk`, bulk[n]);
        if (small[n] !== undefined) push(`${n}Small`, small[n]);
      }
      const ratio = (k: string, a: number | undefined, b: number | undefined): void => {
        if (a !== undefined && b !== undefined) push(k, a / b);
      };
      ratio('bulkVsHttp2', bulk.meshlink, bulk.http2);
      ratio('smallVsHttp2', small.meshlink, small.http2);
      ratio('bulkVsYamux', bulk.meshlink, bulk.yamux);
      ratio('smallVsYamux', small.meshlink, small.yamux);
      ratio('bulkVsRawWs', bulk.meshlink, bulk.raw);
      ratio('smallVsRawWs', small.meshlink, small.raw);
      ratio('loadedP50VsHttp2', results.meshlinkP50?.at(-1), results.http2P50?.at(-1));
      process.stderr.write(`round ${r + 1}/${ROUNDS} (order ${order.join(', ')}) done\n`);
    }

    const m = (k: string, digits = 2): number => round(median(results[k] ?? []), digits);
    console.log(`meshlink bench:mux (compare) — one mTLS connection on loopback, receivers in their own processes, ${ROUNDS} rounds in rotating order, medians`);
    console.log(`bulk: ${STREAMS} streams × ${BULK_PER_STREAM / MIB} MiB, ${BULK_WRITE / 1024} KiB writes; small: ${SMALL_TOTAL / MIB} MiB in ${SMALL_WRITE} B writes over ${STREAMS} streams`);
    console.log('variant    bulk MB/s  small MB/s  rx CPU ms/MiB (bulk)  64 B echo idle p50 ms  loaded p50 / p99 ms  bulk MB/s while loaded  alone  loaded÷alone');
    for (const n of names) {
      const cells = n === 'raw'
        ? [m('rawBulk'), m('rawSmall'), '', '', '', '']
        : [m(`${n}Bulk`), m(`${n}Small`), m(`${n}RxCpuMsPerMiB`), m(`${n}IdleP50`, 3), `${m(`${n}P50`, 3)} / ${m(`${n}P99`, 3)}`, m(`${n}LoadedBulk`), m(`${n}AloneBulk`), m(`${n}LoadedVsAlone`)];
      console.log(`${n.padEnd(9)}  ${cells.map((c) => String(c).padStart(9)).join('  ')}`);
    }
    console.log(`meshlink session.ping() while loaded: p50 ${m('pingP50', 3)} ms, p99 ${m('pingP99', 3)} ms`);
    console.log(
      `meshlink per round: bulk ${m('bulkVsHttp2')}× http2, ${m('bulkVsYamux')}× yamux, ${m('bulkVsRawWs')}× raw wss; small ${m('smallVsHttp2')}× http2, ${m('smallVsYamux')}× yamux, ${m('smallVsRawWs')}× raw wss`,
    );
    console.log(
      JSON.stringify({
        rounds: ROUNDS,
        bulkVsHttp2: m('bulkVsHttp2'),
        smallVsHttp2: m('smallVsHttp2'),
        loadedP50Ms: m('meshlinkP50', 3),
        loadedP99Ms: m('meshlinkP99', 3),
        pingLoadedP50Ms: m('pingP50', 3),
        pingLoadedP99Ms: m('pingP99', 3),
        http2LoadedP50Ms: m('http2P50', 3),
        http2LoadedP99Ms: m('http2P99', 3),
        loadedP50VsHttp2: m('loadedP50VsHttp2'),
        bulkVsYamux: m('bulkVsYamux'),
        smallVsYamux: m('smallVsYamux'),
        yamuxLoadedP50Ms: m('yamuxP50', 3),
        yamuxLoadedP99Ms: m('yamuxP99', 3),
        bulkVsRawWs: m('bulkVsRawWs'),
        smallVsRawWs: m('smallVsRawWs'),
        meshlinkBulkMBps: m('meshlinkBulk'),
        http2BulkMBps: m('http2Bulk'),
        yamuxBulkMBps: m('yamuxBulk'),
        rawWsBulkMBps: m('rawBulk'),
        meshlinkSmallMBps: m('meshlinkSmall'),
        http2SmallMBps: m('http2Small'),
        yamuxSmallMBps: m('yamuxSmall'),
        rawWsSmallMBps: m('rawSmall'),
        meshlinkIdleP50Ms: m('meshlinkIdleP50', 3),
        http2IdleP50Ms: m('http2IdleP50', 3),
        yamuxIdleP50Ms: m('yamuxIdleP50', 3),
        meshlinkLoadedBulkMBps: m('meshlinkLoadedBulk'),
        meshlinkAloneBulkMBps: m('meshlinkAloneBulk'),
        meshlinkLoadedVsAlone: m('meshlinkLoadedVsAlone'),
        http2LoadedVsAlone: m('http2LoadedVsAlone'),
        http2LoadedBulkMBps: m('http2LoadedBulk'),
        yamuxLoadedBulkMBps: m('yamuxLoadedBulk'),
        meshlinkRxCpuMsPerMiB: m('meshlinkRxCpuMsPerMiB'),
        http2RxCpuMsPerMiB: m('http2RxCpuMsPerMiB'),
        yamuxRxCpuMsPerMiB: m('yamuxRxCpuMsPerMiB'),
        meshlinkLoadedSamples: m('meshlinkSamples', 0),
        http2LoadedSamples: m('http2Samples', 0),
        yamuxLoadedSamples: m('yamuxSamples', 0),
        loadedSamplesMin: Math.min(...['meshlink', 'http2', 'yamux'].flatMap((n) => results[`${n}Samples`] ?? [])),
        pipe: { floor: MESHLINK_PIPE_FLOOR ?? 'default', gain: MESHLINK_PIPE_GAIN ?? 'default' },
      }),
    );
  } finally {
    // Closing the IPC channel lets each receiver exit by itself (and write a --cpu-prof profile).
    for (const c of children) if (c.connected) c.disconnect();
    pki.cleanup();
  }
}

await main();
