/**
 * npm run bench:tunnel — port-forward tunnels (docs/OPERATIONS.md, "Tunnels") through real
 * processes on loopback: a server, an agent (`agent run --allow-tunnel`) and `meshlink server tunnel`,
 * each its own Node process; the targets and the clients live in this process.
 *
 * 1. Throughput, interleaved round by round: SIZE bytes from a target, read by a client
 *    (a) through the tunnel (client → CLI → admin socket → server → mTLS WebSocket → agent → target),
 *    (b) over a direct loopback TCP connection to the same target, and
 *    (c) `cp` of a file of the same size (page cache warm). Medians; the resident memory (VmRSS) of
 *    the three meshlink processes is sampled every 50 ms during the tunnel rounds (after a warm-up
 *    transfer, whose RSS is the base).
 * 2. Latency: small request/response (64 bytes each way) round trips on one tunnel connection, idle and
 *    while a second tunnel connection (through the same CLI, server and agent) moves bulk data as fast
 *    as it can; the same on direct loopback for reference. p50/p99 per phase.
 *
 * Options (env): ROUNDS (5), MB (256), LATENCY_SECONDS (4). Last line: one JSON object of the medians.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { rssMb, waitForOutput } from './lib/child.js';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, unlink } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { median, percentile, round } from './lib/stats.js';
import { freePort } from './lib/free-port.js';

const MIB = 1024 * 1024;
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const SIZE = Number(process.env.MB ?? 256) * MIB;
const LATENCY_SECONDS = Number(process.env.LATENCY_SECONDS ?? 4);
const CLI = resolve('dist/src/cli/main.js');
const run = promisify(execFile);
const BLOCK = randomBytes(MIB);

function listen(handler: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
    s.on('error', () => {});
    handler(s);
  });
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r({ server, port: (server.address() as AddressInfo).port })));
}

/** Writes `bytes` (Infinity: until the peer goes away) with backpressure, then FIN. */
function source(s: Socket, bytes: number): void {
  let sent = 0;
  const pump = (): void => {
    while (sent < bytes && !s.destroyed) {
      const n = Math.min(MIB, bytes - sent);
      sent += n;
      if (!s.write(n === MIB ? BLOCK : BLOCK.subarray(0, n))) {
        s.once('drain', pump);
        return;
      }
    }
    if (sent >= bytes) s.end();
  };
  pump();
}

/** Connects and reads until FIN; MB/s over the whole connection (open included). */
function download(port: number): Promise<number> {
  return new Promise((resolveRate, reject) => {
    const t = performance.now();
    let n = 0;
    const c = connect({ host: '127.0.0.1', port, noDelay: true });
    c.on('data', (d: Buffer) => (n += d.length));
    c.once('error', reject);
    c.once('end', () => {
      c.end();
      if (n !== SIZE) reject(new Error(`got ${n} of ${SIZE} bytes`));
      else resolveRate(n / MIB / ((performance.now() - t) / 1000));
    });
  });
}

async function cpRate(src: string, dst: string): Promise<number> {
  const t = performance.now();
  await run('cp', [src, dst]);
  const rate = SIZE / MIB / ((performance.now() - t) / 1000);
  await unlink(dst);
  return rate;
}

