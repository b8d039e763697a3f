/**
 * `npm run fuzz [-- --cases N --live N --enroll N --seed S]`: bad input at every layer.
 *
 * 1. decoder: random and mutated frames through the frame decoder + payload codec, and through a
 *    server-role Session in memory: only MeshlinkErrors, a Session never throws and closes with a
 *    documented close code (docs/PROTOCOL.md §9).
 * 2. live: mutated frames of every registered kind (schema-shaped random payloads, bit flips,
 *    truncation, wrong stream ids, reserved flags, oversized headers, stream-open floods) over real
 *    mTLS connections to a real server, while a victim agent heartbeats through it all.
 * 3. enroll: random and mutated bodies at POST /v1/enroll: always a 4xx JSON answer, never 5xx.
 * Throughout: no uncaught exception, no unhandled rejection, bounded memory. Last line: one JSON object.
 * Slowloris headers and idle pre-TLS sockets are covered by test/server/gateway.test.ts.
 */
import { encode } from '@msgpack/msgpack';
import { mkdtemp, rm } from 'node:fs/promises';
import { Agent as HttpsAgent, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { enroll } from '../src/agent/enroll.js';
import { attachSession } from '../src/net/ws-session.js';
import { decodeFrame, encodeMessage } from '../src/protocol/codec.js';
import { FrameDecoder, decodeMessage } from '../src/protocol/decoder.js';
import { HEADER_SIZE, writeHeader } from '../src/protocol/frame.js';
import { MESSAGE_KINDS, type MessageKind } from '../src/protocol/registry.js';
import { Session } from '../src/protocol/session.js';
import { parseServerConfig } from '../src/server/config.js';
import { createEnrollmentToken } from '../src/server/nodes.js';
import { startServer, type RunningServer } from '../src/server/server.js';
import { createLogger } from '../src/util/logger.js';
import { ERRORS, MeshlinkError, type ErrorSpec } from '../src/errors.js';

/** Close codes a peer may legitimately see: the documented table plus normal/going away. */
export const DOCUMENTED_CLOSE_CODES = new Set<number>([1000, 1001, ...Object.values(ERRORS as Record<string, ErrorSpec>).flatMap((e) => (e.closeCode === undefined ? [] : [e.closeCode]))]);

/** Small deterministic PRNG (mulberry32) so a failing seed can be replayed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Mutator {
  constructor(readonly rnd: () => number) {}
  int(n: number): number {
    return Math.floor(this.rnd() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /** A random value of any MessagePack-able shape, depth-limited. */
  value(depth = 0): unknown {
    switch (this.int(depth > 2 ? 7 : 10)) {
      case 0: return this.pick([0, 1, -1, 2 ** 31, 2 ** 32, -(2 ** 53), Number.MAX_SAFE_INTEGER, 1.5, NaN, Infinity, this.int(1e6)]);
      case 1: return this.pick(['', 'x', 'ML_ERR_X', 'a'.repeat(this.int(70_000)), '\u0000\uffff', '-----BEGIN CERTIFICATE-----\n']);
      case 2: return this.bytes(this.int(64));
      case 3: return this.rnd() < 0.5;
      case 4: return null;
      case 5: return undefined;
      case 6: return this.int(0xffff_ffff);
      case 7: return Array.from({ length: this.int(6) }, () => this.value(depth + 1));
      case 8: return Object.fromEntries(Array.from({ length: this.int(5) }, () => [this.pick(['kind', 'meta', 'seq', 'rid', 'ts', 'code', 'x', '__proto__', 'constructor']), this.value(depth + 1)]));
      default: return { [this.pick(['a', 'b'])]: this.value(depth + 1) };
    }
  }
  /** A payload shaped like `kind`'s schema (its keys) with random values, sometimes near-valid. */
  payloadFor(kind: MessageKind): unknown {
    const shape = (kind.schema as unknown as { shape?: Record<string, unknown> }).shape;
    if (!shape || this.rnd() < 0.1) return this.value();
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(shape)) if (this.rnd() < 0.85) out[key] = this.value(1);
    return out;
  }
  /** One frame of `kind` with a random payload and a mostly plausible header. */
  frame(kind: MessageKind): Uint8Array {
    let body: Uint8Array;
    try {
      body = encode(this.payloadFor(kind), { ignoreUndefined: true });
    } catch {
      body = this.bytes(8);
    }
    const stream = kind.scope === 'control' ? (this.rnd() < 0.9 ? 0 : 1 + this.int(10)) : this.rnd() < 0.1 ? 0 : 1 + 2 * this.int(50);
    const flags = this.rnd() < 0.9 ? 0 : this.int(256);
    const out = new Uint8Array(HEADER_SIZE + body.byteLength);
    writeHeader(out, 0, { type: kind.code, stream, flags, length: body.byteLength });
    out.set(body, HEADER_SIZE);
    return out;
  }
  /** Byte-level damage: bit flips, truncation, extension, header field rewrites, splices. */
  mutate(frame: Uint8Array): Uint8Array {
    const b = Uint8Array.from(frame);
    switch (this.int(6)) {
      case 0: {
        for (let i = 0, n = 1 + this.int(4); i < n && b.length > 0; i++) b[this.int(b.length)]! ^= 1 << this.int(8);
        return b;
      }
      case 1: return b.subarray(0, this.int(b.length));
      case 2: {
        const out = new Uint8Array(b.length + 1 + this.int(32));
        out.set(b);
        out.set(this.bytes(out.length - b.length), b.length);
        return out;
      }
      case 3: {
        if (b.length >= HEADER_SIZE) new DataView(b.buffer).setUint32(7, this.pick([0, 1, b.length, 0xffff_ffff, 1024 * 1024 + 1, this.int(2 ** 32)]));
        return b;
      }
      case 4: {
        if (b.length >= 2) new DataView(b.buffer).setUint16(0, this.pick([0, 0xffff, 0x0009, 0x0054, this.int(0x10000)]));
        return b;
      }
      default: {
        const out = new Uint8Array(b.length * 2);
        out.set(b);
        out.set(b, b.length);
        return out;
      }
    }
  }
  /** A whole WebSocket message of one or more (possibly damaged) frames. */
  message(kinds: readonly MessageKind[]): Uint8Array {
    const r = this.rnd();
    if (r < 0.1) return this.bytes(this.int(200));
    const frames = Array.from({ length: 1 + this.int(3) }, () => {
      const f = this.frame(this.pick(kinds));
      return this.rnd() < 0.5 ? this.mutate(f) : f;
    });
    const out = new Uint8Array(frames.reduce((s, f) => s + f.length, 0));
    let at = 0;
    for (const f of frames) {
      out.set(f, at);
      at += f.length;
    }
    return out;
  }
}

