import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentRunner } from '../../src/agent/connection.js';
import { enroll } from '../../src/agent/enroll.js';
import { parseServerConfig, type ServerConfigInput } from '../../src/server/config.js';
import type { ServerFeature } from '../../src/server/feature.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { createLogger, type Logger } from '../../src/util/logger.js';

/** In-process server + enrolled agents with short heartbeats, real TLS on loopback, temp dirs. */

export async function tempDir(prefix: string): Promise<{ path: string; cleanup(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  // A server on this dir as its data dir keeps its key file beside it (`<dir>.key`, src/server/key-file.ts).
  return { path, cleanup: async () => { await rm(path, { recursive: true, force: true }); await rm(`${path}.key`, { force: true }); } };
}

export const silent = (): Logger => createLogger({ name: 'test', level: 'silent' });

export async function startFaultServer(dataDir: string, overrides: Partial<ServerConfigInput> = {}, features: readonly ServerFeature[] = []): Promise<RunningServer> {
  const config = parseServerConfig({
    dataDir,
    listen: { host: '127.0.0.1', port: 0 },
    caKeyType: 'rsa2048',
    logLevel: 'silent',
    heartbeatIntervalMs: 200,
    offlineAfterMs: 1_000,
    enrollFailuresPerMinute: 100_000,
    ...overrides,
  });
  return startServer(config, { logger: silent(), passphrase: '', features });
}

/** Enrolls a fresh agent state dir against `server` (real /v1/enroll with a real token). */
export async function enrollAgent(server: RunningServer, stateDir: string, hostname: string, url = server.publicUrl): Promise<string> {
  const { token } = await createEnrollmentToken(server.store, { ttlMs: 60_000 });
  const r = await enroll({ server: url, token, caPins: [server.caPin], stateDir, hostname, timeoutMs: 20_000 }, { logger: silent() });
  return r.identity.nodeId;
}

export function waitFor<T>(what: string, probe: () => T | undefined | null | false | Promise<T | undefined | null | false>, timeoutMs = 15_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const tick = async (): Promise<void> => {
      try {
        const v = await probe();
        if (v) return resolve(v);
      } catch {
        /* retry */
      }
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(() => void tick(), everyMs);
    };
    void tick();
  });
}

export function runAgent(stateDir: string, logger = silent(), extra: Partial<ConstructorParameters<typeof AgentRunner>[0]> = {}): { runner: AgentRunner; done: Promise<number> } {
  const runner = new AgentRunner({ stateDir, logger, backoff: { baseMs: 50, maxMs: 500 }, ...extra });
  return { runner, done: runner.run() };
}
