/**
 * Enrollment and connect benchmark (npm run bench:enroll).
 *
 * Starts `meshlink server start` as a child process (RSA-4096 CA, loopback, temp data dir) so the
 * server has its own process, pre-generates agent keys and CSRs (so key generation is not measured),
 * then per run:
 *   1. enrollments: N concurrent POST /v1/enroll, each on a new TLS connection → enrollPerSec;
 *      meanwhile K WebSocket clients ping the server every 50 ms (ws ping/pong) → RTT p99 during the burst;
 *   2. connects: M full mTLS handshakes + WebSocket upgrades on /v1/connect, new connection each → handshakesPerSec.
 * The pingers (bench/enroll-pinger.ts, a worker thread) also time protocol heartbeat → heartbeat.ack.
 * Prints each run, then one JSON line with the medians of 3 runs, with the CPU time per enrollment
 * of the server process (from /proc, all its threads: the signatures run in libuv's pool) and of
 * this process (the load generator, with the pingers' worker thread).
 * Env: BENCH_ENROLLMENTS (200), BENCH_CONCURRENCY (32), BENCH_CONNECTS (200), BENCH_RUNS (3),
 * BENCH_CLI (the meshlink CLI the server is started with: another build's dist/src/cli/main.js, for an
 * A/B of two servers under the same load generator), BENCH_STORE (a postgres:// URL of a database the
 * bench may create databases from: the server then runs on a fresh PostgreSQL database, dropped after).
 *
 * The load generator shares the machine's two cores with the server, so its own cost per enrollment
 * lowers the rate measured. Each enrollment opens a new TLS connection (as each real agent does), but
 * all of them share one client TLS context holding the CA: a real agent builds that context once per
 * process, and building it for every request (`ca` on each https.request) was about 60 % of the
 * load generator's JavaScript time per enrollment request (node --cpu-prof).
 */
import { spawn } from 'node:child_process';
import { createPublicKey, generateKeyPair, sign, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request, type RequestOptions } from 'node:https';
import { createSecureContext, type SecureContext } from 'node:tls';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import forge from 'node-forge';
import { Worker } from 'node:worker_threads';
import WebSocket from 'ws';
import pg from 'pg';
import { AdminClient } from '../src/admin-api/client.js';
import { createToken } from '../src/admin-api/routes.js';

const N = Number(process.env.BENCH_ENROLLMENTS ?? 200);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const M = Number(process.env.BENCH_CONNECTS ?? 200);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const PINGERS = 4;
/** Distinct agent keys; reused round-robin (the server does not care, and keygen is slow on small VMs). */
const KEYS = Number(process.env.BENCH_KEYS ?? 40);
const PING_EVERY_MS = 50;

const CLI = process.env.BENCH_CLI ? resolve(process.env.BENCH_CLI) : resolve(dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');

function rsaKey(): Promise<KeyObject> {
  return new Promise((res, rej) => generateKeyPair('rsa', { modulusLength: 2048 }, (e, _p, k) => (e ? rej(e) : res(k))));
}

async function makeCsr(hostname: string): Promise<{ csrPem: string; keyPem: string }> {
  const key = await rsaKey();
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.publicKeyFromPem(createPublicKey(key).export({ type: 'spki', format: 'pem' }) as string);
  csr.setSubject([{ name: 'commonName', value: hostname }]);
  const pki = forge.pki as unknown as { getCertificationRequestInfo(c: forge.pki.CertificateSigningRequest): forge.asn1.Asn1 };
  const info = pki.getCertificationRequestInfo(csr);
  const der = Buffer.from(forge.asn1.toDer(info).getBytes(), 'binary');
  const c = csr as unknown as { signatureOid: string; signature: string; certificationRequestInfo: forge.asn1.Asn1 };
  c.signatureOid = forge.pki.oids.sha256WithRSAEncryption!;
  c.signature = sign('sha256', der, key).toString('binary');
  c.certificationRequestInfo = info;
  return { csrPem: forge.pki.certificationRequestToPem(csr), keyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string };
}

function post(url: string, secureContext: SecureContext, body: unknown): Promise<{ status: number; body: string }> {
  return new Promise((res, rej) => {
    const payload = JSON.stringify(body);
    // tls.connect takes `secureContext`; https.request passes it on, but its option type omits it.
    const options: RequestOptions & { secureContext: SecureContext } = { method: 'POST', secureContext, agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } };
    const req = request(url, options, (r) => {
      let b = '';
      r.on('data', (c: Buffer) => (b += c.toString()));
      r.on('end', () => res({ status: r.statusCode ?? 0, body: b }));
    });
    req.on('error', rej);
    req.end(payload);
  });
}