export interface FuzzReport {
  decoderCases: number;
  sessionCases: number;
  liveCases: number;
  liveReconnects: number;
  enrollCases: number;
  closeCodes: Record<string, number>;
  enrollStatuses: Record<string, number>;
  failures: string[];
  victimAcks: number;
  rssGrowthMiB: number;
}

/** Target 1: decoder + codec + a server-role Session in memory. */
export function fuzzDecoder(cases: number, seed: number, report: FuzzReport): void {
  const m = new Mutator(prng(seed));
  const kinds = MESSAGE_KINDS as readonly MessageKind[];
  const decoder = new FrameDecoder();
  for (let i = 0; i < cases; i++) {
    const msg = m.message(kinds);
    try {
      for (const f of decodeMessage(msg, decoder)) decodeFrame(f, decoder.maxFrameSize);
    } catch (err) {
      if (!(err instanceof MeshlinkError)) report.failures.push(`decoder case ${i} (seed ${seed}): ${String(err)}`);
      decoder.reset();
    }
    report.decoderCases++;
  }
  // The same inputs at a server session that completed its handshake: it must never throw.
  let closeCode = 0;
  const fresh = (): Session => {
    const s = new Session({ role: 'server', transport: { send: (_m, done) => done(), close: (code) => (closeCode = code) }, onHello: () => ({ nodeId: 'n', serverVersion: 'fuzz', heartbeatIntervalMs: 15_000 }) });
    s.on('stream', (st) => s.reject(st, 'ML_ERR_UNSUPPORTED', 'no'));
    s.receive(encodeMessage('hello', 0, { versions: [1], agentVersion: 'fuzz' }));
    return s;
  };
  let session = fresh();
  const pending: Promise<void>[] = [];
  for (let i = 0; i < cases / 4; i++) {
    try {
      session.receive(m.message(kinds));
    } catch (err) {
      report.failures.push(`session.receive threw on case ${i}: ${String(err)}`);
    }
    if (session.state === 'closed') {
      if (!DOCUMENTED_CLOSE_CODES.has(closeCode)) report.failures.push(`session closed with undocumented code ${closeCode}`);
      report.closeCodes[`mem:${closeCode}`] = (report.closeCodes[`mem:${closeCode}`] ?? 0) + 1;
      session = fresh();
    }
    report.sessionCases++;
  }
  void pending;
}

interface LiveTarget {
  server: RunningServer;
  url: string;
  identities: Array<{ certPem: string; keyPem: string; caPem: string }>;
  close(): Promise<void>;
}

