import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { AgentRunner } from '../../src/agent/connection.js';
import { enroll } from '../../src/agent/enroll.js';
import { meshAgentFeature, type MeshAgent } from '../../src/agent/mesh/index.js';
import { attachSession } from '../../src/net/ws-session.js';
import { RemoteError, type CloseInfo, type Session } from '../../src/protocol/session.js';
import { AuditLog } from '../../src/server/audit-log.js';
import { createMeshFeature } from '../../src/server/mesh/index.js';
import { createTaggedToken } from '../../src/server/mesh/operator.js';
import type { MeshService } from '../../src/server/mesh/service.js';
import { dialConnect, enrollNode, startTestServer, tempDir, type TestServer } from '../server/helpers.js';
import { waitFor } from '../e2e/harness.js';
import { silent, wgKey } from './helpers.js';

/**
 * One enrolled node as the attacker, speaking the real protocol over real mTLS, against honest agents
 * (the real AgentRunner with the mesh feature): what it reports about itself must not break the mesh
 * for the others (issue 17, items 1 and 2).
 */

interface TestAgent {
  name: string;
  nodeId: string;
  runner: AgentRunner;
  mesh: MeshAgent;
  done: Promise<number>;
}

let srv: TestServer;
let mesh: MeshService;
const dirs: Array<{ cleanup(): Promise<void> }> = [];
const agents: TestAgent[] = [];
const sockets: WebSocket[] = [];

async function addAgent(name: string): Promise<TestAgent> {
  const dir = await tempDir('ml-hostile-agent-');
  dirs.push(dir);
  const token = await createTaggedToken(srv.server.store, { ttlMs: 60_000, nodeId: null, tags: [] });
  const { identity } = await enroll({ server: srv.url, token: token.token, caPins: [srv.server.caPin], stateDir: dir.path, hostname: name }, { agentVersion: 'test' });
  const runner = new AgentRunner({ stateDir: dir.path, logger: silent, backoff: { baseMs: 50, maxMs: 200 } });
  const m = await meshAgentFeature(runner, { stateDir: dir.path, logger: silent, options: { reconcileIntervalMs: 300, endpoints: [`192.0.2.${agents.length + 1}:51820`] } });
  const a = { name, nodeId: identity.nodeId, runner, mesh: m, done: runner.run() };
  agents.push(a);
  return a;
}

