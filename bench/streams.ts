/**
 * npm run bench:streams — operations over multiplexed streams (docs/OPERATIONS.md), over real wss
 * with mutual TLS on loopback.
 *
 * 1. Throughput, in one process (server + agents in-process, so both sides share one CPU budget
 *    alike): `cp` push and pull through the admin socket (hashing, disk, fsync included) against the
 *    raw mux stream (an agent that only sources or sinks bytes on a stream), interleaved round by round.
 * 2. Heartbeat round trip (agent → server → agent, 100 ms interval) idle and while 50 streams are busy
 *    moving data on the same connection; p50/p99.
 * 3. One big transfer with separate processes (server, agent, CLI) through the real CLI, push and pull,
 *    sampling each process's resident memory (/proc/<pid>/status VmRSS) to report the extra RSS.
 *
 * Options (env): ROUNDS (3), MB (per in-process transfer, 128), BIG_MB (the separate-process transfer,
 * 1024), LOAD_SECONDS (5). Last line: one JSON object with cpMBps and heartbeatP99MsUnderLoad.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { rssMb, waitForOutput } from './lib/child.js';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, unlink } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { AgentRunner } from '../src/agent/connection.js';
import { enroll } from '../src/agent/enroll.js';
import { openFeatureContext } from '../src/agent/feature.js';
import { opsAgentFeature } from '../src/agent/ops/index.js';
import { openAgentLog } from '../src/agent/state/log-file.js';
import type { MuxStream } from '../src/protocol/stream.js';
import { parseServerConfig } from '../src/server/config.js';
import { createEnrollmentToken } from '../src/server/nodes.js';
import { pullFile, pushFile } from '../src/admin-api/tunnel-client.js';
import { startServer, type RunningServer } from '../src/server/server.js';
import { createLogger } from '../src/util/logger.js';
import { median, percentile, round } from './lib/stats.js';
import { freePort } from './lib/free-port.js';

const MIB = 1024 * 1024;
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SIZE = Number(process.env.MB ?? 128) * MIB;
const BIG = Number(process.env.BIG_MB ?? 1024) * MIB;
const LOAD_SECONDS = Number(process.env.LOAD_SECONDS ?? 5);
const CLI = resolve('dist/src/cli/main.js');
const run = promisify(execFile);
const silent = createLogger({ name: 'bench', level: 'silent' });

async function fillFile(path: string, bytes: number): Promise<void> {
  const block = randomBytes(MIB);
  const fh = await open(path, 'w');
  try {
    for (let done = 0; done < bytes; done += MIB) await fh.write(block, 0, Math.min(MIB, bytes - done));
  } finally {
    await fh.close();
  }
}

async function enrolledRunner(server: RunningServer, url: string, dir: string, hostname: string): Promise<{ runner: AgentRunner; stateDir: string; nodeId: string }> {
  const stateDir = join(dir, hostname);
  const { token } = await createEnrollmentToken(server.store, { ttlMs: 60_000 });
  const { identity } = await enroll({ server: url, token, caPins: [server.caPin], stateDir, hostname });
  // 100 ms heartbeats for many samples; liveness is the default 3 × 15 s budget, not 3 × 100 ms, so a
  // loaded machine's event-loop stall cannot make the agent drop its connection mid-measurement.
  const runner = new AgentRunner({ stateDir, logger: silent, livenessIntervals: 450 });
  return { runner, stateDir, nodeId: identity.nodeId };
}

/** Raw stream source/sink on the agent: exec.open "source N" sends N bytes; file.open push is a sink. */
function attachRawHandlers(runner: AgentRunner): void {
  const chunk = Buffer.alloc(64 * 1024, 7);
  runner.onStream('exec.open', (stream, session) => {
    session.accept(stream);
    stream.resume();
    let left = Number((stream.meta as { args: string[] }).args[0]);
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, chunk.length);
        left -= n;
        if (!stream.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          stream.once('drain', pump);
          return;
        }
      }
      stream.end();
    };
    pump();
    stream.on('error', () => (left = 0));
  });
  runner.onStream('file.open', (stream, session) => {
    session.accept(stream);
    stream.resume();
    stream.on('end', () => stream.end());
  });
}

async function consume(stream: MuxStream, onBytes?: (n: number) => void): Promise<number> {
  let n = 0;
  for await (const c of stream) {
    n += (c as Buffer).length;
    onBytes?.((c as Buffer).length);
  }
  return n;
}

async function rawDown(server: RunningServer, nodeId: string, bytes: number): Promise<number> {
  const start = performance.now();
  const stream = await server.sessions!.current(nodeId)!.session.openStream('exec.open', { command: 'source', args: [String(bytes)] });
  stream.end();
  const got = await consume(stream);
  if (got !== bytes) throw new Error(`raw down got ${got}`);
  return bytes / MIB / ((performance.now() - start) / 1000);
}

