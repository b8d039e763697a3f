import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MeshAgent } from '../../src/agent/mesh/mesh-agent.js';
import { encodeEnvelope, encodeSnapshot, snapshotSigningBytes, stateDigest, type MeshState } from '../../src/contract/mesh-events.js';
import type { InputOf } from '../../src/protocol/registry.js';
import type { Session } from '../../src/protocol/session.js';
import { generateSigningKey, signBytes, type SigningKey } from '../../src/server/mesh/signer.js';
import { createLogger } from '../../src/util/logger.js';
import { writePinnedEventKeys } from '../../src/agent/state/event-keys.js';
import { wssPair, type SessionPair } from '../helpers/session-pairs.js';
import { makeTestPki, type TestPki } from '../helpers/tls-fixtures.js';

/**
 * The agent's mesh trust model (issue 17 item 13; docs/MESH.md, "Trust model") against a fake
 * control plane: real TLS on loopback with a server certificate from the agent's CA, so the channel
 * alone would be trusted. Before: the agent applied an unsigned `state.response` as its whole state
 * (and took its seq), and the keys of every welcome replaced the trusted set.
 */

const NODE = 'node-1';
const wg = (n: number): string => Buffer.alloc(32, n).toString('base64');
const stateWith = (meshIp: string, peers: number): MeshState => ({
  nodeId: NODE,
  meshIp,
  cidr: '100.64.0.0/10',
  peers: Array.from({ length: peers }, (_, i) => ({ nodeId: `peer-${i}`, meshIp: `100.64.1.${i + 1}`, publicKey: wg(i + 1), endpoints: [`192.0.2.${i + 1}:51820`], psk: wg(100 + i) })),
});

function signedSnapshot(key: SigningKey, state: MeshState, seq: number, keyId = key.keyId): NonNullable<InputOf<'state.response'>['snapshot']> {
  const bytes = encodeSnapshot({ nodeId: state.nodeId, seq, digest: stateDigest(state), ts: Date.now(), state });
  return { bytes: new Uint8Array(bytes), signature: new Uint8Array(signBytes(key, snapshotSigningBytes(bytes))), keyId };
}

const keyOf = (k: SigningKey) => ({ keyId: k.keyId, publicKey: new Uint8Array(k.publicKey) });

let pki: TestPki;
let dir: string;
const pairs: SessionPair[] = [];
const meshes: MeshAgent[] = [];
beforeEach(async () => {
  pki ??= makeTestPki();
  dir = await mkdtemp(join(tmpdir(), 'ml-trust-'));
});
afterEach(async () => {
  for (const m of meshes.splice(0)) await m.close();
  for (const p of pairs.splice(0)) await p.close();
  await rm(dir, { recursive: true, force: true });
});

async function agent(): Promise<MeshAgent> {
  const mesh = await MeshAgent.create({ stateDir: dir, logger: createLogger({ name: 't', level: 'silent' }), endpoints: ['192.0.2.200:51820'] });
  meshes.push(mesh);
  return mesh;
}

/** A control plane over real TLS that welcomes with `eventKeys` and answers state.request with `answer`. */
async function controlPlane(eventKeys: ReturnType<typeof keyOf>[], answer: () => Omit<InputOf<'state.response'>, 'rid'>): Promise<{ session: Session; server: Session; welcome: InputOf<'welcome'> }> {
  const welcome = { version: 1, nodeId: NODE, serverVersion: 'fake', heartbeatIntervalMs: 15_000, eventKeys };
  const pair = await wssPair(pki, {}, { onHello: () => welcome });
  pairs.push(pair);
  pair.server.handle('state.request', () => answer());
  return { session: pair.agent, server: pair.server, welcome };
}

