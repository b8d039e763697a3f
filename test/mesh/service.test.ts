import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { stateDigest } from '../../src/contract/mesh-events.js';
import { PathHealth } from '../../src/server/mesh/path-health.js';
import { MeshService } from '../../src/server/mesh/service.js';
import { enrollNode, recordingSessions, silent, tempStore, testSealing, verifies, wgKey, type SentEvent } from './helpers.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function setup(options: { retainEvents?: number } = {}) {
  const t = await tempStore();
  cleanups.push(() => t.cleanup());
  const a = await enrollNode(t.store, 'a', ['web']);
  const b = await enrollNode(t.store, 'b', ['web', 'db']);
  const c = await enrollNode(t.store, 'c', ['db']);
  const mesh = await MeshService.open(t.store, silent, { sealing: t.sealing, ...options });
  const hub = recordingSessions();
  mesh.setDelivery(hub);
  const sessions = new Map([a, b, c].map((id) => [id, hub.connect(id)]));
  // Every node connects with a key and asks for its replay (first state.request).
  for (const [i, id] of [a, b, c].entries()) {
    await mesh.agentOpened(id, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(i + 1), endpoints: [`192.0.2.${i + 1}:51820`] }, '127.0.0.1');
    await mesh.replay(sessions.get(id)!.agent, 0);
  }
  const sent = (id: string): SentEvent[] => sessions.get(id)!.sent;
  return { t, mesh, a, b, c, hub, sessions, sent };
}

/** Applies events to a plain model of the agent's state, as the agent does. */
function applied(events: SentEvent[]): Map<string, { publicKey: string; psk: string; meshIp: string; endpoints?: string[] }> {
  const peers = new Map<string, { publicKey: string; psk: string; meshIp: string; endpoints?: string[] }>();
  for (const { envelope: e } of events) {
    if (e.type === 'node_state_updated') {
      peers.clear();
      for (const p of (e.payload as { state: { peers: Array<{ nodeId: string; publicKey: string; psk: string; meshIp: string }> } }).state.peers) peers.set(p.nodeId, p);
    } else if (e.type === 'peer_added') for (const p of (e.payload as { peers: Array<{ nodeId: string; publicKey: string; psk: string; meshIp: string }> }).peers) peers.set(p.nodeId, p);
    else if (e.type === 'peer_removed') for (const id of (e.payload as { nodeIds: string[] }).nodeIds) peers.delete(id);
    else if (e.type === 'peer_key_rotated') for (const p of (e.payload as { peers: Array<{ nodeId: string; publicKey: string }> }).peers) peers.get(p.nodeId)!.publicKey = p.publicKey;
    else if (e.type === 'peer_endpoint_changed') for (const p of (e.payload as { peers: Array<{ nodeId: string; endpoints: string[] }> }).peers) peers.get(p.nodeId)!.endpoints = p.endpoints;
  }
  return peers;
}

