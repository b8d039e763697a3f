import { generateKeyPairSync, sign } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentRunner } from '../../src/agent/connection.js';
import { enroll } from '../../src/agent/enroll.js';
import { meshAgentFeature, type MeshAgent } from '../../src/agent/mesh/index.js';
import { encodeEnvelope, type Envelope } from '../../src/contract/mesh-events.js';
import { createMeshFeature } from '../../src/server/mesh/index.js';
import { createTaggedToken } from '../../src/server/mesh/operator.js';
import type { MeshService } from '../../src/server/mesh/service.js';
import { removeNode } from '../../src/server/nodes.js';
import { startTestServer, tempDir, type TestServer } from '../server/helpers.js';
import { waitFor } from '../e2e/harness.js';
import { silent } from './helpers.js';
import { pino } from 'pino';
const debugLines: string[] = [];

interface TestAgent {
  name: string;
  nodeId: string;
  stateDir: string;
  runner: AgentRunner;
  mesh: MeshAgent;
  applied: Envelope[];
  done: Promise<number>;
}

let srv: TestServer;
let mesh: MeshService;
const dirs: Array<{ cleanup(): Promise<void> }> = [];
const agents = new Map<string, TestAgent>();

async function startAgent(name: string, stateDir: string, nodeId: string): Promise<TestAgent> {
  const runner = new AgentRunner({ stateDir, logger: silent, backoff: { baseMs: 50, maxMs: 200 } });
  const m = await meshAgentFeature(runner, { stateDir, logger: process.env.MESH_DEBUG ? (pino({ level: 'debug', name }, { write: (l: string) => void debugLines.push(l) }) as never) : silent, options: { reconcileIntervalMs: 500, endpoints: [`192.0.2.${'abc'.indexOf(name) + 1}:51820`] } });
  const applied: Envelope[] = [];
  m.onApplied = (e) => applied.push(e);
  const a = { name, nodeId, stateDir, runner, mesh: m, applied, done: runner.run() };
  agents.set(name, a);
  return a;
}

async function addAgent(name: string, tags: string[]): Promise<TestAgent> {
  const dir = await tempDir('ml-mesh-agent-');
  dirs.push(dir);
  const token = await createTaggedToken(srv.server.store, { ttlMs: 60_000, nodeId: null, tags });
  const { identity } = await enroll({ server: srv.url, token: token.token, caPins: [srv.server.caPin], stateDir: dir.path, hostname: name }, { agentVersion: 'test' });
  return startAgent(name, dir.path, identity.nodeId);
}

const peersOf = (a: TestAgent): string[] => (a.mesh.state?.peers ?? []).map((p) => p.nodeId).sort();
const idsOf = (...names: string[]): string[] => names.map((n) => agents.get(n)!.nodeId).sort();

beforeAll(async () => {
  srv = await startTestServer({}, { features: [createMeshFeature({ sweepIntervalMs: 200, onStarted: (m) => (mesh = m) })] });
  await addAgent('a', ['web']);
  await addAgent('b', ['web', 'db']);
  await addAgent('c', ['db']);
});

afterAll(async () => {
  for (const a of agents.values()) {
    a.runner.stop();
    await a.done;
    await a.mesh.close();
  }
  await srv.stop();
  for (const d of dirs) await d.cleanup();
});

