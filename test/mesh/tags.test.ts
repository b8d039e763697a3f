import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { openServerStore } from '../../src/server/features.js';
import { listNodes } from '../../src/server/nodes.js';
import { meshListingLookup } from '../../src/server/mesh/listing.js';
import { MESH_MIGRATIONS } from '../../src/server/mesh/migrations.js';
import { tagNode } from '../../src/server/mesh/operator.js';
import { MeshService } from '../../src/server/mesh/service.js';
import { MeshStore } from '../../src/server/mesh/store.js';
import { MIGRATIONS } from '../../src/server/store/migrations.js';
import type { Store } from '../../src/server/store/store.js';
import { createToken, hashToken } from '../../src/server/tokens.js';
import { enrollNode, silent, tempStore, testSealing } from './helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** The enrollment commit with the mesh's hook, as the server runs it (see ./helpers.ts enrollNode). */
function commitWith(store: Store, tokenHash: string, node: { id: string; existing: boolean }): Promise<boolean> {
  const mesh = new MeshStore(store.database);
  return store.commitEnrollment(
    {
      tokenHash,
      now: Date.now(),
      node: { id: node.id, hostname: `h-${node.id}`, agentVersion: null, existing: node.existing },
      cert: { serial: randomUUID().replace(/-/g, ''), notBefore: Date.now(), notAfter: Date.now() + 86_400_000, pem: 'test' },
    },
    (commit, tx) => mesh.claimTokenTags(commit.tokenHash, commit.node.id, tx),
  );
}

const tagsOf = async (store: Store, id: string): Promise<string[] | undefined> => (await new MeshStore(store.database).listing()).get(id)?.tags;

describe('mesh tags', () => {
  it('are the mesh’s: a node takes its token’s tags at enrollment; a re-enrollment token with tags replaces them, one without keeps them', async () => {
    const t = await tempStore();
    cleanups.push(() => t.cleanup());
    const db = new MeshStore(t.store.database);
    const a = await enrollNode(t.store, 'a', ['web']);
    const plain = await enrollNode(t.store, 'plain');
    expect(await tagsOf(t.store, a)).toEqual(['web']);
    expect(await tagsOf(t.store, plain)).toEqual([]);

    const tagged = (await createToken(t.store, { ttlMs: 60_000, nodeId: a })).token;
    expect(await db.tagToken(hashToken(tagged), ['db'])).toBe(true);
    expect(await commitWith(t.store, hashToken(tagged), { id: a, existing: true })).toBe(true);
    expect(await tagsOf(t.store, a)).toEqual(['db']);
    expect(await db.tagToken(hashToken(tagged), ['late'])).toBe(false); // a used token takes no tags

    const untagged = (await createToken(t.store, { ttlMs: 60_000, nodeId: a })).token;
    expect(await commitWith(t.store, hashToken(untagged), { id: a, existing: true })).toBe(true);
    expect(await tagsOf(t.store, a)).toEqual(['db']);

    // By hostname, as the CLI names it (the re-enrollment renamed the node).
    expect(await tagNode(t.store, `h-${a}`, ['ops'], 'add')).toMatchObject({ id: a, tags: ['db', 'ops'] });
    // The node list's tags are the mesh's answer to the core's listing question.
    expect((await listNodes(t.store, undefined, () => meshListingLookup(t.store))).find((n) => n.id === a)!.tags).toEqual(['db', 'ops']);
    expect((await tagNode(t.store, a, ['db'], 'remove')).tags).toEqual(['ops']);
    // Two changes at once both land (each reads and writes in its own transaction).
    await Promise.all([tagNode(t.store, a, ['x'], 'add'), tagNode(t.store, a, ['y'], 'add')]);
    expect((await tagsOf(t.store, a))!.sort()).toEqual(['ops', 'x', 'y']);
  });

  it('a token’s tags reach the node only if the enrollment commits', async () => {
    const t = await tempStore();
    cleanups.push(() => t.cleanup());
    const { token } = await createToken(t.store, { ttlMs: 60_000 });
    await new MeshStore(t.store.database).tagToken(hashToken(token), ['web']);
    const id = randomUUID();
    expect(await commitWith(t.store, hashToken(token), { id, existing: false })).toBe(true);
    // The same token again: the commit loses (consumed), so the second node gets nothing.
    const other = randomUUID();
    expect(await commitWith(t.store, hashToken(token), { id: other, existing: false })).toBe(false);
    expect(t.store.database.sqlite!.prepare('SELECT node_id, tags FROM mesh_node_tags').all()).toEqual([{ node_id: id, tags: '["web"]' }]);
  });
});