describe('MeshService', () => {
  it('assigns unique stable addresses, keeps them across restarts, frees them on removal', async () => {
    const { t, mesh, a, b, c } = await setup();
    const ips = [a, b, c].map((id) => mesh.nodeInfo(id)!.meshIp);
    expect([...ips].sort()).toEqual(['10.100.0.1', '10.100.0.2', '10.100.0.3']); // enrolled in the same ms: order by id
    const reopened = await MeshService.open(await t.reopen(), silent, { sealing: t.sealing });
    expect([a, b, c].map((id) => reopened.nodeInfo(id)!.meshIp)).toEqual(ips);
    // What each node was told is loaded back: the start's recompute finds nothing new to send.
    expect([a, b, c].map((id) => reopened.nodeInfo(id)!.lastSeq)).toEqual([a, b, c].map((id) => mesh.nodeInfo(id)!.lastSeq));
    await t.store.removeNode(b, Date.now());
    expect(await reopened.sweep()).toBe(true);
    expect(reopened.nodeInfo(b)).toBeNull();
    const d = await enrollNode(t.store, 'd');
    await reopened.sweep();
    expect(reopened.nodeInfo(d)!.meshIp).toBe(ips[1]); // b's address, freed
  });

  it('tags come from the enrollment token', async () => {
    const { mesh, a, b, c } = await setup();
    expect([a, b, c].map((id) => mesh.nodeInfo(id)!.tags)).toEqual([['web'], ['web', 'db'], ['db']]);
  });

  it('full mesh by default: each node applies exactly the others, with one PSK per pair, all events signed', async () => {
    const { mesh, a, b, c, sent } = await setup();
    const keys = mesh.eventKeys();
    for (const id of [a, b, c]) for (const e of sent(id)) expect(verifies(e, keys)).toBe(true);
    const pa = applied(sent(a));
    const pb = applied(sent(b));
    const pc = applied(sent(c));
    expect([...pa.keys()].sort()).toEqual([b, c].sort());
    expect(pa.get(b)!.psk).toBe(pb.get(a)!.psk);
    expect(pa.get(c)!.psk).toBe(pc.get(a)!.psk);
    expect(new Set([pa.get(b)!.psk, pa.get(c)!.psk, pb.get(c)!.psk]).size).toBe(3);
    expect(Buffer.from(pa.get(b)!.psk, 'base64')).toHaveLength(32);
    // Seqs are per node, gap-free, from 1.
    for (const id of [a, b, c]) expect(sent(id).map((e) => e.envelope.seq)).toEqual(sent(id).map((_, i) => i + 1));
  });

  it('PSKs and envelopes are not stored in clear text', async () => {
    const { t, mesh, a, b, sent } = await setup();
    const psk = applied(sent(a)).get(b)!.psk;
    await mesh.close();
    t.store.checkpoint();
    const file = readFileSync(`${t.dir}/meshlink.db`);
    expect(file.includes(Buffer.from(psk, 'base64'))).toBe(false);
    expect(file.includes(Buffer.from(psk))).toBe(false);
  });

  it('a policy change sends policy_updated + peer changes to exactly the affected nodes', async () => {
    const { mesh, a, b, c, sent } = await setup();
    const before = { a: sent(a).length, b: sent(b).length, c: sent(c).length };
    // web<->web and db<->db: a-b (web), b-c (db); a-c loses its link.
    const result = await mesh.setPolicy({ rules: [{ from: 'web', to: 'web' }, { from: 'db', to: 'db' }] });
    expect(result.affectedNodes.sort()).toEqual([a, c].sort());
    expect(sent(b).length).toBe(before.b);
    const newA = sent(a).slice(before.a).map((e) => e.envelope.type);
    expect(newA).toEqual(['policy_updated', 'peer_removed']);
    expect(sent(a).at(-1)!.envelope.payload).toEqual({ nodeIds: [c] });
    expect([...applied(sent(a)).keys()]).toEqual([b]);
    expect([...applied(sent(c)).keys()]).toEqual([b]);
    // Re-linking a and c brings a fresh PSK for the pair.
    const oldPsk = applied(sent(a)).get(b)!.psk;
    await mesh.setPolicy(null);
    expect(applied(sent(a)).get(c)!.psk).toBe(applied(sent(c)).get(a)!.psk);
    expect(applied(sent(a)).get(b)!.psk).toBe(oldPsk); // a-b never stopped: PSK kept
  });

  it('a node that joins is checked with its permitted peers only, and a full recompute then finds nothing left to send', async () => {
    const { t, mesh, a, b, c, hub, sessions, sent } = await setup();
    await mesh.setPolicy({ rules: [{ from: 'web', to: 'web' }] }); // a-b; c (db only) sees nobody
    const before = { a: sent(a).length, b: sent(b).length, c: sent(c).length };
    const d = await enrollNode(t.store, 'd', ['web']);
    const e = await enrollNode(t.store, 'e', ['db']);
    await mesh.sweepAndRecompute(); // the feature's timer: both join in one sweep
    for (const id of [d, e]) {
      sessions.set(id, hub.connect(id));
      await mesh.replay(sessions.get(id)!.agent, 0);
    }
    // Without a WireGuard key nobody is told of d or e; each has its first snapshot, without peers.
    expect([sent(a).length, sent(b).length, sent(c).length]).toEqual([before.a, before.b, before.c]);
    for (const id of [d, e]) {
      expect(sent(id).map((x) => x.envelope.type)).toEqual(['node_state_updated']);
      expect(applied(sent(id)).size).toBe(0);
    }
    await mesh.agentOpened(d, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(4), endpoints: ['192.0.2.4:51820'] }, '127.0.0.1');
    await mesh.agentOpened(e, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(5), endpoints: ['192.0.2.5:51820'] }, '127.0.0.1');
    expect([...applied(sent(d)).keys()].sort()).toEqual([a, b].sort());
    expect([...applied(sent(a)).keys()].sort()).toEqual([b, d].sort());
    expect([...applied(sent(b)).keys()].sort()).toEqual([a, d].sort());
    expect(applied(sent(d)).get(a)!.psk).toBe(applied(sent(a)).get(d)!.psk);
    expect(sent(c).length).toBe(before.c);
    expect(applied(sent(e)).size).toBe(0);
    // What each node was told is what evaluating everyone from scratch gives.
    expect(await mesh.recompute()).toEqual([]);
    for (const id of [a, b, c, d, e]) expect([...applied(sent(id)).keys()].sort()).toEqual(mesh.desiredState(id)!.peers.map((p) => p.nodeId).sort());
  });

  it('recomputes over several delivery batches stay ordered when changes overlap', async () => {
    // 150 nodes: a full recompute spans three batches of 64 and yields between them.
    const t = await tempStore();
    cleanups.push(() => t.cleanup());
    const ids: string[] = [];
    for (let i = 0; i < 150; i++) ids.push(await enrollNode(t.store, `n${i}`, [i % 2 === 0 ? 'even' : 'odd']));
    const mesh = await MeshService.open(t.store, silent, { sealing: t.sealing });
    const hub = recordingSessions();
    mesh.setDelivery(hub);
    const sessions = new Map(ids.map((id) => [id, hub.connect(id)]));
    await Promise.all(ids.map((id, i) => mesh.agentOpened(id, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(i + 1), endpoints: [`192.0.2.${i + 1}:51820`] }, '127.0.0.1')));
    for (const id of ids) await mesh.replay(sessions.get(id)!.agent, 0);
    const received = new Map(ids.map((id) => [id, [...sessions.get(id)!.sent]]));
    const collect = (): void => {
      for (const id of ids) for (const e of sessions.get(id)!.sent) if (!received.get(id)!.includes(e)) received.get(id)!.push(e);
    };

    // A policy change starts; after its first batch, while the rest waits for the event loop, a node
    // of a later batch reconnects (a new session asks for its replay), another gets a published
    // event, and a third reports a new endpoint. Then a second policy change.
    const late = ids[140]!;
    const first = mesh.setPolicy({ rules: [{ from: 'even', to: 'even' }] });
    await new Promise((r) => setImmediate(r));
    collect();
    // A node the running recompute has not reached is not handed a state ahead of its events.
    expect(mesh.stateFor(ids[149]!, 'f'.repeat(64))).toEqual({ inSync: true });
    const lateSeqBefore = received.get(late)!.at(-1)!.envelope.seq;
    const reconnected = hub.connect(late);
    sessions.set(late, reconnected);
    // Not awaited one by one: they queue behind the running recompute's next batch, as a session's
    // messages would.
    const replayed = mesh.replay(reconnected.agent, lateSeqBefore);
    const published = mesh.publish(ids[130]!, 'action_request', { action: 'mid-run' });
    const moved = mesh.agentOpened(ids[3]!, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(4), endpoints: ['198.51.100.4:51820'] }, '127.0.0.1');
    const second = mesh.setPolicy({ rules: [{ from: 'odd', to: 'odd' }] });
    const [r1, , r2] = await Promise.all([first, moved, second, replayed, published]);
    collect();
    expect(r1.affectedNodes).toHaveLength(150); // everyone lost or changed peers
    expect(r2.affectedNodes).toHaveLength(150);
    for (const [i, id] of ids.entries()) {
      const events = received.get(id)!;
      // Every seq from 1 to the node's last, once each and in order, across its two sessions.
      expect(events.map((e) => e.envelope.seq)).toEqual(Array.from({ length: mesh.nodeInfo(id)!.lastSeq }, (_, k) => k + 1));
      // Applying them yields the server's desired state, endpoints included.
      const want = mesh.desiredState(id)!.peers.map((p) => [p.nodeId, p.psk, p.publicKey, p.endpoints.join(',')]);
      const got = [...applied(events)].map(([peerId, p]) => [peerId, p.psk, p.publicKey, (p.endpoints ?? []).join(',')]);
      expect(got.sort()).toEqual(want.sort());
      expect(want).toHaveLength(i % 2 === 0 ? 0 : 74);
    }
    expect(received.get(ids[130]!)!.some((e) => e.envelope.type === 'action_request')).toBe(true);
    expect(mesh.stateFor(ids[149]!, 'f'.repeat(64)).inSync).toBe(false); // reached now: a mismatch is real
    // The odd nodes learned ids[3]'s new endpoint from the events themselves.
    expect(applied(received.get(ids[1]!)!).get(ids[3]!)!.endpoints).toEqual(['198.51.100.4:51820']);
  });

  it('publishAll gives every node the event under its own seq; an offline node gets it by replay', async () => {
    const { mesh, a, b, c, sent, hub } = await setup();
    // b stays connected; a is offline; c reconnects (a new session that has not asked for replay yet).
    hub.disconnect(a);
    const late = hub.connect(c);
    const before = [a, b, c].map((id) => mesh.nodeInfo(id)!.lastSeq);
    expect(await mesh.publishAll('action_request', { action: 'bench', args: { n: '1' } })).toBe(3);
    expect([a, b, c].map((id) => mesh.nodeInfo(id)!.lastSeq)).toEqual(before.map((s) => s + 1));
    expect(sent(b).at(-1)!.envelope).toMatchObject({ type: 'action_request', seq: before[1]! + 1 }); // live
    expect(sent(a).at(-1)!.envelope.type).not.toBe('action_request'); // offline
    expect(late.sent).toHaveLength(0); // no live events before the replay request
    // c's new session asks for its replay from where c had got to: the event arrives then.
    await mesh.replay(late.agent, before[2]!);
    expect(late.sent.map((e) => [e.envelope.type, e.envelope.seq])).toEqual([['action_request', before[2]! + 1]]);
    expect(late.sent[0]!.envelope.payload).toEqual({ action: 'bench', args: { n: '1' } });
  });

  it('an invalid policy is refused and the policy in force stays', async () => {
    const { mesh, a, sent } = await setup();
    await mesh.setPolicy({ rules: [{ from: 'web', to: 'db' }] });
    const n = sent(a).length;
    expect(() => mesh.setPolicy({ rules: [{ from: 'web' }] })).toThrow(/invalid policy at rules.0.to/);
    expect(mesh.policy).toEqual({ rules: [{ from: 'web', to: 'db' }] });
    expect(sent(a).length).toBe(n);
  });

  it('peers learn rotated keys and changed endpoints; the desired-state digest tracks it', async () => {
    const { mesh, a, b, c, sent } = await setup();
    const digestBefore = stateDigest(mesh.desiredState(a)!);
    await mesh.acked(b, { seq: 1, wgPublicKey: wgKey(9) });
    expect(sent(a).at(-1)!.envelope).toMatchObject({ type: 'peer_key_rotated', payload: { peers: [{ nodeId: b, publicKey: wgKey(9) }] } });
    expect(sent(c).at(-1)!.envelope.type).toBe('peer_key_rotated');
    await mesh.agentOpened(c, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(3), endpoints: ['198.51.100.7:51820'] }, '127.0.0.1');
    expect(sent(a).at(-1)!.envelope).toMatchObject({ type: 'peer_endpoint_changed', payload: { peers: [{ nodeId: c, endpoints: ['198.51.100.7:51820'] }] } });
    const state = mesh.desiredState(a)!;
    expect(stateDigest(state)).not.toBe(digestBefore);
    expect(mesh.stateFor(a, stateDigest(state))).toEqual({ inSync: true });
    const r = mesh.stateFor(a, 'f'.repeat(64));
    expect(r.inSync).toBe(false);
    expect(r.state).toMatchObject({ meshIp: state.meshIp, peers: state.peers, seq: sent(a).at(-1)!.envelope.seq });
  });

  it('replays exactly the missed events, or a snapshot past retention', async () => {
    const { mesh, a, sent, hub } = await setup({ retainEvents: 3 });
    const all = sent(a);
    const last = all.at(-1)!.envelope.seq;
    // Reconnect having applied last-1: one event replayed, byte for byte the same signed envelope.
    const s1 = hub.connect(a);
    await mesh.replay(s1.agent, last - 1);
    expect(s1.sent.map((e) => e.envelope.seq)).toEqual([last]);
    expect(Buffer.from(s1.sent[0]!.bytes).equals(Buffer.from(all.at(-1)!.bytes))).toBe(true);
    // Generate more events than retained, then reconnect from seq 0: snapshot with a new seq.
    for (let i = 0; i < 4; i++) await mesh.setPolicy(i % 2 === 0 ? { rules: [] } : null);
    const s2 = hub.connect(a);
    await mesh.replay(s2.agent, 0);
    expect(s2.sent).toHaveLength(1);
    expect(s2.sent[0]!.envelope.type).toBe('node_state_updated');
    expect(s2.sent[0]!.envelope.seq).toBe(mesh.nodeInfo(a)!.lastSeq);
    expect((s2.sent[0]!.envelope.payload as { state: unknown }).state).toEqual(mesh.desiredState(a));
  });

  it('a session gets no live events before it asked for its replay', async () => {
    const { mesh, a, b, hub } = await setup();
    const fresh = hub.connect(a);
    await mesh.acked(b, { seq: 1, wgPublicKey: wgKey(7) });
    expect(fresh.sent).toHaveLength(0);
    await mesh.replay(fresh.agent, mesh.nodeInfo(a)!.lastSeq - 1);
    expect(fresh.sent.map((e) => e.envelope.type)).toEqual(['peer_key_rotated']);
  });

  it('signing-key rotation: announced under the current key, later events under the next', async () => {
    const { mesh, a, sent } = await setup();
    const oldKeys = mesh.eventKeys();
    const { keyId, previousKeyId } = await mesh.rotateSigningKey();
    expect(previousKeyId).toBe(oldKeys[0]!.keyId);
    const announce = sent(a).at(-1)!;
    expect(announce.envelope.type).toBe('signing_key_rotated');
    expect(announce.keyId).toBe(previousKeyId);
    expect(verifies(announce, oldKeys)).toBe(true);
    expect(mesh.eventKeys().map((k) => k.keyId)).toEqual([keyId, previousKeyId]);
    await mesh.requestKeyRotation(a);
    const next = sent(a).at(-1)!;
    expect(next.keyId).toBe(keyId);
    expect(verifies(next, oldKeys)).toBe(false);
    expect(verifies(next, mesh.eventKeys())).toBe(true);
  });

  it('the feed shows events without secrets', async () => {
    const { mesh, a } = await setup();
    const feed = await mesh.feed(0, a);
    expect(feed.length).toBeGreaterThan(0);
    expect(JSON.stringify(feed)).not.toMatch(/"psk":"[A-Za-z0-9+/]{43}="/);
    expect(JSON.stringify(feed)).toContain('[redacted]');
  });

  it('another key file (or passphrase) cannot open the mesh secrets', async () => {
    const { t } = await setup();
    await expect(MeshService.open(t.store, silent, { sealing: testSealing() })).rejects.toMatchObject({ code: 'ML_ERR_CA_PASSPHRASE' });
  });
});