/** An enrolled node's raw session over mTLS: the test decides every field it sends. */
async function attacker(name: string): Promise<{ nodeId: string; session: Session }> {
  const node = await enrollNode(srv, name);
  const outcome = await dialConnect(srv.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
  if (outcome.kind !== 'open') throw new Error(`attacker could not connect: ${outcome.kind}`);
  sockets.push(outcome.ws);
  return { nodeId: node.nodeId, session: attachSession(outcome.ws, { role: 'agent' }) };
}

/** How the server ended the session: its close code and the code of the error frame it sent first. */
function closed(session: Session): Promise<{ code: number; error?: string }> {
  const of = (info: CloseInfo): { code: number; error?: string } => {
    const e = info.error;
    return { code: info.code, ...(e ? { error: e instanceof RemoteError ? e.remoteCode : e.code } : {}) };
  };
  return new Promise((resolve) => {
    if (session.closeInfo) resolve(of(session.closeInfo));
    else session.once('close', (info) => resolve(of(info)));
  });
}

const peersOf = (a: TestAgent): string[] => (a.mesh.state?.peers ?? []).map((p) => p.nodeId).sort();

beforeAll(async () => {
  srv = await startTestServer({}, { features: [createMeshFeature({ sweepIntervalMs: 100, onStarted: (m) => (mesh = m) })] });
  await addAgent('honest-a');
  await addAgent('honest-b');
  await waitFor('a and b peer', async () => peersOf(agents[0]!).length === 1 && peersOf(agents[1]!).length === 1);
});

afterAll(async () => {
  for (const ws of sockets) ws.terminate();
  for (const a of agents) {
    a.runner.stop();
    await a.done;
    await a.mesh.close();
  }
  await srv.stop();
  for (const d of dirs) await d.cleanup();
});

describe('a hostile node cannot poison the mesh with what it says about itself', () => {
  it('a hello whose wgPublicKey is not a WireGuard key is refused and stored nowhere', async () => {
    const evil = await attacker('evil-key');
    const refused = closed(evil.session);
    await expect(evil.session.handshake({ agentVersion: 'x', wgPublicKey: 'not-a-wireguard-key', endpoints: ['192.0.2.66:51820'] })).rejects.toMatchObject({ remoteCode: 'ML_ERR_BAD_PAYLOAD' });
    expect(await refused).toMatchObject({ code: 4004 });
    // Give the sweep time to bring the node in; its key never reaches the model.
    await waitFor('attacker in the mesh model', async () => mesh.nodeInfo(evil.nodeId) !== null);
    expect(mesh.nodeInfo(evil.nodeId)!.publicKey).toBeNull();
  });

  it('a hello whose endpoint is not HOST:PORT is refused', async () => {
    const evil = await attacker('evil-endpoint');
    const refused = closed(evil.session);
    await expect(evil.session.handshake({ agentVersion: 'x', wgPublicKey: wgKey(201), endpoints: ['no port here'] })).rejects.toMatchObject({ remoteCode: 'ML_ERR_BAD_PAYLOAD' });
    expect(await refused).toMatchObject({ code: 4004 });
    expect(mesh.nodeInfo(evil.nodeId)?.publicKey ?? null).toBeNull();
  });

  it('an event.ack with a bad wgPublicKey closes the attacker session and changes nothing', async () => {
    const evil = await attacker('evil-ack');
    await evil.session.handshake({ agentVersion: 'x', wgPublicKey: wgKey(202), endpoints: ['192.0.2.67:51820'] });
    await waitFor('attacker key recorded', async () => mesh.nodeInfo(evil.nodeId)?.publicKey === wgKey(202));
    const refused = closed(evil.session);
    evil.session.send('event.ack', { seq: 1, wgPublicKey: '!!!!' });
    expect(await refused).toMatchObject({ code: 4004, error: 'ML_ERR_BAD_PAYLOAD' });
    expect(mesh.nodeInfo(evil.nodeId)!.publicKey).toBe(wgKey(202));
  });

  it('a node may not claim the WireGuard key of another live node (hello or event.ack)', async () => {
    const victim = agents[0]!;
    const since = (await AuditLog.of(srv.server.store).list(1))[0]?.id ?? 0;
    const evil = await attacker('evil-dup');
    const refused = closed(evil.session);
    await expect(evil.session.handshake({ agentVersion: 'x', wgPublicKey: victim.mesh.wgPublicKey })).rejects.toMatchObject({ remoteCode: 'ML_ERR_MESH_KEY_IN_USE' });
    expect(await refused).toMatchObject({ code: 4410, error: 'ML_ERR_MESH_KEY_IN_USE' });
    // Reported: an audit record names the node and the key it claimed.
    const report = (await AuditLog.of(srv.server.store).list(50)).find((r) => r.id > since && r.operation === 'mesh.key_refused');
    expect(report).toMatchObject({ source: 'agent', nodeId: evil.nodeId, result: 'ML_ERR_MESH_KEY_IN_USE' });

    // The same through event.ack, after a valid hello.
    const evil2 = await attacker('evil-dup-ack');
    await evil2.session.handshake({ agentVersion: 'x', wgPublicKey: wgKey(203) });
    await waitFor('attacker key recorded', async () => mesh.nodeInfo(evil2.nodeId)?.publicKey === wgKey(203));
    const refused2 = closed(evil2.session);
    evil2.session.send('event.ack', { seq: 1, wgPublicKey: victim.mesh.wgPublicKey });
    expect(await refused2).toMatchObject({ code: 4410, error: 'ML_ERR_MESH_KEY_IN_USE' });
    expect(mesh.nodeInfo(evil2.nodeId)!.publicKey).toBe(wgKey(203));
    expect(mesh.nodeInfo(victim.nodeId)!.publicKey).toBe(victim.mesh.wgPublicKey);
  });

  it('drift reports are limited per node, stamped with the receive time, capped in size, and the feed pages by bytes', async () => {
    const evil = await attacker('evil-drift');
    await evil.session.handshake({ agentVersion: 'x', wgPublicKey: wgKey(204) });
    await waitFor('attacker in the mesh model', async () => mesh.nodeInfo(evil.nodeId) !== null);
    const since = await mesh.lastFeedId();
    const sentAt = Date.now();
    const big = 'x'.repeat(400);
    for (let i = 0; i < 20; i++) {
      evil.session.send('drift.report', { ts: sentAt + 365 * 86_400_000, items: Array.from({ length: 500 }, (_, j) => ({ field: `f${j}`, expected: big, actual: big })) });
    }
    await evil.session.ping(10_000);
    const entries = await waitFor('drift stored', async () => {
      const e = (await mesh.feed(since, evil.nodeId)).filter((x) => x.kind === 'drift');
      return e.length > 0 ? e : null;
    });
    const receivedBy = Date.now();
    expect(entries.length).toBeLessThanOrEqual(6);
    for (const e of entries) {
      expect(Date.parse(e.ts)).toBeLessThanOrEqual(receivedBy);
      const detail = e.detail as { items: Array<{ expected: string }>; moreItems: number };
      expect(detail.items.length).toBe(64);
      expect(detail.moreItems).toBe(436);
      expect(detail.items[0]!.expected.length).toBe(256);
    }
    // A page of the feed stays far below the admin client's 16 MiB answer cap.
    expect(JSON.stringify(await mesh.feed(0, null)).length).toBeLessThan(4 * 1024 * 1024);
  });

  it('the honest nodes keep their mesh, and a node joining later gets every valid peer', async () => {
    const [a, b] = agents as [TestAgent, TestAgent];
    const late = await addAgent('honest-late');
    // Its peers: a, b and the attackers that reported a valid key of their own (evil-ack, evil-dup-ack).
    await waitFor('late node has its peers', async () => peersOf(late).includes(a.nodeId) && peersOf(late).includes(b.nodeId));
    await waitFor('a and b see the late node', async () => peersOf(a).includes(late.nodeId) && peersOf(b).includes(late.nodeId));
    const keys = new Map(late.mesh.state!.peers.map((p) => [p.nodeId, p.publicKey]));
    expect(keys.get(a.nodeId)).toBe(a.mesh.wgPublicKey);
    expect(keys.get(b.nodeId)).toBe(b.mesh.wgPublicKey);
    // One key, one [Peer]: no two peers share a key.
    expect(new Set(keys.values()).size).toBe(keys.size);
  });
});