describe('state snapshots are applied only when signed by a trusted key', () => {
  it('a forged or foreign-signed snapshot and a welcome with a foreign key change nothing; the pinned key still works', async () => {
    const real = generateSigningKey();
    const mesh = await agent();
    const good = stateWith('100.64.0.1', 2);
    const first = await controlPlane([keyOf(real)], () => ({ inSync: false, snapshot: signedSnapshot(real, good, 7) }));
    mesh.connected(first.session, first.welcome as never);
    await mesh.reconcile(first.session);
    expect(mesh.state).toEqual(good);
    expect(mesh.lastEventSeq).toBe(7);

    // A fake control plane: its own key in the welcome, a state of its choosing, a high seq.
    const foreign = generateSigningKey();
    const evil = stateWith('100.64.9.9', 0);
    const answers = [
      signedSnapshot(foreign, evil, 999), // signed by the key the welcome names
      signedSnapshot(foreign, evil, 999, real.keyId), // claims the trusted key id
      { ...signedSnapshot(real, good, 999), bytes: new Uint8Array(encodeSnapshot({ nodeId: NODE, seq: 999, digest: stateDigest(evil), ts: 0, state: evil })) }, // bytes swapped after signing
      { bytes: signedSnapshot(real, evil, 999).bytes, signature: new Uint8Array(signBytes(real, signedSnapshot(real, evil, 999).bytes)), keyId: real.keyId }, // an event-style signature (no snapshot context)
    ];
    let i = 0;
    const fake = await controlPlane([keyOf(foreign)], () => ({ inSync: false, snapshot: answers[Math.min(i++, answers.length - 1)]! }));
    mesh.connected(fake.session, fake.welcome as never);
    for (let n = 0; n < answers.length + 1; n++) await mesh.reconcile(fake.session);
    expect(i).toBeGreaterThanOrEqual(answers.length);
    expect(mesh.state).toEqual(good);
    expect(mesh.lastEventSeq).toBe(7);
    expect(mesh.verifier.keys.map((k) => k.keyId)).toEqual([real.keyId]);

    // An event signed by the foreign key is dropped too.
    const forged = encodeEnvelope({ seq: 8, type: 'node_state_updated', ts: Date.now(), payload: { state: evil } });
    await mesh.receive({ envelope: new Uint8Array(forged), signature: new Uint8Array(signBytes(foreign, forged)), keyId: foreign.keyId }, fake.session);
    expect(mesh.state).toEqual(good);

    // And it survives a restart of the agent: the state file holds the pinned key, not the foreign one.
    await mesh.close();
    meshes.splice(meshes.indexOf(mesh), 1);
    const again = await agent();
    expect(again.state).toEqual(good);
    expect(again.verifier.keys.map((k) => k.keyId)).toEqual([real.keyId]);
  });

  it('a snapshot older than the applied events, or for another node, is not applied', async () => {
    const real = generateSigningKey();
    const mesh = await agent();
    const good = stateWith('100.64.0.1', 1);
    let answer = signedSnapshot(real, good, 10);
    const cp = await controlPlane([keyOf(real)], () => ({ inSync: false, snapshot: answer }));
    mesh.connected(cp.session, cp.welcome as never);
    await mesh.reconcile(cp.session);
    expect(mesh.lastEventSeq).toBe(10);
    answer = signedSnapshot(real, stateWith('100.64.0.2', 0), 9);
    await mesh.reconcile(cp.session);
    answer = signedSnapshot(real, { ...stateWith('100.64.0.3', 0), nodeId: 'node-2' }, 11);
    await mesh.reconcile(cp.session);
    expect(mesh.state).toEqual(good);
    expect(mesh.lastEventSeq).toBe(10);
  });
});

describe('the keys pinned at enrollment', () => {
  it('are trusted from the start: the first welcome naming a foreign key does not replace them', async () => {
    const real = generateSigningKey();
    const foreign = generateSigningKey();
    await writePinnedEventKeys(dir, NODE, [{ keyId: real.keyId, publicKey: Buffer.from(real.publicKey).toString('base64') }]);
    const mesh = await agent();
    expect(mesh.verifier.keys.map((k) => k.keyId)).toEqual([real.keyId]);
    const evil = stateWith('100.64.9.9', 0);
    const fake = await controlPlane([keyOf(foreign)], () => ({ inSync: false, snapshot: signedSnapshot(foreign, evil, 50) }));
    mesh.connected(fake.session, fake.welcome as never);
    await mesh.reconcile(fake.session);
    expect(mesh.state).toBeNull();
    expect(mesh.lastEventSeq).toBe(0);
    expect(mesh.verifier.keys.map((k) => k.keyId)).toEqual([real.keyId]);
  });
});

describe('signing-key rotation', () => {
  it('is accepted through a signing_key_rotated event signed by the trusted key, and the new key is trusted after a restart', async () => {
    const k1 = generateSigningKey();
    const k2 = generateSigningKey();
    const mesh = await agent();
    const s1 = stateWith('100.64.0.1', 1);
    const cp = await controlPlane([keyOf(k1)], () => ({ inSync: false, snapshot: signedSnapshot(k1, s1, 3) }));
    mesh.connected(cp.session, cp.welcome as never);
    await mesh.reconcile(cp.session);
    expect(mesh.lastEventSeq).toBe(3);

    const rotation = encodeEnvelope({ seq: 4, type: 'signing_key_rotated', ts: Date.now(), payload: { keyId: k2.keyId, publicKey: new Uint8Array(k2.publicKey), transitionMs: 60_000 } });
    await mesh.receive({ envelope: new Uint8Array(rotation), signature: new Uint8Array(signBytes(k1, rotation)), keyId: k1.keyId }, cp.session);
    expect(mesh.lastEventSeq).toBe(4);
    expect(mesh.verifier.trusts(k2.keyId, k2.publicKey)).toBe(true);

    // Reconnect after a restart: a welcome that names only k2, a snapshot signed by k2.
    await mesh.close();
    meshes.splice(meshes.indexOf(mesh), 1);
    const again = await agent();
    expect(again.verifier.trusts(k2.keyId, k2.publicKey)).toBe(true);
    const s2 = stateWith('100.64.0.1', 3);
    const next = await controlPlane([keyOf(k2)], () => ({ inSync: false, snapshot: signedSnapshot(k2, s2, 5) }));
    again.connected(next.session, next.welcome as never);
    await again.reconcile(next.session);
    expect(again.state).toEqual(s2);
    expect(again.lastEventSeq).toBe(5);
  });
});
