/**
 * Worker of bench/fanout.ts: enrolls its share of agents over the real /v1/enroll (one RSA key shared by
 * its agents, each with its own certificate: key generation is not what is measured), runs one real
 * AgentRunner per agent (mTLS WebSocket, protocol handshake, heartbeats) with the mesh feature
 * (signature verification, ordered dispatch; state files off), and reports when each agent applied the
 * policy_updated event.
 */
import { request } from 'node:https';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentRunner } from '../src/agent/connection.js';
import { createCsrPem, generateAgentKeyPair } from '../src/agent/csr.js';
import { saveEnrollment } from '../src/agent/identity.js';
import { meshAgentFeature, type MeshAgent } from '../src/agent/mesh/index.js';
import { createLogger } from '../src/util/logger.js';

interface Job {
  server: string;
  caPin: string;
  caPem: string;
  tokens: Array<{ token: string; hostname: string }>;
  baseDir: string;
}

const log = createLogger({ name: 'bench-agent', level: 'silent' });
const send = (m: unknown): void => void process.send!(m);

function post(url: string, caPem: string, body: unknown): Promise<{ status: number; json: Record<string, string> }> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = request(url, { method: 'POST', ca: caPem, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }, timeout: 60_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, string> }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

async function pool<T>(items: T[], concurrency: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  }));
}

process.once('message', (job: Job) => {
  void (async () => {
    const keys = await generateAgentKeyPair('rsa2048');
    const dirs: string[] = [];
    await pool(job.tokens, 8, async ({ token, hostname }, i) => {
      const stateDir = join(job.baseDir, hostname);
      await mkdir(stateDir, { recursive: true, mode: 0o700 });
      const res = await post(`${job.server}/v1/enroll`, job.caPem, { token, csr: createCsrPem(keys, { hostname, sans: [] }), hostname });
      if (res.status !== 200) throw new Error(`enroll ${hostname}: ${res.status} ${JSON.stringify(res.json)}`);
      await saveEnrollment(stateDir, {
        identity: { version: 1, nodeId: res.json.nodeId!, server: job.server, caPins: [job.caPin], hostname, sans: [], enrolledAt: new Date().toISOString() },
        keyPem: keys.privateKeyPem,
        certPem: res.json.certificate!,
        caPem: res.json.caCertificate!,
      });
      dirs[i] = stateDir;
    });
    send({ kind: 'enrolled', count: dirs.length });

    const runners: AgentRunner[] = [];
    const meshes: MeshAgent[] = [];
    const policyAt: number[] = [];
    let reported = false;
    const reportWhenDone = (): void => {
      if (!reported && policyAt.filter((t) => t > 0).length === dirs.length) {
        reported = true;
        send({ kind: 'policy', at: policyAt });
      }
    };
    await pool(dirs, 25, async (stateDir, i) => {
      const runner = new AgentRunner({ stateDir, logger: log });
      const mesh = await meshAgentFeature(runner, { stateDir, logger: log, options: { persist: false, reconcileIntervalMs: 3_600_000, endpoints: ['127.0.0.1:51820'] } });
      policyAt[i] = 0;
      mesh.onApplied = (e, receivedAt) => {
        if (e.type === 'policy_updated' && policyAt[i] === 0) {
          policyAt[i] = process.env.BENCH_RECEIVED ? receivedAt : Date.now();
          reportWhenDone();
        }
      };
      runners.push(runner);
      meshes.push(mesh);
      void runner.run();
      // Stagger the dials a little: the point is fan-out, not a handshake storm.
      await new Promise<void>((r) => {
        const check = (): void => (runner.state === 'connected' ? r() : void setTimeout(check, 20));
        check();
      });
    });
    // Ready when every agent applied its first snapshot (replayed after its first state.request).
    for (let i = 0; i < 3000 && meshes.some((m) => m.lastEventSeq < 1); i++) await new Promise((r) => setTimeout(r, 20));
    send({ kind: 'ready', agents: runners.length, withState: meshes.filter((m) => m.lastEventSeq >= 1).length });
    process.on('message', (m: { kind: string }) => {
      if (m.kind === 'stop') {
        for (const r of runners) r.stop();
        setTimeout(() => process.exit(0), 500);
      }
    });
  })().catch((err: unknown) => {
    send({ kind: 'error', message: err instanceof Error ? err.stack ?? err.message : String(err) });
    process.exit(1);
  });
});