export async function startLiveTarget(identitiesNeeded: number): Promise<LiveTarget> {
  const dataDir = await mkdtemp(join(tmpdir(), 'ml-fuzz-'));
  const config = parseServerConfig({ dataDir, listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048', logLevel: 'silent', enrollFailuresPerMinute: 100_000, heartbeatIntervalMs: 200, offlineAfterMs: 2_000 });
  const logger = createLogger({ name: 'fuzz', level: 'silent' });
  const server = await startServer(config, { logger, passphrase: '' });
  const identities: LiveTarget['identities'] = [];
  for (let i = 0; i < identitiesNeeded; i++) {
    const { token } = await createEnrollmentToken(server.store, { ttlMs: 600_000 });
    const r = await enroll({ server: server.publicUrl, token, caPins: [server.caPin], stateDir: join(dataDir, `agent-${i}`), hostname: `fuzz-${i}` }, { logger });
    identities.push({ certPem: r.identity.certPem, keyPem: r.identity.keyPem, caPem: r.identity.caPem });
  }
  return {
    server,
    url: server.publicUrl,
    identities,
    close: async () => {
      await server.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

function openRaw(url: string, id: { certPem: string; keyPem: string; caPem: string }): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace('https:', 'wss:')}/v1/connect`, { ca: id.caPem, cert: id.certPem, key: id.keyPem, perMessageDeflate: false });
    ws.binaryType = 'nodebuffer';
    ws.once('error', reject);
    ws.once('open', () => {
      ws.send(encodeMessage('hello', 0, { versions: [1], agentVersion: 'fuzz' }));
      ws.once('message', () => resolve(ws)); // welcome
    });
  });
}

/** Target 2: mutated frames over live mTLS connections while a victim keeps heartbeating. */
export async function fuzzLive(target: LiveTarget, cases: number, seed: number, report: FuzzReport): Promise<void> {
  const m = new Mutator(prng(seed ^ 0x5eed));
  const kinds = MESSAGE_KINDS as readonly MessageKind[];
  const [victimId, ...attackers] = target.identities;
  // The victim: a real Session heartbeating every 50 ms; every ack is counted.
  const victimWs = await openRawNoHello(target.url, victimId!);
  const victim = attachSession(victimWs, { role: 'agent' });
  await victim.handshake({ agentVersion: 'victim' });
  let acks = 0;
  victim.on('message', (msg) => msg.name === 'heartbeat.ack' && acks++);
  let seq = 0;
  const beat = setInterval(() => victim.state === 'open' && victim.send('heartbeat', { seq: ++seq, ts: Date.now() }), 50);
  const rss0 = process.memoryUsage().rss;
  try {
    let sent = 0;
    let k = 0;
    while (sent < cases) {
      const id = attackers[k++ % attackers.length]!;
      const ws = await openRaw(target.url, id);
      report.liveReconnects++;
      const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
      let open = true;
      ws.once('close', () => (open = false));
      // A burst of cases on this connection until the server closes it (or 200 were accepted).
      for (let j = 0; j < 200 && open && sent < cases; j++) {
        const special = m.rnd();
        let msg: Uint8Array;
        if (special < 0.01) {
          // An oversized frame header: refused before any payload is buffered (1009).
          msg = new Uint8Array(HEADER_SIZE + 16);
          writeHeader(msg, 0, { type: 0x0007, stream: 0, flags: 0, length: 2 * 1024 * 1024 });
        } else if (special < 0.02) {
          // A flood of stream opens of kinds the server does not accept: each is refused.
          const frames: Uint8Array[] = [];
          for (let s = 0; s < 2_000; s++) frames.push(encodeMessage('stream.open', 1 + 2 * (j * 2_000 + s), { kind: 'file.open', meta: { path: '/x', direction: 'push' } }));
          msg = Buffer.concat(frames);
        } else msg = m.message(kinds);
        ws.send(msg);
        sent++;
        await new Promise((r) => setImmediate(r));
      }
      if (open) ws.close(1000);
      const code = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), 5_000))]);
      if (code === -1) ws.terminate();
      report.closeCodes[String(code)] = (report.closeCodes[String(code)] ?? 0) + 1;
      if (!DOCUMENTED_CLOSE_CODES.has(code)) report.failures.push(`live connection closed with undocumented code ${code}`);
    }
    report.liveCases += sent;
    await new Promise((r) => setTimeout(r, 300));
    if (victim.state !== 'open') report.failures.push('the victim session was closed during the fuzz run');
    if (acks < 3) report.failures.push(`the victim got only ${acks} heartbeat acks`);
    report.victimAcks = acks;
    report.rssGrowthMiB = Math.round((process.memoryUsage().rss - rss0) / 1048576);
  } finally {
    clearInterval(beat);
    victim.close();
  }
}

function openRawNoHello(url: string, id: { certPem: string; keyPem: string; caPem: string }): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace('https:', 'wss:')}/v1/connect`, { ca: id.caPem, cert: id.certPem, key: id.keyPem, perMessageDeflate: false });
    ws.once('error', reject);
    ws.once('open', () => resolve(ws));
  });
}

