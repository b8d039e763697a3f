/**
 * npm run bench:mux-ws (issue 2's `bench:mux`; since issue 12 `bench:mux` is bench/mux-compare.ts) —
 * meshlink's multiplexer against raw `ws`, over real wss with mutual TLS on
 * loopback. The receiver runs in a child process (bench/mux-peer.ts); this process sends, as an
 * agent does (client frames are masked; bufferutil is installed).
 *
 * For payloads of 1 KiB, 16 KiB and 256 KiB it measures, interleaved round by round so that machine
 * noise hits all variants alike: raw ws messages, one meshlink stream, and 100 concurrent streams.
 * meshlink's client sends frames with a zero masking key, as the agent does (src/net/ws-mask.ts);
 * raw ws is measured both ways: with ws's default random keys (the baseline of the ratios) and with
 * the same zero key (the `…ZeroMask` ratios), so that the gain of the key is not credited to the
 * multiplexer.
 * Then 1 KiB writes spread over 100 streams against raw ws 1 KiB messages (coalescing), next to the
 * ceiling of coalescing: raw ws moving the same bytes in 64 KiB messages with the zero key (what a
 * multiplexer that cost nothing would reach, since meshlink's messages are 64 KiB). Then codec
 * frames/s for small control messages. Ratios are computed per round, and medians are reported.
 * The last line is one JSON object.
 *
 * Options (env): ROUNDS (default 5), MB (bytes per run in MiB, default 128).
 */
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { attachSession } from '../src/net/ws-session.js';
import type { Session } from '../src/protocol/session.js';
import { encodeMessage, decodeFrame } from '../src/protocol/codec.js';
import { FrameDecoder } from '../src/protocol/decoder.js';
import { DEFAULT_MAX_FRAME_SIZE } from '../src/protocol/frame.js';
import { connect, rawWs, type Peer } from './lib/mux-client.js';
import { startPeer } from './lib/peer-process.js';
import { makePki } from './lib/pki.js';
import { median, round } from './lib/stats.js';

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const MIB = 1024 * 1024;
// Every run moves the same amount: shorter runs (32 MiB was tried) measure connection start-up more
// than the transfer, and did so unequally for raw ws and meshlink.
const TOTAL = Number(process.env.MB ?? 128) * MIB;


async function muxSession(peer: Peer): Promise<{ session: Session; ws: WebSocket }> {
  const ws = await connect(peer, '/mux', true);
  const session = attachSession(ws, { role: 'agent' });
  await session.handshake({ agentVersion: 'bench' });
  return { session, ws };
}

/** Writes `total` bytes in `size` writes, spread evenly over `streams` streams. MB/s. */
async function mux(peer: Peer, size: number, total: number, streams: number): Promise<number> {
  const { session, ws } = await muxSession(peer);
  const payload = Buffer.alloc(size, 7);
  const perStream = Math.floor(total / streams / size) * size;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: streams }, async (_, i) => {
      const stream = await session.openStream('file.open', { path: `/bench/${i}`, direction: 'push' });
      const ack = new Promise<string>((resolve) => {
        let s = '';
        stream.on('data', (c: Buffer) => (s += c.toString()));
        stream.on('end', () => resolve(s));
      });
      for (let sent = 0; sent < perStream; sent += size) {
        if (!stream.write(payload)) await once(stream, 'drain');
      }
      stream.end();
      const n = Number(await ack);
      if (n !== perStream) throw new Error(`stream ${i}: peer got ${n} of ${perStream} bytes`);
    }),
  );
  const secs = (performance.now() - start) / 1000;
  session.close();
  ws.terminate();
  return (perStream * streams) / MIB / secs;
}

function codecFramesPerSec(): number {
  const decoder = new FrameDecoder();
  const n = 200_000;
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    const bytes = encodeMessage('heartbeat', 0, { seq: i, ts: 1_700_000_000_000 + i });
    for (const f of decoder.push(bytes)) decodeFrame(f, DEFAULT_MAX_FRAME_SIZE);
  }
  return n / ((performance.now() - start) / 1000);
}

