/**
 * Mesh fan-out benchmark (npm run bench:fanout).
 *
 * One server (in this process, mesh feature only, RSA-2048 CA, loopback) and BENCH_AGENTS (1,000) real
 * agents in BENCH_WORKERS (4) child processes: each agent enrolled over /v1/enroll and connected over
 * mTLS WebSocket with the real protocol and the real mesh agent (Ed25519 verification, ordered dispatch).
 * Policy before: {"rules": []} (nobody peers). Then one `POST /v1/mesh/policy` on the admin socket (what
 * `meshlink server policy set` does) with {"rules":[{"from":"hub","to":"member"}]}: every agent is
 * affected (the hub gains 999 peers, each member gains the hub), so each gets policy_updated + peer_added.
 * Latency per agent = time its policy_updated was verified and applied − time the admin request was sent.
 * Prints p50/p99/max; the last line is one JSON object.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdminClient } from '../src/admin-api/client.js';
import { setPolicy } from '../src/admin-api/routes.js';
import { parseServerConfig } from '../src/server/config.js';
import { createMeshFeature } from '../src/server/mesh/index.js';
import { createTaggedToken } from '../src/server/mesh/operator.js';
import { startServer } from '../src/server/server.js';
import { createLogger } from '../src/util/logger.js';
import { percentile, round } from './lib/stats.js';

const AGENTS = Number(process.env.BENCH_AGENTS ?? 1000);
const WORKERS = Number(process.env.BENCH_WORKERS ?? 4);
const here = dirname(fileURLToPath(import.meta.url));

function waitFor<T>(child: ChildProcess, kind: string, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`worker: no "${kind}" within ${timeoutMs} ms`)), timeoutMs);
    const on = (m: { kind: string; message?: string }): void => {
      if (m.kind === 'error') {
        clearTimeout(timer);
        child.off('message', on);
        reject(new Error(`worker failed: ${m.message}`));
      } else if (m.kind === kind) {
        clearTimeout(timer);
        child.off('message', on);
        resolve(m as T);
      }
    };
    child.on('message', on);
  });
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'meshlink-bench-fanout-'));
  const workers: ChildProcess[] = [];
  const config = parseServerConfig({ dataDir: join(dir, 'server'), listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048', logLevel: 'silent', enrollFailuresPerMinute: 100_000 });
  const server = await startServer(config, { logger: createLogger({ name: 'bench', level: 'silent' }), features: [createMeshFeature()] });
  try {
    await new AdminClient(server.adminSocketPath).call(setPolicy, { policy: { rules: [] } });
    const tokens: Array<{ hostname: string; token: string }> = [];
    for (let i = 0; i < AGENTS; i++) {
      tokens.push({ hostname: `bench-${i}`, token: (await createTaggedToken(server.store, { ttlMs: 3_600_000, nodeId: null, tags: [i === 0 ? 'hub' : 'member'] })).token });
    }
    const started = Date.now();
    for (let w = 0; w < WORKERS; w++) {
      const child = fork(join(here, 'fanout-agents.js'), [], { execArgv: process.env.BENCH_PROF ? ['--cpu-prof', '--cpu-prof-interval', '250', '--cpu-prof-dir=/tmp/prof/w'] : [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      workers.push(child);
      child.send({ server: server.publicUrl, caPin: server.caPin, caPem: server.caCertPem, tokens: tokens.filter((_, i) => i % WORKERS === w), baseDir: join(dir, `w${w}`) });
    }
    await Promise.all(workers.map((c) => waitFor(c, 'enrolled', 600_000)));
    console.log(`enrolled ${AGENTS} agents in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const ready = await Promise.all(workers.map((c) => waitFor<{ agents: number; withState: number }>(c, 'ready', 600_000)));
    console.log(`connected ${ready.reduce((s, r) => s + r.agents, 0)} agents (${ready.reduce((s, r) => s + r.withState, 0)} with their first snapshot) after ${((Date.now() - started) / 1000).toFixed(1)} s; server sessions: ${server.sessions!.sessionCount}`);
    await new Promise((r) => setTimeout(r, 2_000)); // let the connect burst settle

    const results = Promise.all(workers.map((c) => waitFor<{ at: number[] }>(c, 'policy', 60_000)));
    const cpu0 = process.cpuUsage();
    const t0 = Date.now();
    const res = await new AdminClient(server.adminSocketPath).call(setPolicy, { policy: { rules: [{ from: 'hub', to: 'member' }] } });
    const adminMs = Date.now() - t0;
    // The server's CPU (this process: the agents run in the workers) until the request was answered,
    // which moves much less with the machine's load than the latencies do.
    const cpu = process.cpuUsage(cpu0);
    const serverCpuMs = Math.round((cpu.user + cpu.system) / 1000);
    const latencies = (await results).flatMap((r) => r.at).map((at) => at - t0);
    const p50 = percentile(latencies, 50);
    const p99 = percentile(latencies, 99);
    const max = Math.max(...latencies);
    console.log(`policy change: ${res.affectedNodes.length} nodes affected; admin request answered after ${adminMs} ms (recompute, PSKs, sign, persist, send), server CPU ${serverCpuMs} ms`);
    console.log(`delivery (policy_updated verified and applied) to ${latencies.length} agents: p50 ${p50} ms, p99 ${p99} ms, max ${max} ms`);
    console.log(JSON.stringify({ agents: latencies.length, affected: res.affectedNodes.length, fanoutP50Ms: round(p50, 1), fanoutP99Ms: round(p99, 1), fanoutMaxMs: round(max, 1), adminRequestMs: adminMs, serverCpuMs, workers: WORKERS }));
  } finally {
    for (const w of workers) w.send({ kind: 'stop' });
    await Promise.all(workers.map((w) => new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)))));
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
