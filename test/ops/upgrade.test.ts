import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/admin-api/client.js';
import { listAudit, setUpgrade, showUpgrade } from '../../src/admin-api/routes.js';
import { rawEd25519PublicKeyOf } from '../../src/contract/ed25519.js';
import { buildIdOf, releaseKeyText, signRelease, type ReleaseManifest } from '../../src/contract/release.js';
import { MeshlinkError } from '../../src/errors.js';
import { httpsRequest, tempDir } from '../server/helpers.js';
import { startOpsPair, waitUntil, type OpsPair } from './helpers.js';

/** A release key as `meshlink release keygen` makes one. */
function releaseKey() {
  const { privateKey } = generateKeyPairSync('ed25519');
  const raw = rawEd25519PublicKeyOf(privateKey);
  return { privateKey, raw, text: releaseKeyText(raw), sign: (b: Buffer): ReleaseManifest => signRelease(b, privateKey, raw) };
}

const header = (version: string): string => `#!/usr/bin/env node\n// meshlink-agent-bundle version=${version}\n`;
/** A bundle whose code does nothing the trial accepts: it stays up and never says it connected. */
const silent = (version: string): Buffer => Buffer.from(`${header(version)}setInterval(() => {}, 1000);\n`);
/**
 * A bundle that speaks the trial protocol as the real agent does once connected (upgrade-trial.ts):
 * it reports the build id of the file it runs from over the IPC channel, then waits to be stopped.
 */
const healthy = (version: string): Buffer =>
  Buffer.from(
    `${header(version)}import { createHash } from 'node:crypto';\nimport { readFileSync } from 'node:fs';\n` +
      `process.send({ type: 'meshlink.upgrade.trial', state: 'connected', buildId: createHash('sha256').update(readFileSync(process.argv[1])).digest('hex') });\n` +
      `process.on('SIGTERM', () => process.exit(0));\nsetInterval(() => {}, 1000);\n`,
  );
/** Starts a trial file with node alone (the test runner's own flags are not the agent's). */
const trialCommand = (file: string) => ({ command: process.execPath, args: [file] });

async function refusal(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof MeshlinkError) return err.code;
    throw err;
  }
  return 'accepted';
}

interface UpgradeView {
  current: { buildId: string; version: string; percent: number; allowDowngrade: boolean } | null;
  nodes: Array<{ nodeId: string; buildId: string; state: string; code: string | null; message: string | null }>;
}