/** Target 3: POST /v1/enroll with random and mutated bodies. */
export async function fuzzEnroll(target: LiveTarget, cases: number, seed: number, report: FuzzReport): Promise<void> {
  const m = new Mutator(prng(seed ^ 0xe1));
  const agent = new HttpsAgent({ keepAlive: true, maxSockets: 8, ca: target.server.caCertPem });
  const valid = JSON.stringify({ token: 'mlt_' + 'a'.repeat(40), csr: '-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n', hostname: 'h' });
  const post = (body: Buffer, contentType: string): Promise<number> =>
    new Promise((resolve) => {
      const req = request(`${target.url}/v1/enroll`, { method: 'POST', agent, headers: { 'content-type': contentType, 'content-length': body.length } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', () => resolve(-1));
      req.end(body);
    });
  const jobs: Promise<void>[] = [];
  for (let i = 0; i < cases; i++) {
    const r = m.rnd();
    let body: Buffer;
    if (r < 0.3) body = Buffer.from(m.bytes(m.int(300)));
    else if (r < 0.6) body = Buffer.from(JSON.stringify(m.value()) ?? 'null');
    else {
      const b = Buffer.from(valid);
      for (let f = 0; f < 1 + m.int(4); f++) b[m.int(b.length)] = m.int(256);
      body = b;
    }
    if (m.rnd() < 0.01) body = Buffer.alloc(70 * 1024, 0x41); // over the body cap
    jobs.push(
      post(body, m.rnd() < 0.9 ? 'application/json' : 'text/plain').then((status) => {
        report.enrollStatuses[String(status)] = (report.enrollStatuses[String(status)] ?? 0) + 1;
        if (status < 400 || status >= 500) report.failures.push(`enroll case ${i} answered ${status}`);
        report.enrollCases++;
      }),
    );
    if (jobs.length >= 16) await Promise.all(jobs.splice(0));
  }
  await Promise.all(jobs);
  agent.destroy();
}

export function emptyReport(): FuzzReport {
  return { decoderCases: 0, sessionCases: 0, liveCases: 0, liveReconnects: 0, enrollCases: 0, closeCodes: {}, enrollStatuses: {}, failures: [], victimAcks: 0, rssGrowthMiB: 0 };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { cases: { type: 'string', default: '100000' }, live: { type: 'string', default: '5000' }, enroll: { type: 'string', default: '2000' }, seed: { type: 'string', default: String(Date.now() % 1e9) } } });
  const seed = Number(values.seed);
  const report = emptyReport();
  let unhandled = 0;
  process.on('unhandledRejection', (e) => {
    unhandled++;
    report.failures.push(`unhandled rejection: ${String(e)}`);
  });
  process.on('uncaughtException', (e) => {
    unhandled++;
    report.failures.push(`uncaught exception: ${String(e)}`);
  });
  const t0 = performance.now();
  fuzzDecoder(Number(values.cases), seed, report);
  console.log(`decoder: ${report.decoderCases} messages through decoder+codec, ${report.sessionCases} through a server Session, ${Math.round(performance.now() - t0)} ms`);
  const target = await startLiveTarget(5);
  try {
    const t1 = performance.now();
    await fuzzLive(target, Number(values.live), seed, report);
    console.log(`live: ${report.liveCases} messages over ${report.liveReconnects} mTLS connections in ${Math.round(performance.now() - t1)} ms; close codes ${JSON.stringify(report.closeCodes)}; victim acks ${report.victimAcks}; RSS growth ${report.rssGrowthMiB} MiB`);
    const t2 = performance.now();
    await fuzzEnroll(target, Number(values.enroll), seed, report);
    console.log(`enroll: ${report.enrollCases} requests in ${Math.round(performance.now() - t2)} ms; statuses ${JSON.stringify(report.enrollStatuses)}`);
  } finally {
    await target.close();
  }
  const total = report.decoderCases + report.sessionCases + report.liveCases + report.enrollCases;
  for (const f of report.failures.slice(0, 20)) console.error(`FAIL ${f}`);
  console.log(JSON.stringify({ seed, totalCases: total, ...report, failures: report.failures.length, unhandled }));
  process.exitCode = report.failures.length === 0 && unhandled === 0 ? 0 : 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