async function rawUp(server: RunningServer, nodeId: string, bytes: number): Promise<number> {
  const start = performance.now();
  const stream = await server.sessions!.current(nodeId)!.session.openStream('file.open', { path: '/sink', direction: 'push' });
  const chunk = Buffer.alloc(64 * 1024, 9);
  const ended = new Promise<void>((r) => stream.on('end', () => r()).resume());
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    if (!stream.write(chunk)) await new Promise<void>((r) => stream.once('drain', () => r()));
  }
  stream.end();
  await ended;
  return bytes / MIB / ((performance.now() - start) / 1000);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ml-bench-streams-'));
  const load0 = loadavg()[0]!;
  try {
    // ------------------------------------------------------------- 1 + 2: in-process
    const server = await startServer(
      parseServerConfig({ dataDir: join(dir, 'srv'), listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048', logLevel: 'silent', heartbeatIntervalMs: 100, offlineAfterMs: 10_000 }),
      { logger: silent },
    );
    const url = `https://127.0.0.1:${server.address().port}`;
    const area = join(dir, 'area');
    await mkdir(area);
    const a = await enrolledRunner(server, url, dir, 'bench-ops');
    const aLog = openAgentLog(a.stateDir, 'warn', { stdout: false });
    const aCore = openFeatureContext(a.runner, { stateDir: a.stateDir, logger: aLog.logger, logFile: aLog.file });
    await opsAgentFeature(a.runner, { ...aCore.context, options: { transferDirs: [area] } });
    const b = await enrolledRunner(server, url, dir, 'bench-raw');
    attachRawHandlers(b.runner);
    const runs = [a.runner.run(), b.runner.run()];
    while (!server.sessions!.current(a.nodeId) || !server.sessions!.current(b.nodeId)) await new Promise((r) => setTimeout(r, 20));

    const src = join(dir, 'src.bin');
    await fillFile(src, SIZE);
    const perRound: Record<string, number[]> = { rawDownMBps: [], rawUpMBps: [], cpPushMBps: [], cpPullMBps: [] };
    for (let round_ = 0; round_ < ROUNDS; round_++) {
      perRound.rawDownMBps!.push(await rawDown(server, b.nodeId, SIZE));
      perRound.rawUpMBps!.push(await rawUp(server, b.nodeId, SIZE));
      let t = performance.now();
      await pushFile(server.adminSocketPath, { node: a.nodeId, actor: 'bench', local: src, remote: join(area, 'pushed.bin') });
      perRound.cpPushMBps!.push(SIZE / MIB / ((performance.now() - t) / 1000));
      t = performance.now();
      await pullFile(server.adminSocketPath, { node: a.nodeId, actor: 'bench', remote: join(area, 'pushed.bin'), local: join(dir, 'pulled.bin') });
      perRound.cpPullMBps!.push(SIZE / MIB / ((performance.now() - t) / 1000));
      await unlink(join(area, 'pushed.bin'));
      await unlink(join(dir, 'pulled.bin'));
      process.stderr.write(`round ${round_ + 1}: ${Object.entries(perRound).map(([k, v]) => `${k}=${round(v.at(-1)!, 1)}`).join(' ')}\n`);
    }
    const med = Object.fromEntries(Object.entries(perRound).map(([k, v]) => [k, round(median(v), 1)]));

    // Heartbeats of the raw agent: idle, then with 50 streams busy on its connection.
    const rtts: number[] = [];
    b.runner.on('heartbeat', (rtt: number) => rtts.push(rtt));
    await new Promise((r) => setTimeout(r, 2_000));
    const idle = rtts.splice(0);
    let moved = 0;
    let loading = true;
    const loadStart = performance.now();
    const busy = Array.from({ length: 50 }, async () => {
      while (loading) await consume(await server.sessions!.current(b.nodeId)!.session.openStream('exec.open', { command: 'source', args: [String(4 * MIB)] }).then((s) => (s.end(), s)), (n) => (moved += n));
    });
    await new Promise((r) => setTimeout(r, LOAD_SECONDS * 1000));
    const loaded = rtts.splice(0);
    const loadMBps = moved / MIB / ((performance.now() - loadStart) / 1000);
    loading = false;
    await Promise.all(busy);
    a.runner.stop();
    b.runner.stop();
    await Promise.all(runs);
    await server.close();
    process.stderr.write(`heartbeats: idle n=${idle.length} p99=${percentile(idle, 99)} ms; 50 busy streams n=${loaded.length} p99=${percentile(loaded, 99)} ms at ${round(loadMBps, 1)} MB/s aggregate\n`);

    // ------------------------------------------------------------- 3: separate processes, big transfer
    const port = await freePort();
    const srvDir = join(dir, 'srv-proc');
    const srv = spawn(process.execPath, [CLI, 'server', 'start', '--data-dir', srvDir, '--listen', `127.0.0.1:${port}`, '--ca-key', 'rsa2048', '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const big: Record<string, number> = {};
    let agent: ChildProcess | null = null;
    try {
      await waitForOutput(srv, /"msg":"server ready"/);
      const tok = JSON.parse((await run(process.execPath, [CLI, 'server', 'token', 'create', '--data-dir', srvDir, '--json'])).stdout) as { token: string; caPin: string };
      const stateDir = join(dir, 'agent-proc');
      await run(process.execPath, [CLI, 'agent', 'enroll', '--server', `https://127.0.0.1:${port}`, '--token', tok.token, '--ca-pin', tok.caPin, '--state-dir', stateDir, '--hostname', 'bench-big', '--json']);
      const bigArea = join(dir, 'big-area');
      await mkdir(bigArea);
      agent = spawn(process.execPath, [CLI, 'agent', 'run', '--state-dir', stateDir, '--transfer-dir', bigArea, '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'] });
      await waitForOutput(agent, /"msg":"connected"/);
      const bigSrc = join(dir, 'big.bin');
      await fillFile(bigSrc, BIG);
      for (const dirn of ['push', 'pull'] as const) {
        await new Promise((r) => setTimeout(r, 500));
        const base = { server: await rssMb(srv.pid!), agent: await rssMb(agent.pid!) };
        const peak = { ...base, cli: 0 };
        const args = dirn === 'push' ? [bigSrc, `bench-big:${join(bigArea, 'big.bin')}`] : [`bench-big:${join(bigArea, 'big.bin')}`, join(dir, 'big-back.bin')];
        const t = performance.now();
        const cp = spawn(process.execPath, [CLI, 'server', 'cp', ...args, '--data-dir', srvDir, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
        let cpOut = '';
        cp.stdout!.on('data', (c: Buffer) => (cpOut += c.toString()));
        cp.stderr!.on('data', (c: Buffer) => (cpOut += c.toString()));
        const sampler = setInterval(() => {
          void Promise.all([rssMb(srv.pid!), rssMb(agent!.pid!), rssMb(cp.pid!)]).then(([s, ag, c]) => {
            peak.server = Math.max(peak.server, s);
            peak.agent = Math.max(peak.agent, ag);
            peak.cli = Math.max(peak.cli, c);
          });
        }, 50);
        const code = await new Promise<number | null>((r) => cp.once('exit', r));
        clearInterval(sampler);
        if (code !== 0) throw new Error(`cp ${dirn} failed (${code}): ${cpOut}`);
        const secs = (performance.now() - t) / 1000;
        big[`big${dirn === 'push' ? 'Push' : 'Pull'}MBps`] = round(BIG / MIB / secs, 1);
        big[`${dirn}ServerExtraRssMB`] = round(peak.server - base.server, 1);
        big[`${dirn}AgentExtraRssMB`] = round(peak.agent - base.agent, 1);
        big[`${dirn}CliPeakRssMB`] = round(peak.cli, 1);
        process.stderr.write(`${BIG / MIB} MiB ${dirn}: ${round(BIG / MIB / secs, 1)} MB/s; server +${round(peak.server - base.server, 1)} MB, agent +${round(peak.agent - base.agent, 1)} MB, cli peak ${round(peak.cli, 1)} MB RSS\n`);
      }
    } finally {
      agent?.kill('SIGTERM');
      srv.kill('SIGTERM');
      await Promise.all([agent ? new Promise((r) => agent!.once('exit', r)) : null, new Promise((r) => srv.once('exit', r))]);
    }

    const cpMBps = round(Math.min(med.cpPushMBps!, med.cpPullMBps!), 1);
    const result = {
      cpMBps,
      heartbeatP99MsUnderLoad: percentile(loaded, 99),
      heartbeatP50MsUnderLoad: percentile(loaded, 50),
      heartbeatP99MsIdle: percentile(idle, 99),
      loadStreams: 50,
      loadMBps: round(loadMBps, 1),
      ...med,
      // Per round (the variants of a round ran back to back under the same load), then the median.
      cpVsRawUp: round(median(perRound.cpPushMBps!.map((v, i) => v / perRound.rawUpMBps![i]!)), 2),
      cpVsRawDown: round(median(perRound.cpPullMBps!.map((v, i) => v / perRound.rawDownMBps![i]!)), 2),
      mbPerTransfer: SIZE / MIB,
      rounds: ROUNDS,
      bigMB: BIG / MIB,
      ...big,
      loadavg: round(load0, 2),
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