describe('signed agent releases over real mTLS (in-process agent, bundle file in a temp dir, trial as a real child)', () => {
  const key = releaseKey();
  const stranger = releaseKey();
  let p: OpsPair;
  let dir: { path: string; cleanup(): Promise<void> };
  let bundle: string;
  let restarts = 0;
  // The running build: the package's version (0.1.0), as an agent bundle reports it.
  const v1 = silent('0.1.0');

  beforeAll(async () => {
    dir = await tempDir('ml-ops-upgrade-');
    bundle = join(dir.path, 'meshlink-agent.mjs');
    await writeFile(bundle, v1, { mode: 0o755 });
    p = await startOpsPair(
      { bundlePath: bundle, releaseKeys: [key.text], upgradeHealthTimeoutMs: 2_000 },
      { server: { releaseKeys: [key.text] }, restart: () => restarts++, trialCommand },
    );
  });
  afterAll(async () => {
    await p?.stop();
    await dir?.cleanup();
  });

  const admin = (): AdminClient => new AdminClient(p.socket, { actor: 't' });
  const set = (bytes: Buffer, manifest: ReleaseManifest | undefined, extra: { percent?: number; allowDowngrade?: boolean } = {}) =>
    admin().call(setUpgrade, { percent: extra.percent ?? 0, allowDowngrade: extra.allowDowngrade ?? false, ...(manifest ? { manifest: JSON.stringify(manifest) } : {}) }, { body: bytes });
  const status = (): Promise<UpgradeView> => admin().call(showUpgrade, {});
  const nodeStatus = async (buildId: string) => (await status()).nodes.find((n) => n.nodeId === p.nodeId && n.buildId === buildId);
  /** What the server would send, but with fields a test chooses (a fake or compromised control plane). */
  const offer = (m: { version: string; buildId: string; size: number }, extra: Record<string, unknown>) =>
    p.ts.server.sessions!.current(p.nodeId)!.session.send('agent.upgrade', { version: m.version, buildId: m.buildId, url: `${p.ts.url}/v1/agent/bundle/${m.buildId}`, sha256: m.buildId, size: m.size, ...extra });

  it('the agent reports its build identity (SHA-256 of its bundle) in hello', () => {
    expect(p.ops.buildId).toBe(buildIdOf(v1));
    expect(p.ts.server.sessions!.current(p.nodeId)!.hello.buildId).toBe(buildIdOf(v1));
  });

  it('the bundle endpoint requires a valid client certificate', async () => {
    const r = await httpsRequest(`${p.ts.url}/v1/agent/bundle/${'0'.repeat(64)}`, { ca: p.ts.server.caCertPem });
    expect(r.status).toBe(401);
  });

  it('upgrade set refuses what is not a bundle, an unsigned bundle and one signed by another key; nothing is stored', async () => {
    const b = silent('0.2.0');
    expect(await refusal(set(Buffer.from('hello\n'), undefined))).toBe('ML_ERR_UPGRADE_NOT_BUNDLE');
    expect(await refusal(set(b, undefined))).toBe('ML_ERR_UPGRADE_UNSIGNED');
    expect(await refusal(set(b, stranger.sign(b)))).toBe('ML_ERR_UPGRADE_SIGNATURE');
    // A signature file of another bundle does not carry over.
    expect(await refusal(set(b, key.sign(silent('0.2.1'))))).toBe('ML_ERR_UPGRADE_BUILD_ID');
    expect((await status()).current).toBeNull();
    expect(existsSync(join(p.ts.dataDir, 'ops', 'bundles')) ? await readdir(join(p.ts.dataDir, 'ops', 'bundles')) : []).toEqual([]);
  });

  it('upgrade set refuses a lower version than the current offer unless forced', async () => {
    const newer = silent('0.3.0');
    const older = silent('0.2.5');
    expect(await set(newer, key.sign(newer))).toMatchObject({ buildId: buildIdOf(newer), version: '0.3.0', notified: 0 });
    expect(await refusal(set(older, key.sign(older)))).toBe('ML_ERR_UPGRADE_DOWNGRADE');
    expect((await status()).current).toMatchObject({ version: '0.3.0' });
    expect(await set(older, key.sign(older), { allowDowngrade: true })).toMatchObject({ version: '0.2.5', allowDowngrade: true });
    expect((await status()).current).toMatchObject({ version: '0.2.5', allowDowngrade: true, percent: 0 });
    expect(restarts).toBe(0);
  });

  it('the agent refuses a build id that is not 64 hex digits (a path) before touching any file', async () => {
    const before = await readdir(dir.path);
    expect(await p.ops.upgrader!.offer({ version: '9.0.0', buildId: '/../../../zz', url: '/v1/agent/bundle/x', sha256: 'a'.repeat(64) })).toBe('failed');
    expect(p.ops.upgrader!.lastFailure).toMatchObject({ code: 'ML_ERR_UPGRADE_BUILD_ID' });
    expect(await readdir(dir.path)).toEqual(before);
    expect(existsSync(join(dir.path, '..', '..', '..', 'zz'))).toBe(false);
  });

  it('the agent refuses an unsigned offer, one signed by a key it does not pin, and a downgrade, each with its code', async () => {
    const b = silent('0.4.0');
    const m = key.sign(b);
    await set(b, m); // stored on the server, so that a download would succeed
    offer(m, {});
    await waitUntil('unsigned refused', async () => (await nodeStatus(m.buildId))?.state === 'failed');
    expect(await nodeStatus(m.buildId)).toMatchObject({ code: 'ML_ERR_UPGRADE_UNSIGNED' });

    const b2 = silent('0.4.1');
    const m2 = stranger.sign(b2);
    offer(m2, { keyId: m2.keyId, signature: Buffer.from(m2.signature, 'base64') });
    await waitUntil('wrong key refused', async () => (await nodeStatus(m2.buildId))?.state === 'failed');
    expect(await nodeStatus(m2.buildId)).toMatchObject({ code: 'ML_ERR_UPGRADE_SIGNATURE' });

    const old = silent('0.0.9');
    const m3 = key.sign(old);
    offer(m3, { keyId: m3.keyId, signature: Buffer.from(m3.signature, 'base64') });
    await waitUntil('downgrade refused', async () => (await nodeStatus(m3.buildId))?.state === 'failed');
    expect(await nodeStatus(m3.buildId)).toMatchObject({ code: 'ML_ERR_UPGRADE_DOWNGRADE' });

    expect(await readFile(bundle)).toEqual(v1);
    expect(restarts).toBe(0);
  });

  it('a signed build that never connects fails its trial: killed at the health deadline, the running bundle stays, the outcome is recorded', async () => {
    const b = silent('0.5.0');
    const r = await set(b, key.sign(b), { percent: 100 });
    expect(r.notified).toBe(1);
    await waitUntil('restart after the trial', () => restarts === 1, 30_000);
    expect(await readFile(bundle)).toEqual(v1);
    expect(existsSync(`${bundle}.previous`)).toBe(false);
    // No download or trial file left behind.
    expect((await readdir(dir.path)).sort()).toEqual(['meshlink-agent.mjs']);
    const record = JSON.parse(await readFile(join(p.stateDir, 'upgrade.json'), 'utf8')) as Record<string, unknown>;
    expect(record).toMatchObject({ buildId: r.buildId, state: 'failed', code: 'ML_ERR_UPGRADE_HEALTH', reported: false });
    expect(String(record.message)).toMatch(/did not connect within 2 s/);
    expect(p.runner.state).toBe('stopped');
  });

  it('refusals are audited as the agent reported them', async () => {
    const list = await admin().call(listAudit, {});
    expect(list.some((a) => a.operation === 'agent.upgrade' && a.source === 'agent' && a.result === 'failed' && JSON.stringify(a.details).includes('ML_ERR_UPGRADE_SIGNATURE'))).toBe(true);
  });
});