function getCa(url: string): Promise<string> {
  return new Promise((res, rej) => {
    request(`${url}/v1/ca`, { rejectUnauthorized: false, agent: false }, (r) => {
      let b = '';
      r.on('data', (c: Buffer) => (b += c.toString()));
      r.on('end', () => res(b));
    })
      .on('error', rej)
      .end();
  });
}

async function pool<T>(items: T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

function dial(url: string, tls: { ca: string; cert: string; key: string }): Promise<WebSocket> {
  return new Promise((res, rej) => {
    const ws = new WebSocket(`${url.replace('https:', 'wss:')}/v1/connect`, { ...tls, perMessageDeflate: false });
    ws.once('open', () => res(ws));
    ws.once('unexpected-response', (_q, r) => rej(new Error(`connect refused: ${r.statusCode}`)));
    ws.once('error', rej);
  });
}

/** utime+stime of a process from /proc (Linux), in ms; 0 elsewhere. */
async function serverCpuMs(pid: number): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // clock ticks, USER_HZ = 100
  } catch {
    return 0;
  }
}

const percentile = (xs: number[], p: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};
const median = (xs: number[]): number => percentile(xs, 50);
const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;

/** With BENCH_STORE: a fresh database for this run, and how to drop it. */
async function freshPostgresStore(adminUrl: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `meshlink_bench_${process.pid}_${Date.now()}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

async function main(): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'ml-bench-'));
  const nodeArgs = (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const pgStore = process.env.BENCH_STORE ? await freshPostgresStore(process.env.BENCH_STORE) : null;
  const storeArgs = pgStore ? ['--store', pgStore.url, '--key-file', `${dataDir}.key`] : [];
  const child = spawn(process.execPath, [...nodeArgs, CLI, 'server', 'start', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--ca-key', 'rsa4096', '--log-level', 'warn', ...storeArgs], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, MESHLINK_LOG_LEVEL: 'warn' },
  });
  const socketPath = join(dataDir, 'admin.sock');
  try {
    const t0 = Date.now();
    // The ready line is at info level, hidden at warn: poll the admin socket instead.
    let url = '';
    for (let i = 0; i < 600 && !url; i++) {
      await new Promise((r) => setTimeout(r, 100));
      if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
      try {
        url = /--server (\S+)/.exec((await new AdminClient(socketPath).call(createToken, { ttlMs: 60_000 })).enrollCommand)?.[1] ?? '';
      } catch {
        /* not up yet */
      }
    }
    if (!url) throw new Error('server did not come up');
    console.log(`server up at ${url} (RSA-4096 CA created) in ${Date.now() - t0} ms`);
    const ca = await getCa(url);
    const clientTls = createSecureContext({ ca });

    const tg = Date.now();
    const csrs: { csrPem: string; keyPem: string }[] = [];
    const keys: { csrPem: string; keyPem: string }[] = [];
    for (let i = 0; i < KEYS; i += 8) {
      keys.push(...(await Promise.all(Array.from({ length: Math.min(8, KEYS - i) }, (_, j) => makeCsr(`bench-${i + j}`)))));
    }
    for (let i = 0; i < N + PINGERS; i++) csrs.push(keys[i % keys.length]!);
    console.log(`pre-generated ${keys.length} RSA-2048 keys + CSRs in ${Date.now() - tg} ms (not measured)`);
    const token = async () => (await new AdminClient(socketPath).call(createToken, { ttlMs: 600_000 })).token;

    // Long-lived agent connections pinging every 50 ms, in a worker thread (own event loop).
    const pingerClients: { certPem: string; keyPem: string }[] = [];
    for (let i = 0; i < PINGERS; i++) {
      const c = csrs[N + i]!;
      const r = await post(`${url}/v1/enroll`, clientTls, { token: await token(), csr: c.csrPem });
      pingerClients.push({ certPem: (JSON.parse(r.body) as { certificate: string }).certificate, keyPem: c.keyPem });
    }
    const pinger = new Worker(new URL('./enroll-pinger.js', import.meta.url), {
      workerData: { url, ca, clients: pingerClients, everyMs: PING_EVERY_MS },
    });
    type PingerMessage = { type: string; ping?: number[]; heartbeat?: number[] };
    const fromPinger = (type: string) => new Promise<PingerMessage>((r) => {
      const on = (m: PingerMessage) => {
        if (m.type === type) {
          pinger.off('message', on);
          r(m);
        }
      };
      pinger.on('message', on);
    });
    await fromPinger('ready');

    const results: { enrollPerSec: number; handshakesPerSec: number; p99: number; heartbeatP99: number; serverCpuMs: number; loadCpuMs: number }[] = [];
    for (let run = 1; run <= RUNS; run++) {
      const tokens: string[] = [];
      for (let i = 0; i < N; i++) tokens.push(await token());

      pinger.postMessage({ type: 'start' });
      const cpu0 = { bench: process.cpuUsage(), server: await serverCpuMs(child.pid!) };
      let failures = 0;
      const issued: { certPem: string; keyPem: string }[] = [];
      const te = performance.now();
      await pool(tokens.map((t, i) => ({ t, c: csrs[i]! })), CONCURRENCY, async ({ t, c }) => {
        const r = await post(`${url}/v1/enroll`, clientTls, { token: t, csr: c.csrPem });
        if (r.status !== 200) failures++;
        else issued.push({ certPem: (JSON.parse(r.body) as { certificate: string }).certificate, keyPem: c.keyPem });
      });
      const enrollSec = (performance.now() - te) / 1000;
      const benchCpu = process.cpuUsage(cpu0.bench);
      const serverCpu = (await serverCpuMs(child.pid!)) - cpu0.server;
      console.log(`  enroll phase CPU: server ${round(serverCpu)} ms, load generator ${round((benchCpu.user + benchCpu.system) / 1000)} ms, wall ${round(enrollSec * 1000)} ms`);
      const stopped = fromPinger('rtts');
      pinger.postMessage({ type: 'stop' });
      const measured = await stopped;
      const rtts = measured.ping ?? [];
      const beats = measured.heartbeat ?? [];
      if (failures > 0) throw new Error(`${failures} enrollments failed`);

      const targets = Array.from({ length: M }, (_, i) => issued[i % issued.length]!);
      const cpu1 = { bench: process.cpuUsage(), server: await serverCpuMs(child.pid!) };
      const th = performance.now();
      await pool(targets, 16, async (t) => {
        const ws = await dial(url, { ca, cert: t.certPem, key: t.keyPem });
        ws.terminate();
      });
      const handshakeSec = (performance.now() - th) / 1000;
      const benchCpu1 = process.cpuUsage(cpu1.bench);
      console.log(`  connect phase CPU: server ${round((await serverCpuMs(child.pid!)) - cpu1.server)} ms, load generator ${round((benchCpu1.user + benchCpu1.system) / 1000)} ms, wall ${round(handshakeSec * 1000)} ms`);

      const r = {
        enrollPerSec: N / enrollSec,
        handshakesPerSec: M / handshakeSec,
        p99: percentile(rtts, 99),
        heartbeatP99: percentile(beats, 99),
        // CPU per enrollment moves much less with the machine's load than the rate does.
        serverCpuMs: serverCpu / N,
        loadCpuMs: (benchCpu.user + benchCpu.system) / 1000 / N,
      };
      results.push(r);
      console.log(
        `run ${run}: ${N} enrollments (concurrency ${CONCURRENCY}) in ${round(enrollSec, 2)} s = ${round(r.enrollPerSec)}/s; ` +
          `${M} mTLS connects in ${round(handshakeSec, 2)} s = ${round(r.handshakesPerSec)}/s; ` +
          `during the burst: ws ping RTT p50 ${round(percentile(rtts, 50), 2)} ms p99 ${round(r.p99, 2)} ms (${rtts.length} samples), ` +
          `protocol heartbeat→ack p50 ${round(percentile(beats, 50), 2)} ms p99 ${round(r.heartbeatP99, 2)} ms (${beats.length} samples)`,
      );
    }
    pinger.postMessage({ type: 'close' });
    await new Promise((r) => pinger.once('exit', r));
    console.log(
      JSON.stringify({
        enrollPerSec: round(median(results.map((r) => r.enrollPerSec))),
        serverCpuMsPerEnrollment: round(median(results.map((r) => r.serverCpuMs)), 2),
        loadGeneratorCpuMsPerEnrollment: round(median(results.map((r) => r.loadCpuMs)), 2),
        handshakesPerSec: round(median(results.map((r) => r.handshakesPerSec))),
        heartbeatLatencyDuringBurstP99Ms: round(median(results.map((r) => r.p99)), 2),
        protocolHeartbeatAckDuringBurstP99Ms: round(median(results.map((r) => r.heartbeatP99)), 2),
      }),
    );
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    await rm(dataDir, { recursive: true, force: true });
    await rm(`${dataDir}.key`, { force: true });
    await pgStore?.drop();
  }
}

await main();
