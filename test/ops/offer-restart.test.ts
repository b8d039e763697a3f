import { generateKeyPairSync } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { AdminClient } from '../../src/admin-api/client.js';
import { setUpgrade } from '../../src/admin-api/routes.js';
import { rawEd25519PublicKeyOf } from '../../src/contract/ed25519.js';
import { releaseKeyText, signRelease } from '../../src/contract/release.js';
import { attachSession } from '../../src/net/ws-session.js';
import { createOpsFeature } from '../../src/server/ops/index.js';
import { dialConnect, enrollNode, startTestServer, tempDir, type TestServer } from '../server/helpers.js';

/**
 * The upgrade offer is kept in memory for the welcome (ops/upgrades.ts, UpgradeDistributor): a server
 * started on a store whose current bundle was set by an earlier run must load it and offer it in the
 * welcome, over real mTLS, to an agent on another build, and to no agent on that build.
 */

const sockets: WebSocket[] = [];
const cleanups: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const ws of sockets) ws.terminate();
  for (const c of cleanups.reverse()) await c();
});

describe('the upgrade offer after a server restart', () => {
  it('is loaded from the store and offered in the welcome; the bundle path is on the server’s public URL', async () => {
    const { privateKey } = generateKeyPairSync('ed25519');
    const raw = rawEd25519PublicKeyOf(privateKey);
    const releaseKeys = [releaseKeyText(raw)];
    const dir = await tempDir('ml-ops-offer-');
    cleanups.push(dir.cleanup);
    const start = (): Promise<TestServer> => startTestServer({ releaseKeys }, { dataDir: dir.path, features: [createOpsFeature()] });

    let ts = await start();
    const node = await enrollNode(ts, 'offer-host');
    const bundle = Buffer.from('#!/usr/bin/env node\n// meshlink-agent-bundle version=0.5.0\nsetInterval(() => {}, 1000);\n');
    const manifest = signRelease(bundle, privateKey, raw);
    await new AdminClient(ts.server.adminSocketPath, { actor: 't' }).call(setUpgrade, { percent: 100, allowDowngrade: false, manifest: JSON.stringify(manifest) }, { body: bundle });
    await ts.stop();

    ts = await start();
    cleanups.push(() => ts.stop());
    const hello = async (buildId: string) => {
      const outcome = await dialConnect(ts.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
      if (outcome.kind !== 'open') throw new Error(`could not connect: ${outcome.kind}`);
      sockets.push(outcome.ws);
      const welcome = await attachSession(outcome.ws, { role: 'agent' }).handshake({ agentVersion: '0.1.0', buildId });
      outcome.ws.terminate();
      return welcome;
    };
    const first = await hello('f'.repeat(64));
    expect(first.upgrade).toMatchObject({ version: '0.5.0', buildId: manifest.buildId, sha256: manifest.buildId, size: bundle.length, keyId: manifest.keyId });
    expect(Buffer.from(first.upgrade!.signature!).toString('base64')).toBe(manifest.signature);
    // Agents take only the path (agent/ops/upgrade.ts); the base may be the previous start's in a first offer.
    expect(new URL(first.upgrade!.url, 'https://x').pathname).toBe(`/v1/agent/bundle/${manifest.buildId}`);
    const later = await hello('e'.repeat(64));
    expect(later.upgrade?.url).toBe(`${ts.server.publicUrl}/v1/agent/bundle/${manifest.buildId}`);
    // The agent already on the offered build is not offered it.
    expect((await hello(manifest.buildId)).upgrade).toBeUndefined();
  }, 60_000);
});
