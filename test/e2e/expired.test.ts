import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentRunner } from '../../src/agent/connection.js';
import { createCsrPem, generateAgentKeyPair } from '../../src/agent/csr.js';
import { enroll } from '../../src/agent/enroll.js';
import { loadIdentity, saveRenewedCertificate } from '../../src/agent/identity.js';
import { AGENT_EXIT_CODES } from '../../src/agent/config.js';
import { parseServerConfig } from '../../src/server/config.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { createLogger } from '../../src/util/logger.js';

/**
 * An agent whose certificate expired while it was offline: within the server's renewal grace it
 * renews over POST /v1/renew and reconnects; beyond the grace it exits 79 and says how to re-enroll.
 * In-process server and runner, real TLS and SQLite.
 */
const quiet = createLogger({ name: 'test', level: 'silent' });
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(renewGraceMs: number): Promise<{ server: RunningServer; stateDir: string; nodeId: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'ml-expired-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const server = await startServer(
    parseServerConfig({ dataDir: join(dir, 'server'), listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048', renewGraceMs, logLevel: 'silent' }),
    { logger: quiet },
  );
  cleanups.push(() => server.close());
  const stateDir = join(dir, 'agent');
  const token = await createEnrollmentToken(server.store, { ttlMs: 60_000 });
  const { identity } = await enroll({ server: server.publicUrl, token: token.token, caPins: [server.caPin], stateDir, hostname: 'offline-host' });
  // Replace its certificate with one that expired an hour ago (as if the host was off for a month).
  const keys = await generateAgentKeyPair();
  const csr = createCsrPem(keys, { hostname: 'offline-host', sans: [] });
  const hourAgo = Date.now() - 3_600_000;
  const issued = await server.enrollment.issueNodeCertificate(identity.nodeId, csr, {
    validity: { notBefore: new Date(hourAgo - 86_400_000), notAfter: new Date(hourAgo) },
  });
  await saveRenewedCertificate(stateDir, keys.privateKeyPem, issued.certificate);
  expect((await loadIdentity(stateDir)).cert.notAfter.getTime()).toBeLessThan(Date.now());
  return { server, stateDir, nodeId: identity.nodeId };
}

describe('certificate expired while offline', () => {
  it('within the renewal grace: renews over HTTPS and reconnects', async () => {
    const { server, stateDir, nodeId } = await setup(7 * 86_400_000);
    const runner = new AgentRunner({ stateDir, logger: quiet, backoff: { baseMs: 50 } });
    const connected = new Promise<void>((r) => runner.once('connected', () => r()));
    const done = runner.run();
    await connected;
    expect(runner.identity!.cert.notAfter.getTime()).toBeGreaterThan(Date.now());
    expect(server.sessions!.isOnline(nodeId)).toBe(true);
    runner.stop();
    expect(await done).toBe(AGENT_EXIT_CODES.ok);
  });

  it('beyond the grace: exits with code 79 instead of retrying forever', async () => {
    const { stateDir } = await setup(60_000);
    const runner = new AgentRunner({ stateDir, logger: quiet, backoff: { baseMs: 50 } });
    expect(await runner.run()).toBe(AGENT_EXIT_CODES.certExpired);
  });
});
