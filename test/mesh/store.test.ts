import { randomUUID } from 'node:crypto';
import { afterEach, beforeAll, describe, expect } from 'vitest';
import { SERVER_MIGRATIONS } from '../../src/server/features.js';
import { ipToInt } from '../../src/server/mesh/addresses.js';
import { MeshService } from '../../src/server/mesh/service.js';
import { MeshStore } from '../../src/server/mesh/store.js';
import type { Store } from '../../src/server/store/store.js';
import { storeBackends } from '../helpers/store-backends.js';
import { recordingSessions, silent, testSealing, wgKey } from './helpers.js';

/**
 * The mesh store module and the service over it, on both backends (a SQLite file; a throwaway
 * PostgreSQL cluster, test/helpers/postgres.ts): the same rows and order from either, writes of a
 * transaction committed or rolled back together, and the orders the synchronous store gave for free
 * (a node's seqs sent in order, one address per node) kept where PostgreSQL's queries are round
 * trips that may overlap.
 */

const BACKENDS = storeBackends();
// Registered after the backends' hooks, so run before them: the services close before their stores.
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const i8 = (s: string): number => Number(s.slice(1)) & 255;

/** A token as the core stores one (only its hash matters here). */
async function token(store: Store, nodeId: string | null = null): Promise<string> {
  const hash = randomUUID();
  await store.insertToken({ hash, id: randomUUID(), createdAt: Date.now(), expiresAt: Date.now() + 60_000, nodeId });
  return hash;
}

/** The enrollment commit with the mesh's hook, as the server runs it. */
async function enroll(store: Store, tokenHash: string, id: string, existing = false, after?: () => void): Promise<boolean> {
  const mesh = new MeshStore(store.database);
  return store.commitEnrollment(
    {
      tokenHash,
      now: Date.now(),
      node: { id, hostname: `h-${id}`, agentVersion: null, existing },
      cert: { serial: randomUUID().replace(/-/g, ''), notBefore: Date.now(), notAfter: Date.now() + 86_400_000, pem: 'test' },
    },
    async (commit, tx) => {
      await mesh.claimTokenTags(commit.tokenHash, commit.node.id, tx);
      after?.();
    },
  );
}