describe('mesh migration 101', () => {
  it('moves each node’s announced peers from the JSON column into one row per peer', async () => {
    const { default: Database } = await import('better-sqlite3');
    const { MIGRATIONS } = await import('../../src/server/store/migrations.js');
    const { MESH_MIGRATIONS } = await import('../../src/server/mesh/migrations.js');
    const db = new Database(':memory:');
    for (const m of [...MIGRATIONS, ...MESH_MIGRATIONS].filter((m) => m.version < 101)) db.exec(m.sqlite);
    db.prepare("INSERT INTO nodes (id, hostname, created_at) VALUES ('a', 'a', 0), ('b', 'b', 0), ('c', 'c', 0)").run();
    const peerB = { meshIp: '10.100.0.2', publicKey: wgKey(2), endpoints: ['192.0.2.2:51820'], pskTag: '00ff00ff00ff00ff' };
    db.prepare('INSERT INTO mesh_nodes (node_id, mesh_ip, announced) VALUES (?, ?, ?)').run('a', 1, JSON.stringify({ meshIp: '10.100.0.1', cidr: '10.100.0.0/16', peers: { b: peerB } }));
    db.prepare('INSERT INTO mesh_nodes (node_id, mesh_ip, announced) VALUES (?, ?, ?)').run('b', 2, JSON.stringify({ meshIp: '10.100.0.2', cidr: '10.100.0.0/16', peers: {} }));
    db.prepare("INSERT INTO mesh_nodes (node_id, mesh_ip) VALUES ('c', 3)").run(); // never told anything
    db.exec(MESH_MIGRATIONS.find((m) => m.version === 101)!.sqlite);
    expect(db.prepare('SELECT node_id, announced FROM mesh_nodes ORDER BY node_id').all()).toEqual([
      { node_id: 'a', announced: '{"meshIp":"10.100.0.1","cidr":"10.100.0.0/16"}' },
      { node_id: 'b', announced: '{"meshIp":"10.100.0.2","cidr":"10.100.0.0/16"}' },
      { node_id: 'c', announced: 'null' },
    ]);
    expect(db.prepare('SELECT * FROM mesh_announced_peers').all()).toEqual([
      { node_id: 'a', peer_id: 'b', mesh_ip: peerB.meshIp, public_key: peerB.publicKey, endpoints: JSON.stringify(peerB.endpoints), psk_tag: peerB.pskTag },
    ]);
    db.close();
  });
});

