import { createHash } from 'node:crypto';
import { AdminClient } from '../../src/admin-api/client.js';
import { listAudit, setUpgrade, showUpgrade } from '../../src/admin-api/routes.js';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpsRequest, tempDir } from '../server/helpers.js';
import { startOpsPair, waitUntil, type OpsPair } from './helpers.js';

const sha = (b: string | Buffer): string => createHash('sha256').update(b).digest('hex');

interface UpgradeView {
  current: { buildId: string; percent: number } | null;
  nodes: Array<{ nodeId: string; buildId: string; state: string; message: string | null }>;
}

describe('agent self-upgrade over real mTLS (in-process agent, bundle file in a temp dir)', () => {
  let p: OpsPair;
  let dir: { path: string; cleanup(): Promise<void> };
  let bundle: string;
  let restarts = 0;
  const v1 = '// meshlink-agent-bundle version=1.0.0\nconsole.log("one");\n';
  const v2 = '// meshlink-agent-bundle version=2.0.0\nconsole.log("two");\n';

  beforeAll(async () => {
    dir = await tempDir('ml-ops-upgrade-');
    bundle = join(dir.path, 'meshlink-agent.mjs');
    await writeFile(bundle, v1, { mode: 0o755 });
    p = await startOpsPair({ bundlePath: bundle }, { restart: () => restarts++ });
  });
  afterAll(async () => {
    await p?.stop();
    await dir?.cleanup();
  });

  const status = (): Promise<UpgradeView> => new AdminClient(p.socket).call(showUpgrade, {});
  const nodeState = async (): Promise<string | undefined> => (await status()).nodes.find((n) => n.nodeId === p.nodeId)?.state;

  it('the agent reports its build identity (SHA-256 of its bundle) in hello', () => {
    expect(p.ops.buildId).toBe(sha(v1));
    expect(p.ts.server.sessions!.current(p.nodeId)!.hello.buildId).toBe(sha(v1));
  });

  it('the bundle endpoint requires a valid client certificate', async () => {
    const r = await httpsRequest(`${p.ts.url}/v1/agent/bundle/${'0'.repeat(64)}`, { ca: p.ts.server.caCertPem });
    expect(r.status).toBe(401);
  });

  it('percent 0 offers nothing', async () => {
    const r = await new AdminClient(p.socket, { actor: 't' }).call(setUpgrade, { percent: 0 }, { body: Buffer.from(v2) });
    expect(r).toMatchObject({ notified: 0, buildId: sha(v2), version: '2.0.0' });
    await new Promise((r2) => setTimeout(r2, 300));
    expect(restarts).toBe(0);
    expect(await readFile(bundle, 'utf8')).toBe(v1);
  });

  it('a bad checksum leaves the running bundle untouched and is reported failed', async () => {
    const v3 = v2 + '// three\n';
    const r = await new AdminClient(p.socket, { actor: 't' }).call(setUpgrade, { percent: 0 }, { body: Buffer.from(v3) });
    // Corrupt what the server will serve: the checksum in the offer still names the real build.
    await writeFile(join(p.ts.dataDir, 'ops', 'bundles', `${r.buildId}.mjs`), v3.replace('three', 'evil!'));
    // The offer the server sends (as on set or in welcome), with the control plane's checksum.
    p.ts.server.sessions!.current(p.nodeId)!.session.send('agent.upgrade', { version: '3.0.0', buildId: r.buildId, url: `${p.ts.url}/v1/agent/bundle/${r.buildId}`, sha256: r.buildId });
    await waitUntil('failed status', async () => (await nodeState()) === 'failed');
    const s = (await status()).nodes.find((n) => n.nodeId === p.nodeId)!;
    expect(s.message).toMatch(/checksum mismatch/);
    expect(await readFile(bundle, 'utf8')).toBe(v1);
    expect(restarts).toBe(0);
  });

  it('a failed download (unknown build on the server) leaves the bundle untouched and is reported failed', async () => {
    const bogus = 'f'.repeat(64);
    p.ts.server.sessions!.current(p.nodeId)!.session.send('agent.upgrade', { version: '4.0.0', buildId: bogus, url: `${p.ts.url}/v1/agent/bundle/${bogus}`, sha256: bogus });
    await waitUntil('failed status for the bogus build', async () => {
      const n = (await status()).nodes.find((x) => x.nodeId === p.nodeId);
      return n?.buildId === bogus && n.state === 'failed';
    });
    expect((await status()).nodes.find((n) => n.nodeId === p.nodeId)!.message).toMatch(/HTTP 404/);
    expect(await readFile(bundle, 'utf8')).toBe(v1);
    expect(restarts).toBe(0);
  });

  it('a newer build is downloaded over mTLS, verified, installed atomically with the previous kept, then the agent restarts', async () => {
    const r = await new AdminClient(p.socket, { actor: 't' }).call(setUpgrade, { percent: 100 }, { body: Buffer.from(v2) });
    expect(r.notified).toBe(1);
    await waitUntil('restart requested', () => restarts === 1);
    expect(await readFile(bundle, 'utf8')).toBe(v2);
    expect(await readFile(`${bundle}.previous`, 'utf8')).toBe(v1);
    expect(await nodeState()).toBe('applied');
  });

  it('an offer of the build it runs is ignored (build identity, never versions: no loop)', async () => {
    expect(await p.ops.upgrader!.offer({ version: '9.9.9', buildId: sha(v1), url: '/v1/agent/bundle/x', sha256: sha(v1) })).toBe('ignored');
  });

  it('upgrade operations are audited', async () => {
    const list = await new AdminClient(p.socket).call(listAudit, {});
    expect(list.filter((a) => a.operation === 'upgrade.set').length).toBeGreaterThanOrEqual(3);
    expect(list.some((a) => a.operation === 'agent.upgrade' && a.source === 'agent' && a.result === 'applied')).toBe(true);
    expect(list.some((a) => a.operation === 'agent.upgrade' && a.source === 'agent' && a.result === 'failed')).toBe(true);
  });
});