describe.each(BACKENDS.map((b) => [b.title, b] as const))('the mesh store on %s', (_title, backend) => {
  beforeAll(() => backend.ready(), 120_000);
  const openStore = (): Promise<Store> => backend.openStore(SERVER_MIGRATIONS);

  backend.it('reads back what it wrote, in the same order, from either backend', async () => {
    const store = await openStore();
    const db = new MeshStore(store.database);

    await db.setSetting('k', '1');
    await db.setSetting('k', '2');
    expect(await db.getSetting('k')).toBe('2');
    await db.deleteSetting('k');
    expect(await db.getSetting('k')).toBeUndefined();

    await db.insertMaster(Buffer.from([1]), Buffer.from([2]));
    await db.replaceMaster(Buffer.from([9]), Buffer.from([3]), Buffer.from([3])); // not the stored blob: no change
    expect(await db.getMaster()).toEqual({ blob: Buffer.from([1]), salt: Buffer.from([2]) });
    await db.replaceMaster(Buffer.from([1]), Buffer.from([3]), Buffer.from([4]));
    expect(await db.getMaster()).toEqual({ blob: Buffer.from([3]), salt: Buffer.from([4]) });

    // Signing keys by creation time, insertion order breaking ties (mesh migration 112's seq).
    for (const [id, at] of [['k-late-1', 10], ['k-late-2', 10], ['k-early', 5], ['k-late-3', 10]] as const) await db.insertSigningKey(id, Buffer.from(id), Buffer.from([0]), at);
    expect((await db.signingKeys()).map((k) => k.keyId)).toEqual(['k-early', 'k-late-1', 'k-late-2', 'k-late-3']);

    // A token's tags reach the node it enrolls in the enrollment's transaction; a used token takes none.
    const tagged = await token(store);
    expect(await db.tagToken(tagged, ['web', 'db'])).toBe(true);
    expect(await db.tokenTags(tagged)).toEqual(['web', 'db']);
    expect(await enroll(store, tagged, 'n1')).toBe(true);
    expect(await db.tagToken(tagged, ['late'])).toBe(false);
    expect(await db.tagToken('no-such-token', ['x'])).toBe(false);
    expect(await enroll(store, await token(store), 'n2')).toBe(true);
    expect(await db.allTokenTags()).toEqual(new Map([[tagged, ['web', 'db']]]));

    expect(await db.nodesWithoutMesh()).toEqual(['n1', 'n2'].sort()); // enrolled in one ms or two: by time, then id
    await db.transaction(async (tx) => {
      await tx.insertMeshNode('n2', 7);
      await tx.insertMeshNode('n1', 9);
    });
    expect(await db.usedAddresses()).toEqual(new Set([7, 9]));
    expect(await db.nodesWithoutMesh()).toEqual([]);
    expect(await db.setTags('n2', ['ops'])).toBe(true);
    expect(await db.setTags('nobody', ['ops'])).toBe(false);
    await db.updateWg('n1', wgKey(1), ['192.0.2.1:51820'], '198.51.100.1', { mapping: 'none', reflexive: null });
    const nodes = await db.meshNodes();
    expect(nodes.map((n) => [n.nodeId, n.meshIp, n.tags])).toEqual([['n2', 7, ['ops']], ['n1', 9, ['web', 'db']]]); // by address
    expect(nodes[1]).toMatchObject({ hostname: 'h-n1', wgPublicKey: wgKey(1), endpoints: ['192.0.2.1:51820'], observedAddr: '198.51.100.1', nat: { mapping: 'none', reflexive: null }, lastSeq: 0, announced: 'null' });
    expect((await db.listing()).get('n1')).toEqual({ meshIp: 9, wgPublicKey: wgKey(1), tags: ['web', 'db'], endpoints: ['192.0.2.1:51820'], observedAddr: '198.51.100.1', nat: { mapping: 'none', reflexive: null } });
    expect([...(await db.listing('n2')).keys()]).toEqual(['n2']);

    // Events, views, feed: all of one transaction.
    const feedIds = await db.transaction(async (tx) => {
      for (const seq of [1, 2, 3]) await tx.insertEvent({ nodeId: 'n1', seq, type: 'peer_added', ts: 100 + seq, sealed: Buffer.from([0, seq]), signature: Buffer.from([seq]), keyId: 'k' });
      await tx.upsertAnnouncedPeer('n1', 'n2', { meshIp: '10.0.0.7', publicKey: wgKey(2), endpoints: [], pskTag: 'a', path: null });
      await tx.upsertAnnouncedPeer('n1', 'n2', { meshIp: '10.0.0.7', publicKey: wgKey(2), endpoints: ['192.0.2.2:51820'], pskTag: 'b', path: 'relay' });
      await tx.setAnnounced('n1', JSON.stringify({ meshIp: '10.0.0.9', cidr: '10.0.0.0/24' }), 3);
      return [
        await tx.insertFeed({ ts: 1, nodeId: 'n1', kind: 'event', type: 'peer_added', seq: 1, detail: '{}' }),
        await tx.insertFeed({ ts: 2, nodeId: null, kind: 'drift', type: 'drift.report', seq: null, detail: '{"x":1}' }),
        await tx.insertFeed({ ts: 3, nodeId: 'n1', kind: 'event', type: 'peer_added', seq: 2, detail: '{}' }),
      ];
    });
    expect(feedIds[1]).toBe(feedIds[0]! + 1);
    expect((await db.eventsAfter('n1', 1)).map((e) => [e.seq, e.ts, [...e.sealed], [...e.signature]])).toEqual([[2, 102, [0, 2], [2]], [3, 103, [0, 3], [3]]]);
    expect([await db.oldestSeq('n1'), await db.oldestSeq('n2'), await db.eventTs('n1', 2), await db.eventTs('n1', 9)]).toEqual([1, null, 102, undefined]);
    await db.transaction((tx) => tx.pruneEvents('n1', 2));
    expect(await db.oldestSeq('n1')).toBe(3);
    expect(await db.announcedPeersOf('n1')).toEqual([{ nodeId: 'n1', peerId: 'n2', meshIp: '10.0.0.7', publicKey: wgKey(2), endpoints: ['192.0.2.2:51820'], pskTag: 'b', path: 'relay' }]);
    expect((await db.meshNodes()).find((n) => n.nodeId === 'n1')).toMatchObject({ lastSeq: 3, announced: '{"meshIp":"10.0.0.9","cidr":"10.0.0.0/24"}' });
    expect((await db.feedAfter(0, null, 10)).map((r) => r.id)).toEqual(feedIds);
    expect((await db.feedAfter(feedIds[0]!, 'n1', 10)).map((r) => [r.id, r.seq])).toEqual([[feedIds[2], 2]]);
    expect(await db.feedAfter(0, null, 1)).toEqual([{ id: feedIds[0], ts: 1, nodeId: 'n1', kind: 'event', type: 'peer_added', seq: 1, detail: '{}' }]);
    expect(await db.lastFeedId()).toBe(feedIds[2]);
    await db.pruneFeed(feedIds[1]!);
    expect((await db.feedAfter(0, null, 10)).map((r) => r.id)).toEqual([feedIds[2]]);

    await db.transaction(async (tx) => {
      await tx.insertPsk('n1', 'n2', Buffer.from([5]), 1);
      await tx.insertPsk('a', 'b', Buffer.from([6]), 1);
    });
    expect((await db.psks()).sort((x, y) => x.a.localeCompare(y.a))).toEqual([{ a: 'a', b: 'b', sealed: Buffer.from([6]) }, { a: 'n1', b: 'n2', sealed: Buffer.from([5]) }]);

    // A removed node leaves the mesh with its address, PSKs, events and view.
    await store.removeNode('n1', Date.now());
    expect(await db.removedMeshNodes()).toEqual(['n1']);
    await db.transaction((tx) => tx.deleteMeshNode('n1'));
    expect(await db.usedAddresses()).toEqual(new Set([7]));
    expect([await db.oldestSeq('n1'), await db.announcedPeersOf('n1'), (await db.psks()).map((p) => p.a)]).toEqual([null, [], ['a']]);
  });

  backend.it('a transaction commits all of its writes or none; the enrollment hook rolls back with the enrollment', async () => {
    const store = await openStore();
    const db = new MeshStore(store.database);
    await expect(
      db.transaction(async (tx) => {
        await tx.setSetting('half', 'written');
        await tx.insertFeed({ ts: 1, nodeId: null, kind: 'drift', type: 't', seq: null, detail: '{}' });
        throw new Error('fails midway');
      }),
    ).rejects.toThrow('fails midway');
    expect([await db.getSetting('half'), await db.lastFeedId()]).toEqual([undefined, 0]);
    // A transaction's store opens no second one (on SQLite it would wait for itself).
    await expect(db.transaction((tx) => tx.transaction(async () => undefined))).rejects.toThrow(/already inside a transaction/);

    const tagged = await token(store);
    await db.tagToken(tagged, ['web']);
    await expect(enroll(store, tagged, 'n1', false, () => { throw new Error('a later hook fails'); })).rejects.toThrow('a later hook fails');
    expect((await db.listing()).get('n1')).toBeUndefined();
    expect(await enroll(store, tagged, 'n1')).toBe(true); // the token was not consumed either
    expect((await db.listing()).get('n1')!.tags).toEqual(['web']);
    // A re-enrollment with an untagged token keeps the tags; one with tags replaces them.
    expect(await enroll(store, await token(store, 'n1'), 'n1', true)).toBe(true);
    expect((await db.listing()).get('n1')!.tags).toEqual(['web']);
    const retag = await token(store, 'n1');
    await db.tagToken(retag, ['db']);
    expect(await enroll(store, retag, 'n1', true)).toBe(true);
    expect((await db.listing()).get('n1')!.tags).toEqual(['db']);
  });

  backend.it('the rows a transaction queues are written at its commit as the calls in order would leave them', async () => {
    const store = await openStore();
    const db = new MeshStore(store.database);
    for (const [i, id] of ['n1', 'n2'].entries()) {
      await enroll(store, await token(store), id);
      await db.transaction((tx) => tx.insertMeshNode(id, i + 1));
    }
    const peer = (i: number) => ({ meshIp: `10.0.0.${i}`, publicKey: wgKey(i), endpoints: [`192.0.2.${i}:51820`], pskTag: `t${i}`, path: null });
    const event = (nodeId: string, seq: number) => ({ nodeId, seq, type: 'peer_added', ts: seq, sealed: Buffer.from([0]), signature: Buffer.from([1]), keyId: 'k' });
    await db.transaction(async (tx) => {
      // 70 rows: statements of 64, 4, 1 and 1 rows.
      for (let i = 1; i <= 70; i++) await tx.upsertAnnouncedPeer('n', `p${i}`, peer(i));
      await tx.upsertAnnouncedPeer('n', 'p1', { ...peer(1), pskTag: 'again' }); // the last one for a pair wins
      await tx.deleteAnnouncedPeers('n', ['p2']); // a delete drops what was queued before it
      await tx.upsertAnnouncedPeer('m', 'p1', peer(1));
      await tx.deleteAnnouncedOf('m');
      await tx.upsertAnnouncedPeer('m', 'p3', peer(3)); // after the delete: kept
      for (let seq = 1; seq <= 5; seq++) await tx.insertEvent(event('n', seq));
      await tx.pruneEvents('n', 2);
      await tx.insertEvent(event('o', 1));
      await tx.insertPsk('a', 'b', Buffer.from([1]), 1);
      await tx.insertPsk('a', 'c', Buffer.from([2]), 1);
      await tx.deletePsks([['a', 'b']]);
      // Heads of mesh_nodes rows: the last value per node wins; a node without a row is no error.
      await tx.setAnnounced('n1', '{"meshIp":"10.0.0.1","cidr":"10.0.0.0/24"}', 4);
      await tx.setLastSeq('n1', 6);
      await tx.setLastSeq('n2', 3);
      await tx.setLastSeq('n2', 9);
      await tx.setAnnounced('nobody', 'null', 1);
      for (let i = 0; i < 21; i++) await tx.queueFeed({ ts: i, nodeId: 'n', kind: 'event', type: 'peer_added', seq: i, detail: '{}' });
      // Nothing is written before the commit: the root store (outside the transaction) sees none yet.
      expect(await tx.announcedPeersOf('n')).toEqual([]);
    });
    expect((await db.meshNodes()).map((r) => [r.nodeId, r.announced, r.lastSeq])).toEqual([
      ['n1', '{"meshIp":"10.0.0.1","cidr":"10.0.0.0/24"}', 6],
      ['n2', 'null', 9],
    ]);
    const told = await db.announcedPeersOf('n');
    expect(told).toHaveLength(69);
    expect(told.find((p) => p.peerId === 'p1')!.pskTag).toBe('again');
    expect(told.some((p) => p.peerId === 'p2')).toBe(false);
    expect((await db.announcedPeersOf('m')).map((p) => p.peerId)).toEqual(['p3']);
    expect((await db.eventsAfter('n', 0)).map((e) => e.seq)).toEqual([3, 4, 5]);
    // Deletes of many peers at once: 69 = 64 + 4 + 1 per statement.
    await db.transaction((tx) => tx.deleteAnnouncedPeers('n', [...told.map((p) => p.peerId).filter((id) => id !== 'p70'), 'not-there']));
    expect((await db.announcedPeersOf('n')).map((p) => p.peerId)).toEqual(['p70']);
    expect((await db.eventsAfter('o', 0)).map((e) => e.seq)).toEqual([1]);
    expect((await db.psks()).map((p) => `${p.a}-${p.b}`)).toEqual(['a-c']);
    // Many pairs at once (70: 64 + 4 + 1 + 1 per statement), pairs that are not there ignored.
    const pairs = Array.from({ length: 70 }, (_, i) => ['x', `y${String(i).padStart(2, '0')}`] as [string, string]);
    await db.transaction(async (tx) => {
      for (const [a, b] of pairs) await tx.insertPsk(a, b, Buffer.from([i8(b)]), 1);
    });
    await db.transaction((tx) => tx.deletePsks([...pairs.slice(1), ['a', 'nobody']]));
    expect((await db.psks()).map((p) => `${p.a}-${p.b}`).sort()).toEqual(['a-c', 'x-y00']);
    const feed = await db.feedAfter(0, null, 100);
    expect(feed.map((r) => r.seq)).toEqual(Array.from({ length: 21 }, (_, i) => i)); // ids in the order queued
    // A prune in a later transaction reaches the stored rows.
    await db.transaction((tx) => tx.pruneEvents('n', 4));
    expect((await db.eventsAfter('n', 0)).map((e) => e.seq)).toEqual([5]);
    // A transaction that throws writes none of its queue.
    await expect(db.transaction(async (tx) => {
      await tx.insertEvent(event('q', 1));
      throw new Error('no');
    })).rejects.toThrow('no');
    expect(await db.eventsAfter('q', 0)).toEqual([]);
  });

  backend.it('the service: one address per node under concurrent sweeps, and each node’s events in seq order under concurrent publishes', async () => {
    const store = await openStore();
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      ids.push(`n${i}`);
      await enroll(store, await token(store), `n${i}`);
    }
    const sealing = testSealing();
    const mesh = await MeshService.open(store, silent, { sealing });
    cleanups.push(() => mesh.close());
    const hub = recordingSessions();
    mesh.setDelivery(hub);
    const sessions = new Map(ids.map((id) => [id, hub.connect(id)]));
    for (const [i, id] of ids.entries()) {
      await mesh.agentOpened(id, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(i + 1), endpoints: [`192.0.2.${i + 1}:51820`] }, '127.0.0.1');
      await mesh.replay(sessions.get(id)!.agent, 0);
    }

    // Nodes enroll while sweeps run from every side (the timer, connects of unknown nodes).
    const joined: string[] = [];
    for (let i = 4; i < 12; i++) {
      joined.push(`n${i}`);
      await enroll(store, await token(store), `n${i}`);
    }
    await Promise.all([
      mesh.sweepAndRecompute(),
      ...joined.map((id, i) => mesh.agentOpened(id, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(20 + i), endpoints: [`192.0.2.${20 + i}:51820`] }, '127.0.0.1')),
      mesh.sweepAndRecompute(),
    ]);
    const all = [...ids, ...joined];
    const ips = all.map((id) => mesh.nodeInfo(id)?.meshIp);
    expect(ips.every((ip) => ip !== undefined)).toBe(true);
    expect(new Set(ips).size).toBe(all.length);
    expect(await new MeshStore(store.database).usedAddresses()).toEqual(new Set(all.map((id) => ipToInt(mesh.nodeInfo(id)!.meshIp))));

    // Publishes to one node from many callers at once, and a recompute: the node gets every seq once, in order.
    const a = ids[0]!;
    await Promise.all([
      ...Array.from({ length: 20 }, (_, i) => mesh.publish(a, 'action_request', { action: 'noop', args: { i: String(i) } })),
      mesh.publishAll('action_request', { action: 'all' }),
      mesh.setPolicy({ rules: [{ from: 'web', to: 'web' }] }),
    ]);
    const seqs = sessions.get(a)!.sent.map((e) => e.envelope.seq);
    expect(seqs).toEqual(Array.from({ length: mesh.nodeInfo(a)!.lastSeq }, (_, i) => i + 1));
    // What each node was told is stored: a restart loads it back and has nothing new to send.
    await mesh.close();
    const again = await MeshService.open(store, silent, { sealing });
    cleanups.push(() => again.close());
    expect(all.map((id) => again.nodeInfo(id)!.lastSeq)).toEqual(all.map((id) => mesh.nodeInfo(id)!.lastSeq));
    expect(await again.recompute()).toEqual([]);
    expect((await again.feed(0, a, 10_000)).filter((e) => e.kind === 'event').map((e) => e.seq)).toEqual(seqs);
  });
});