/** 64-byte request/response round trips on one connection for `seconds`; milliseconds each. */
async function pingPong(port: number, seconds: number): Promise<number[]> {
  const c = connect({ host: '127.0.0.1', port, noDelay: true });
  await new Promise((r) => c.once('connect', r));
  const req = Buffer.alloc(64, 1);
  const samples: number[] = [];
  const until = performance.now() + seconds * 1000;
  let pending = 0;
  let wake: (() => void) | null = null;
  c.on('data', (d: Buffer) => {
    pending -= d.length;
    if (pending <= 0 && wake) wake();
  });
  while (performance.now() < until) {
    const t = performance.now();
    pending = 64;
    await new Promise<void>((r) => {
      wake = r;
      c.write(req);
    });
    samples.push(performance.now() - t);
  }
  c.destroy();
  return samples;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ml-bench-tunnel-'));
  const children: ChildProcess[] = [];
  const spawnCli = (args: string[]): ChildProcess => {
    const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(c);
    return c;
  };
  try {
    const bulk = await listen((s) => source(s, SIZE));
    const endless = await listen((s) => source(s, Infinity));
    const echo = await listen((s) => s.on('data', (d: Buffer) => s.write(d)));

    const port = await freePort();
    const srvDir = join(dir, 'srv');
    const srv = spawnCli(['server', 'start', '--data-dir', srvDir, '--listen', `127.0.0.1:${port}`, '--ca-key', 'rsa2048', '--log-level', 'info']);
    await waitForOutput(srv, /"msg":"server ready"/);
    const tok = JSON.parse((await run(process.execPath, [CLI, 'server', 'token', 'create', '--data-dir', srvDir, '--json'])).stdout) as { token: string; caPin: string };
    const stateDir = join(dir, 'agent');
    await run(process.execPath, [CLI, 'agent', 'enroll', '--server', `https://127.0.0.1:${port}`, '--token', tok.token, '--ca-pin', tok.caPin, '--state-dir', stateDir, '--hostname', 'bench-tunnel', '--json']);
    const allow = [bulk.port, endless.port, echo.port].map((p) => `127.0.0.1:${p}`).join(',');
    const agent = spawnCli(['agent', 'run', '--state-dir', stateDir, '--allow-tunnel', allow, '--log-level', 'info']);
    await waitForOutput(agent, /"msg":"connected"/);
    const tunnel = async (target: number): Promise<{ child: ChildProcess; port: number }> => {
      const child = spawnCli(['server', 'tunnel', `bench-tunnel:${target}`, '--data-dir', srvDir, '--json']);
      const line = await waitForOutput(child, /\{"listen".*\}/);
      return { child, port: (JSON.parse(line) as { port: number }).port };
    };
    const tBulk = await tunnel(bulk.port);
    const tEndless = await tunnel(endless.port);
    const tEcho = await tunnel(echo.port);

    // ------------------------------------------------------------------ 1: throughput
    const src = join(dir, 'file.bin');
    const fh = await open(src, 'w');
    for (let done = 0; done < SIZE; done += MIB) await fh.write(BLOCK, 0, Math.min(MIB, SIZE - done));
    await fh.close();
    await cpRate(src, join(dir, 'warm.bin')); // page cache warm for every round alike
    await download(tBulk.port); // warm-up: JIT, window growth
    const rates = { tunnel: [] as number[], direct: [] as number[], cp: [] as number[] };
    const [s0, a0, c0] = await Promise.all([rssMb(srv.pid!), rssMb(agent.pid!), rssMb(tBulk.child.pid!)]);
    const base = { server: s0, agent: a0, cli: c0 };
    const peak = { ...base };
    for (let r = 0; r < ROUNDS; r++) {
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const [s, a, c] = await Promise.all([rssMb(srv.pid!), rssMb(agent.pid!), rssMb(tBulk.child.pid!)]);
          peak.server = Math.max(peak.server, s);
          peak.agent = Math.max(peak.agent, a);
          peak.cli = Math.max(peak.cli, c);
          await new Promise((w) => setTimeout(w, 50));
        }
      })();
      rates.tunnel.push(await download(tBulk.port));
      sampling = false;
      await sampler;
      rates.direct.push(await download(bulk.port));
      rates.cp.push(await cpRate(src, join(dir, 'copy.bin')));
      process.stderr.write(`round ${r + 1}/${ROUNDS}: tunnel ${round(rates.tunnel.at(-1)!, 0)} MB/s, direct ${round(rates.direct.at(-1)!, 0)} MB/s, cp ${round(rates.cp.at(-1)!, 0)} MB/s\n`);
    }

    // ------------------------------------------------------------------ 2: latency
    const idleTunnel = await pingPong(tEcho.port, LATENCY_SECONDS);
    const idleDirect = await pingPong(echo.port, LATENCY_SECONDS);
    // Bulk on a second tunnel connection, read as fast as possible, during the measurement.
    let bulkBytes = 0;
    const load = connect({ host: '127.0.0.1', port: tEndless.port });
    load.on('data', (d: Buffer) => (bulkBytes += d.length));
    load.on('error', () => {});
    await new Promise((r) => load.once('data', r));
    const t0 = performance.now();
    const b0 = bulkBytes;
    const loadedTunnel = await pingPong(tEcho.port, LATENCY_SECONDS);
    const loadMBps = (bulkBytes - b0) / MIB / ((performance.now() - t0) / 1000);
    load.destroy();

    const ms = (v: number[], p: number): number => round(percentile(v, p), 3);
    const result = {
      sizeMB: SIZE / MIB,
      rounds: ROUNDS,
      tunnelMBps: round(median(rates.tunnel), 1),
      directMBps: round(median(rates.direct), 1),
      cpMBps: round(median(rates.cp), 1),
      tunnelVsDirect: round(median(rates.tunnel) / median(rates.direct), 3),
      /** Resident memory after the warm-up transfer, and its peak during the measured tunnel rounds. */
      rssMb: {
        server: { base: round(base.server, 0), peak: round(peak.server, 0) },
        agent: { base: round(base.agent, 0), peak: round(peak.agent, 0) },
        cli: { base: round(base.cli, 0), peak: round(peak.cli, 0) },
      },
      latencyMs: {
        directIdle: { n: idleDirect.length, p50: ms(idleDirect, 50), p99: ms(idleDirect, 99) },
        tunnelIdle: { n: idleTunnel.length, p50: ms(idleTunnel, 50), p99: ms(idleTunnel, 99) },
        tunnelUnderBulk: { n: loadedTunnel.length, p50: ms(loadedTunnel, 50), p99: ms(loadedTunnel, 99), bulkMBps: round(loadMBps, 1) },
      },
      node: process.version,
      loadavg: loadavg().map((l) => round(l, 2)),
    };
    process.stderr.write(`latency: direct p99 ${result.latencyMs.directIdle.p99} ms; tunnel idle p99 ${result.latencyMs.tunnelIdle.p99} ms; tunnel with bulk (${result.latencyMs.tunnelUnderBulk.bulkMBps} MB/s) p99 ${result.latencyMs.tunnelUnderBulk.p99} ms\n`);
    process.stdout.write(JSON.stringify(result) + '\n');
    for (const s of [bulk, endless, echo]) s.server.close();
  } finally {
    for (const c of children.reverse()) c.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