describe('MeshService paths (NAT reports in hello)', () => {
  it('a changed NAT report moves the pair: peers get peer_endpoint_changed with the path, relayPairs lists it, a restart keeps it', async () => {
    const { t, mesh, a, b, c, sent } = await setup();
    const hello = (i: number, nat: { mapping: 'none' | 'endpoint-independent' | 'endpoint-dependent' | 'unknown'; reflexive: string | null }) => ({ versions: [1], agentVersion: 't', wgPublicKey: wgKey(i), endpoints: [`192.0.2.${i}:51820`], nat });
    // a and b share the tag 'web', b and c 'db' (the default full mesh: all three pairs permitted).
    await mesh.agentOpened(a, hello(1, { mapping: 'endpoint-independent', reflexive: '203.0.113.1:51820' }), '127.0.0.1');
    await mesh.agentOpened(b, hello(2, { mapping: 'endpoint-independent', reflexive: '203.0.113.2:51820' }), '127.0.0.1');
    const ab = mesh.desiredState(a)!.peers.find((p) => p.nodeId === b)!;
    expect(ab).toMatchObject({ path: 'direct', endpoints: ['203.0.113.2:51820', '192.0.2.2:51820'] });
    expect(mesh.relayPairs()).toEqual([]);

    await mesh.agentOpened(b, hello(2, { mapping: 'endpoint-dependent', reflexive: '203.0.113.2:40000' }), '127.0.0.1');
    expect(sent(a).at(-1)!.envelope).toMatchObject({ type: 'peer_endpoint_changed', payload: { peers: [{ nodeId: b, endpoints: ['192.0.2.2:51820'], path: 'relay' }] } });
    expect(sent(b).at(-1)!.envelope).toMatchObject({ type: 'peer_endpoint_changed', payload: { peers: [{ nodeId: a, path: 'relay' }] } });
    // c reported nothing (no probe): reachable as announced, so its pairs stay direct.
    expect(mesh.desiredState(c)!.peers.every((p) => p.path === 'direct')).toBe(true);
    const [x, y] = [a, b].sort();
    expect(mesh.relayPairs()).toEqual([{ pairId: `${x}\u0000${y}`, a: x, b: y }]);
    expect(mesh.pairPaths().direct).toBe(2);
    expect(mesh.nodeInfo(b)!.nat).toEqual({ mapping: 'endpoint-dependent', reflexive: '203.0.113.2:40000' });
    // The pairs are computed once per change that can move a path (O(pairs): not on every connect).
    // A reconnect with the same mapping (a new reflexive port) reuses them; a changed mapping does not.
    const cached = mesh.relayPairs();
    await mesh.agentOpened(b, hello(2, { mapping: 'endpoint-dependent', reflexive: '203.0.113.2:40001' }), '127.0.0.1');
    expect(mesh.relayPairs()).toBe(cached);
    await mesh.agentOpened(c, hello(3, { mapping: 'unknown', reflexive: null }), '127.0.0.1');
    expect(mesh.relayPairs()).not.toBe(cached);
    // `unknown` cannot be reached at a port it announced: both of c's pairs join the relay ones.
    expect(mesh.relayPairs()).toHaveLength(3);
    await mesh.agentOpened(c, hello(3, { mapping: 'none', reflexive: null }), '127.0.0.1');

    // The store keeps reports and told paths: a restart has nothing new to send.
    const seqs = [a, b, c].map((id) => mesh.nodeInfo(id)!.lastSeq);
    const reopened = await MeshService.open(await t.reopen(), silent, { sealing: t.sealing });
    expect(reopened.nodeInfo(b)!.nat).toEqual({ mapping: 'endpoint-dependent', reflexive: '203.0.113.2:40001' });
    expect([a, b, c].map((id) => reopened.nodeInfo(id)!.lastSeq)).toEqual(seqs);
    expect(reopened.relayPairs()).toEqual([{ pairId: `${x}\u0000${y}`, a: x, b: y }]);
    await reopened.close();
  });

  it('switching: a peer.status down puts the pair on the relay’s list (its members are still told the direct endpoint), retryDirect lifts it; bad entries skipped, the rate capped', async () => {
    const { mesh, a, b } = await setup();
    const now = Date.now();
    const health = new PathHealth({ retryMs: 60_000, maxRetryMs: 600_000 });
    mesh.enableSwitching(health, { onlineSince: () => now - 600_000, lastHeard: () => Date.now(), heartbeatIntervalMs: 15_000 });
    const told = mesh.desiredState(a)!.peers.find((p) => p.nodeId === b)!;
    expect(told.path).toBe('direct');
    const endpoint = told.endpoints[0]!;
    expect(mesh.relayPairs()).toEqual([]);
    mesh.peerStatus(a, { peers: [{ nodeId: b, state: 'sideways', endpoint, handshakeAgeMs: null }] }, now);
    expect(mesh.relayPairs()).toEqual([]); // an entry that fails the schema is skipped
    mesh.peerStatus(a, { peers: [{ nodeId: b, state: 'down', endpoint, handshakeAgeMs: 3_000 }] }, now);
    const [x, y] = a < b ? [a, b] : [b, a];
    expect(mesh.relayPairs()).toEqual([{ pairId: `${x}\u0000${y}`, a: x, b: y }]);
    expect(mesh.pairPaths().direct).toBe(2); // a–c and b–c
    expect(mesh.desiredState(a)!.peers.find((p) => p.nodeId === b)).toMatchObject({ path: 'direct', endpoints: told.endpoints });
    expect(mesh.linkReport(a, b)).toMatchObject({ state: 'down', endpoint, handshakeAt: now - 3_000 });
    expect(mesh.retryDirect(now + 59_000)).toEqual([]);
    expect(mesh.retryDirect(now + 60_000)).toEqual([[x, y]]);
    expect(mesh.relayPairs()).toEqual([]);
    // 30 a minute from one node: the 31st and later are dropped.
    for (let i = 0; i < 40; i++) mesh.peerStatus(b, { peers: [{ nodeId: a, state: 'pending', endpoint: null, handshakeAgeMs: i }] }, now + 61_000);
    expect(mesh.linkReport(b, a)?.handshakeAt).toBe(now + 61_000 - 29);
  });

  it('a relay port may latch from the observed control source and a reported reflexive host, never a special address', async () => {
    const { mesh, a } = await setup();
    const hello = (reflexive: string | null) => ({ versions: [1], agentVersion: 't', wgPublicKey: wgKey(1), endpoints: ['192.0.2.1:51820'], nat: { mapping: 'endpoint-dependent' as const, reflexive } });
    await mesh.agentOpened(a, hello('203.0.113.9:40000'), '198.51.100.7');
    expect(mesh.observedIps(a)).toEqual(['198.51.100.7', '203.0.113.9']);
    await mesh.agentOpened(a, hello('[2001:db8::9]:40000'), '198.51.100.7');
    expect(mesh.observedIps(a)).toEqual(['198.51.100.7', '2001:db8::9']);
    // What the node says a STUN server saw is its own claim: the server's loopback, an unspecified,
    // multicast or link-local address would open its relay port to what no NAT shows.
    for (const reflexive of ['127.0.0.1:40000', '0.0.0.0:1', '[::1]:40000', '[::ffff:127.0.0.1]:2', '224.0.0.1:5', '[fe80::1]:7', '169.254.1.1:9']) {
      await mesh.agentOpened(a, hello(reflexive), '198.51.100.7');
      expect(mesh.observedIps(a), reflexive).toEqual(['198.51.100.7']);
    }
    // The relay's own address (the caller names it) is no reflexive host either, in whichever form it comes;
    // as the control connection's source it still counts (an agent on the server's host).
    await mesh.agentOpened(a, hello('[::ffff:203.0.113.1]:40000'), '198.51.100.7');
    expect(mesh.observedIps(a, new Set(['203.0.113.1']))).toEqual(['198.51.100.7']);
    expect(mesh.observedIps(a)).toEqual(['198.51.100.7', '::ffff:203.0.113.1']);
    await mesh.agentOpened(a, hello('203.0.113.1:40000'), '203.0.113.1');
    expect(mesh.observedIps(a, new Set(['203.0.113.1']))).toEqual(['203.0.113.1']);
    // The server's own observation counts even on loopback (tests, demos).
    await mesh.agentOpened(a, hello(null), '127.0.0.1');
    expect(mesh.observedIps(a)).toEqual(['127.0.0.1']);
  });

  it('a NAT report its peers would reject is refused before anything is stored', async () => {
    const { mesh, a } = await setup();
    expect(() => mesh.checkSelfReport(a, { nat: { mapping: 'symmetric', reflexive: null } as never }, 'hello')).toThrow(/hello: /);
    expect(() => mesh.checkSelfReport(a, { nat: { mapping: 'none', reflexive: 'x' } }, 'hello')).toThrow(expect.objectContaining({ code: 'ML_ERR_BAD_PAYLOAD' }));
    expect(mesh.nodeInfo(a)!.nat).toBeNull();
  });
});