async function main(): Promise<void> {
  const pki = makePki();
  const { child, port } = await startPeer('mux-peer.js', pki);
  const peer = { port, pki };
  const sizes = [1024, 16 * 1024, 256 * 1024];
  const results: Record<string, number[]> = {};
  const push = (k: string, v: number): void => {
    (results[k] ??= []).push(v);
  };
  try {
    // Warm-up: JIT and TLS session setup.
    await rawWs(peer, 16 * 1024, 16 * MIB);
    await rawWs(peer, 16 * 1024, 16 * MIB, true);
    await mux(peer, 16 * 1024, 16 * MIB, 1);
    for (let r = 0; r < ROUNDS; r++) {
      for (const size of sizes) {
        const raw = await rawWs(peer, size, TOTAL);
        const rawZ = await rawWs(peer, size, TOTAL, true);
        const one = await mux(peer, size, TOTAL, 1);
        const hundred = await mux(peer, size, TOTAL, 100);
        push(`raw${size}`, raw);
        push(`rawZ${size}`, rawZ);
        push(`one${size}`, one);
        push(`hundred${size}`, hundred);
        push(`ratio1_${size}`, one / raw);
        push(`ratio100_${size}`, hundred / raw);
        push(`ratio1z_${size}`, one / rawZ);
        push(`ratio100z_${size}`, hundred / rawZ);
      }
      // Small writes: 1 KiB messages on raw ws vs 1 KiB writes over 100 streams (coalesced).
      const raw1k = await rawWs(peer, 1024, TOTAL);
      const raw1kZ = await rawWs(peer, 1024, TOTAL, true);
      const mux1k = await mux(peer, 1024, TOTAL, 100);
      const ceiling = await rawWs(peer, 64 * 1024, TOTAL, true);
      push('small_raw', raw1k);
      push('small_rawZ', raw1kZ);
      push('small_mux', mux1k);
      push('small_ceiling', ceiling);
      push('ratioSmall1K', mux1k / raw1k);
      push('ratioSmall1KZeroMask', mux1k / raw1kZ);
      push('ceilingSmall1K', ceiling / raw1k);
      push('smallOfCeiling', mux1k / ceiling);
      process.stderr.write(`round ${r + 1}/${ROUNDS} done\n`);
    }
    const codec = codecFramesPerSec();
    const m = (k: string): number => round(median(results[k] ?? []));
    console.log(`meshlink bench:mux — wss + mutual TLS on loopback, receiver in a child process, ${ROUNDS} rounds, medians`);
    console.log('payload   raw ws MB/s (zero mask)   1 stream MB/s (ratio; vs zero-mask raw)   100 streams MB/s (ratio; vs zero-mask raw)');
    for (const size of sizes) {
      console.log(
        `${String(size / 1024).padStart(4)} KiB  ${String(m(`raw${size}`)).padStart(9)} (${m(`rawZ${size}`)})   ${String(m(`one${size}`)).padStart(9)} (${m(`ratio1_${size}`)}; ${m(`ratio1z_${size}`)})   ${String(m(`hundred${size}`)).padStart(11)} (${m(`ratio100_${size}`)}; ${m(`ratio100z_${size}`)})`,
      );
    }
    console.log(`1 KiB writes over 100 streams: ${m('small_mux')} MB/s vs raw ws 1 KiB messages ${m('small_raw')} MB/s, zero mask ${m('small_rawZ')} MB/s (ratio ${m('ratioSmall1K')}; ${m('ratioSmall1KZeroMask')})`);
    console.log(`  ceiling of coalescing: raw ws, zero mask, 64 KiB messages ${m('small_ceiling')} MB/s = ${m('ceilingSmall1K')} of raw 1 KiB; meshlink reached ${m('smallOfCeiling')} of it`);
    console.log(`codec: ${Math.round(codec)} heartbeat frames/s encoded+decoded`);
    console.log(
      JSON.stringify({
        rounds: ROUNDS,
        rawWs16KMBps: m(`raw${16384}`),
        oneStream16KMBps: m(`one${16384}`),
        hundredStreams16KMBps: m(`hundred${16384}`),
        ratio1Stream1K: m(`ratio1_1024`),
        ratio1Stream16K: m(`ratio1_16384`),
        ratio1Stream256K: m(`ratio1_262144`),
        ratio100Streams1K: m(`ratio100_1024`),
        ratio100Streams16K: m(`ratio100_16384`),
        ratio100Streams256K: m(`ratio100_262144`),
        ratioSmall1K: m('ratioSmall1K'),
        rawWsZeroMask16KMBps: m(`rawZ${16384}`),
        ratio1Stream16KZeroMask: m(`ratio1z_16384`),
        ratio100Streams16KZeroMask: m(`ratio100z_16384`),
        ratio1Stream256KZeroMask: m(`ratio1z_262144`),
        ratioSmall1KZeroMask: m('ratioSmall1KZeroMask'),
        ceilingSmall1K: m('ceilingSmall1K'),
        small1KOfCeiling: m('smallOfCeiling'),
        codecFramesPerSec: Math.round(codec),
      }),
    );
  } finally {
    child.kill();
    pki.cleanup();
  }
}

await main();