describe('mesh over real mTLS sessions (in-process server and agents)', () => {
  it('every agent gets its address and the others as peers, with shared PSKs', async () => {
    await waitFor('full mesh', async () => [...agents.values()].every((a) => peersOf(a).length === 2));
    const [a, b, c] = ['a', 'b', 'c'].map((n) => agents.get(n)!) as [TestAgent, TestAgent, TestAgent];
    expect(peersOf(a)).toEqual(idsOf('b', 'c'));
    const pskAB = a.mesh.state!.peers.find((p) => p.nodeId === b.nodeId)!.psk;
    expect(b.mesh.state!.peers.find((p) => p.nodeId === a.nodeId)!.psk).toBe(pskAB);
    expect(a.mesh.state!.peers.find((p) => p.nodeId === b.nodeId)!.publicKey).toBe(b.mesh.wgPublicKey);
    expect(new Set([a, b, c].map((x) => x.mesh.state!.meshIp)).size).toBe(3);
    // The server knows keys, endpoints and the observed address.
    expect(mesh.nodeInfo(a.nodeId)).toMatchObject({ publicKey: a.mesh.wgPublicKey, endpoints: ['192.0.2.1:51820'] });
    // State files: wg-quick config with the PSK, mode 0600; status without secrets.
    await waitFor('config rendered', async () => (await readFile(join(a.stateDir, 'wg-meshlink.conf'), 'utf8')).includes(pskAB));
    expect((await stat(join(a.stateDir, 'wg-meshlink.conf'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(a.stateDir, 'mesh-state.json'))).mode & 0o777).toBe(0o600);
    const status = JSON.parse(await readFile(join(a.stateDir, 'mesh-status.json'), 'utf8'));
    expect(status).toMatchObject({ meshIp: a.mesh.state!.meshIp, wgPublicKey: a.mesh.wgPublicKey, lastEventSeq: a.mesh.lastEventSeq });
    expect(JSON.stringify(status)).not.toContain(pskAB);
  });

  it('a policy change reaches exactly the affected agents', async () => {
    const [a, b, c] = ['a', 'b', 'c'].map((n) => agents.get(n)!) as [TestAgent, TestAgent, TestAgent];
    const bBefore = b.applied.length;
    const res = await mesh.setPolicy({ rules: [{ from: 'web', to: 'web' }, { from: 'db', to: 'db' }] });
    expect(res.affectedNodes.sort()).toEqual(idsOf('a', 'c'));
    await waitFor('a and c separated', async () => peersOf(a).length === 1 && peersOf(c).length === 1);
    expect(peersOf(a)).toEqual(idsOf('b'));
    expect(peersOf(c)).toEqual(idsOf('b'));
    // The agent records an event as applied after its state file is written: wait for that too.
    await waitFor('a recorded both events', async () => a.applied.slice(-2).map((e) => e.type).join() === 'policy_updated,peer_removed');
    expect(a.applied.slice(-2).map((e) => e.type)).toEqual(['policy_updated', 'peer_removed']);
    await new Promise((r) => setTimeout(r, 300));
    expect(b.applied.length).toBe(bBefore);
    expect(peersOf(b)).toEqual(idsOf('a', 'c'));
  });

  it('drops an event whose signature does not verify', async () => {
    const a = agents.get('a')!;
    const before = a.mesh.lastEventSeq;
    const { privateKey } = generateKeyPairSync('ed25519');
    const bytes = encodeEnvelope({ seq: before + 1, type: 'peer_removed', ts: Date.now(), payload: { nodeIds: [agents.get('b')!.nodeId] } });
    const session = srv.server.sessions!.current(a.nodeId)!.session;
    const keyId = mesh.eventKeys()[0]!.keyId;
    session.send('event', { envelope: bytes as Uint8Array<ArrayBuffer>, signature: sign(null, bytes, privateKey), keyId });
    await new Promise((r) => setTimeout(r, 300));
    expect(a.mesh.lastEventSeq).toBe(before);
    expect(peersOf(a)).toEqual(idsOf('b'));
  });

  it('an agent that was offline gets the missed events replayed on reconnect', async () => {
    const c = agents.get('c')!;
    c.runner.stop();
    expect(await c.done).toBe(0);
    await c.mesh.close();
    const seqBefore = c.mesh.lastEventSeq;
    await mesh.setPolicy(null); // full mesh again: c gets policy_updated + peer_added(a) while offline
    const persisted = JSON.parse(await readFile(join(c.stateDir, 'mesh-state.json'), 'utf8'));
    expect(persisted.lastEventSeq).toBe(seqBefore);
    const again = await startAgent('c', c.stateDir, c.nodeId);
    // The peers can be complete (from the state.request answer) before the replayed events are all
    // applied: wait for both, then check the replay's order.
    await waitFor('c back in the full mesh, the missed events applied', async () => peersOf(again).length === 2 && again.applied.length >= 2);
    if (again.applied.length !== 2) console.log(seqBefore, again.mesh.lastEventSeq, debugLines.filter((l) => !l.includes('heartbeat')).slice(-40).join(''));
    expect(again.applied.map((e) => e.seq)).toEqual([seqBefore + 1, seqBefore + 2]);
    expect(again.applied.map((e) => e.type)).toEqual(['policy_updated', 'peer_added']);
  });

  it('reconciliation repairs a damaged applied state and the server records the drift', async () => {
    const c = agents.get('c')!;
    c.runner.stop();
    await c.done;
    await c.mesh.close();
    const file = JSON.parse(await readFile(join(c.stateDir, 'mesh-state.json'), 'utf8'));
    file.state.peers = file.state.peers.slice(0, 1); // lose a peer without a seq change
    await writeFile(join(c.stateDir, 'mesh-state.json'), JSON.stringify(file));
    const since = await mesh.lastFeedId();
    const again = await startAgent('c', c.stateDir, c.nodeId);
    await waitFor('c repaired', async () => peersOf(again).length === 2);
    const drift = await waitFor('drift recorded', async () => (await mesh.feed(since, c.nodeId)).find((e) => e.kind === 'drift'));
    expect(JSON.stringify(drift.detail)).toMatch(/"expected":"present","actual":"absent"/);
  });

  it('rotate_keys: the agent reports a new key and its peers get peer_key_rotated', async () => {
    const a = agents.get('a')!;
    const b = agents.get('b')!;
    const oldKey = a.mesh.wgPublicKey;
    await mesh.requestKeyRotation(a.nodeId);
    await waitFor('b learns the new key', async () => {
      const k = b.mesh.state!.peers.find((p) => p.nodeId === a.nodeId)?.publicKey;
      return k !== undefined && k !== oldKey && k === a.mesh.wgPublicKey;
    });
    await waitFor('b recorded the rotation', async () => b.applied.some((e) => e.type === 'peer_key_rotated'));
    expect(b.applied.map((e) => e.type)).toContain('peer_key_rotated');
    expect((await readFile(join(a.stateDir, 'wg.key'), 'utf8')).trim()).not.toBe('');
  });

  it('a signing-key rotation keeps events flowing under the next key', async () => {
    const a = agents.get('a')!;
    await mesh.rotateSigningKey();
    await waitFor('rotation applied', async () => a.applied.at(-1)?.type === 'signing_key_rotated');
    await mesh.setPolicy({ rules: [{ from: 'web', to: 'web' }, { from: 'db', to: 'db' }] });
    await waitFor('policy under the new key', async () => peersOf(a).length === 1);
  });

  it('the enrollment pinned the first key; after the rotation a restarted agent trusts the next one and applies a signed snapshot under it', async () => {
    const a = agents.get('a')!;
    const pinned = JSON.parse(await readFile(join(a.stateDir, 'event-keys.json'), 'utf8')) as { nodeId: string; keys: Array<{ keyId: string }> };
    expect(pinned.nodeId).toBe(a.nodeId);
    const current = mesh.eventKeys()[0]!;
    expect(pinned.keys.map((k) => k.keyId)).not.toContain(current.keyId); // trusted through the rotation event alone
    expect(a.mesh.verifier.trusts(current.keyId, current.publicKey)).toBe(true);
    a.runner.stop();
    expect(await a.done).toBe(0);
    await a.mesh.close();
    // Damage the applied state so that the reconciliation must send a whole snapshot.
    const file = join(a.stateDir, 'mesh-state.json');
    const applied = JSON.parse(await readFile(file, 'utf8')) as { state: { peers: unknown[] } };
    const peers = applied.state.peers.length;
    expect(peers).toBeGreaterThan(0);
    applied.state.peers = [];
    await writeFile(file, JSON.stringify(applied));
    const again = await startAgent('a', a.stateDir, a.nodeId);
    expect(again.mesh.verifier.trusts(current.keyId, current.publicKey)).toBe(true);
    await waitFor('snapshot under the rotated key applied', async () => peersOf(again).length === peers);
  });

  it('a removed node disappears from its peers within seconds and its address is freed', async () => {
    await mesh.setPolicy(null);
    const [a, b] = ['a', 'b'].map((n) => agents.get(n)!) as [TestAgent, TestAgent];
    await waitFor('full mesh again', async () => peersOf(a).length === 2 && peersOf(b).length === 2);
    const c = agents.get('c')!;
    const started = Date.now();
    await removeNode(srv.server.store, c.nodeId, srv.server.live);
    await waitFor('peers drop c', async () => !peersOf(a).includes(c.nodeId) && !peersOf(b).includes(c.nodeId), 30_000, 50);
    console.log(`removal → peers drop the node: ${Date.now() - started} ms`);
    expect(await c.done).toBe(78); // revoked
    // It was told why first, in a signed event, before the 4401 close (recorded once its state file is written).
    await waitFor('c recorded session_revoked', async () => c.applied.at(-1)?.type === 'session_revoked', 30_000, 50);
    expect(c.applied.at(-1)).toMatchObject({ type: 'session_revoked', payload: { reason: 'node removed' } });
    expect(mesh.nodeInfo(c.nodeId)).toBeNull();
  });
});