describe('mesh migration 102', () => {
  it('moves every tag out of the core’s tokens and nodes into the mesh’s tables; a pending tagged token still tags its node', async () => {
    const t = await tempStore();
    const path = `${t.dir}/old.db`;
    cleanups.push(() => t.cleanup());
    // A store as the previous release left it: the core and mesh migrations up to 101.
    const old = new Database(path);
    old.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT');
    for (const m of [...MIGRATIONS, ...MESH_MIGRATIONS].filter((m) => m.version < 102).sort((x, y) => x.version - y.version)) {
      old.exec(m.sqlite);
      old.prepare('INSERT INTO schema_migrations VALUES (?, ?, 0)').run(m.version, m.name);
    }
    const future = Date.now() + 3_600_000;
    old.prepare(`INSERT INTO nodes (id, hostname, created_at, tags, removed_at) VALUES
      ('n1', 'one', 0, '["web","ops"]', NULL), ('n2', 'two', 0, '[]', NULL), ('n3', 'three', 0, '["db"]', 5)`).run();
    old.prepare(`INSERT INTO tokens (hash, created_at, expires_at, consumed_at, node_id, tags) VALUES
      ('pending', 0, ?, NULL, NULL, '["edge"]'), ('used', 0, ?, 1, NULL, '["db"]'), ('untagged', 0, ?, NULL, NULL, '[]'),
      ('rebind', 0, ?, NULL, 'n1', '["web"]')`).run(future, future, future, future);
    old.close();

    const s = await openServerStore(path);
    cleanups.push(() => s.close());
    const rows = (sql: string): unknown[] => s.database.sqlite!.prepare(sql).all();
    expect(rows('SELECT node_id, tags FROM mesh_node_tags ORDER BY node_id')).toEqual([
      { node_id: 'n1', tags: '["web","ops"]' },
      { node_id: 'n3', tags: '["db"]' }, // a removed node keeps its tags too
    ]);
    expect(rows('SELECT token_hash, tags FROM mesh_token_tags ORDER BY token_hash')).toEqual([
      { token_hash: 'pending', tags: '["edge"]' },
      { token_hash: 'rebind', tags: '["web"]' },
      { token_hash: 'used', tags: '["db"]' },
    ]);
    expect((rows('PRAGMA table_info(nodes)') as Array<{ name: string }>).map((c) => c.name)).not.toContain('tags');
    // The enrollment triggers and their table are gone; the triggers left keep seq columns (core 5, mesh 112).
    expect(rows("SELECT name FROM sqlite_master WHERE type = 'trigger' OR name = 'mesh_enroll_tags' ORDER BY name")).toEqual([{ name: 'certs_seq' }, { name: 'mesh_signing_keys_seq' }, { name: 'tokens_seq' }]);
    expect(await tagsOf(s, 'n1')).toEqual(['web', 'ops']);
    expect(await tagsOf(s, 'n2')).toEqual([]);

    // Tokens created before the upgrade enroll with their tags.
    expect(await commitWith(s, 'pending', { id: 'n4', existing: false })).toBe(true);
    expect(await commitWith(s, 'untagged', { id: 'n5', existing: false })).toBe(true);
    expect(await tagsOf(s, 'n4')).toEqual(['edge']);
    expect(await tagsOf(s, 'n5')).toEqual([]);
    const mesh = await MeshService.open(s, silent, { sealing: testSealing() });
    cleanups.push(() => mesh.close());
    expect(['n1', 'n2', 'n4', 'n5'].map((id) => mesh.nodeInfo(id)!.tags)).toEqual([['web', 'ops'], [], ['edge'], []]);
  });
});