describe('a signed build that connects on trial is installed, the previous kept', () => {
  const key = releaseKey();
  let p: OpsPair;
  let dir: { path: string; cleanup(): Promise<void> };
  let restarts = 0;
  afterAll(async () => {
    await p?.stop();
    await dir?.cleanup();
  });

  it('passes the trial, replaces the bundle atomically and records "applied" for the next build to report', async () => {
    dir = await tempDir('ml-ops-upgrade-ok-');
    const bundle = join(dir.path, 'meshlink-agent.mjs');
    const v1 = silent('0.1.0');
    await writeFile(bundle, v1, { mode: 0o755 });
    p = await startOpsPair({ bundlePath: bundle, releaseKeys: [key.text] }, { server: { releaseKeys: [key.text] }, restart: () => restarts++, trialCommand });
    const v2 = healthy('0.6.0');
    const r = await new AdminClient(p.socket, { actor: 't' }).call(setUpgrade, { percent: 100, manifest: JSON.stringify(key.sign(v2)) }, { body: v2 });
    expect(r.notified).toBe(1);
    await waitUntil('restart after the trial', () => restarts === 1, 30_000);
    expect(await readFile(bundle)).toEqual(v2);
    expect(await readFile(`${bundle}.previous`)).toEqual(v1);
    expect(JSON.parse(await readFile(join(p.stateDir, 'upgrade.json'), 'utf8'))).toMatchObject({ buildId: buildIdOf(v2), state: 'applied', reported: false });
  });
});

describe('an agent that pins no release key', () => {
  let p: OpsPair;
  let dir: { path: string; cleanup(): Promise<void> };
  afterAll(async () => {
    await p?.stop();
    await dir?.cleanup();
  });

  it('refuses every upgrade with ML_ERR_UPGRADE_NO_RELEASE_KEY', async () => {
    const key = releaseKey();
    dir = await tempDir('ml-ops-upgrade-nokey-');
    const bundle = join(dir.path, 'meshlink-agent.mjs');
    await writeFile(bundle, silent('0.1.0'), { mode: 0o755 });
    p = await startOpsPair({ bundlePath: bundle }, { server: { releaseKeys: [key.text] }, trialCommand });
    const b = healthy('0.7.0');
    const r = await new AdminClient(p.socket, { actor: 't' }).call(setUpgrade, { percent: 100, manifest: JSON.stringify(key.sign(b)) }, { body: b });
    await waitUntil('refused', async () => (await new AdminClient(p.socket).call(showUpgrade, {})).nodes.some((n) => n.buildId === r.buildId && n.state === 'failed'));
    expect((await new AdminClient(p.socket).call(showUpgrade, {})).nodes.find((n) => n.buildId === r.buildId)).toMatchObject({ code: 'ML_ERR_UPGRADE_NO_RELEASE_KEY' });
    expect(await readFile(bundle, 'utf8')).toContain('version=0.1.0');
  });
});
