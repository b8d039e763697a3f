import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { openServerStore, SERVER_MIGRATIONS } from '../../src/server/features.js';
import { MIGRATIONS } from '../../src/server/store/migrations.js';
import { createToken, findUsableToken, hashToken, revokeToken, tokenState } from '../../src/server/tokens.js';
import { tempDir } from './helpers.js';

describe('store', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterAll(async () => {
    for (const c of cleanups) await c();
  });
  async function freshPath(): Promise<string> {
    const d = await tempDir('ml-store-');
    cleanups.push(d.cleanup);
    return `${d.path}/meshlink.db`;
  }

  it('applies numbered migrations once, in WAL mode with foreign keys on, synchronous=NORMAL between durable writes', async () => {
    const path = await freshPath();
    await (await openServerStore(path)).close();
    const s = await openServerStore(path);
    expect(await s.schemaVersion()).toBe(Math.max(...SERVER_MIGRATIONS.map((m) => m.version)));
    expect(s.synchronousLevel()).toBe(1);
    await s.close();
    const db = new Database(path, { readonly: true });
    expect(db.prepare('SELECT COUNT(*) AS n FROM schema_migrations').get()).toEqual({ n: SERVER_MIGRATIONS.length });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    db.close();
    const { statSync } = await import('node:fs');
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it('refuses a store from a newer meshlink', async () => {
    const path = await freshPath();
    await (await openServerStore(path)).close();
    const db = new Database(path);
    db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, ?, 0)').run('future');
    db.close();
    await expect(openServerStore(path)).rejects.toThrow(expect.objectContaining({ code: 'ML_ERR_STORE_SCHEMA' }));
  });

  it('stores only the token hash; a token is consumed exactly once; foreign keys are enforced', async () => {
    const path = await freshPath();
    const s = await openServerStore(path);
    const { token } = await createToken(s, { ttlMs: 60_000 });
    const db = new Database(path, { readonly: true });
    const raw = JSON.stringify(db.prepare('SELECT * FROM tokens').all());
    db.close();
    expect(raw).not.toContain(token);
    expect(raw).toContain(hashToken(token));
    const commit = (id: string, serial: string) =>
      s.commitEnrollment({
        tokenHash: hashToken(token),
        now: Date.now(),
        node: { id, hostname: 'h', agentVersion: null, existing: false },
        cert: { serial, notBefore: 0, notAfter: Date.now() + 1000, pem: 'x' },
      });
    expect(await commit('n1', 'aa')).toBe(true);
    expect(await commit('n2', 'bb')).toBe(false);
    expect(await s.getNode('n2')).toBeUndefined();
    await expect(s.insertCert('no-such-node', { serial: 'cc', notBefore: 0, notAfter: 1, pem: 'x' })).rejects.toThrow(/FOREIGN KEY/);
    const removed = await s.removeNode('n1', Date.now());
    expect(removed).toEqual({ removed: true, revokedSerials: ['aa'] });
    expect(await s.revokedSerials()).toEqual(['aa']);
    expect(await s.removeNode('n1', Date.now())).toEqual({ removed: false, revokedSerials: [] });
    expect(s.synchronousLevel()).toBe(1); // back to NORMAL after the durable revocation commit
    await s.close();
  });

  it('the enrollment commit runs the features\' hook inside its transaction: its writes commit with it, its throw rolls all back', async () => {
    const s = await openServerStore(await freshPath());
    s.database.sqlite!.exec('CREATE TABLE hook_rows (node_id TEXT PRIMARY KEY) STRICT');
    const { token } = await createToken(s, { ttlMs: 60_000 });
    const commit = (id: string, serial: string, hook: (c: { node: { id: string } }) => Promise<void>) =>
      s.commitEnrollment(
        { tokenHash: hashToken(token), now: Date.now(), node: { id, hostname: 'h', agentVersion: null, existing: false }, cert: { serial, notBefore: 0, notAfter: Date.now() + 1000, pem: 'x' } },
        hook,
      );
    const insert = async (c: { node: { id: string } }): Promise<void> => void s.database.sqlite!.prepare('INSERT INTO hook_rows (node_id) VALUES (?)').run(c.node.id);

    // A hook that fails after writing: nothing of the enrollment remains, and the token stays usable.
    await expect(
      commit('n1', 'aa', async (c) => {
        await insert(c);
        throw new Error('feature refused');
      }),
    ).rejects.toThrow('feature refused');
    expect(await s.getNode('n1')).toBeUndefined();
    expect((await s.getToken(hashToken(token)))!.consumedAt).toBeNull();
    expect(s.database.sqlite!.prepare('SELECT COUNT(*) AS n FROM hook_rows').get()).toEqual({ n: 0 });
    expect(s.database.sqlite!.prepare('SELECT COUNT(*) AS n FROM certs').get()).toEqual({ n: 0 });

    // The same token then enrolls, with the hook's row; a lost race runs no hook.
    expect(await commit('n2', 'bb', insert)).toBe(true);
    expect(await s.getNode('n2')).toBeDefined();
    expect(s.database.sqlite!.prepare('SELECT node_id FROM hook_rows').all()).toEqual([{ node_id: 'n2' }]);
    let ran = false;
    expect(await commit('n3', 'cc', async () => void (ran = true))).toBe(false);
    expect(ran).toBe(false);
    await s.close();
  });

  it('the core keeps no tags: tokens are written and read without them', async () => {
    const s = await openServerStore(await freshPath());
    const { token } = await createToken(s, { ttlMs: 60_000 });
    expect(Object.keys((await s.getToken(hashToken(token)))!).sort()).toEqual(['certSerial', 'consumedAt', 'createdAt', 'csrSha256', 'expiresAt', 'hash', 'id', 'nodeId', 'revokedAt']);
    const nodeColumns = (s.database.sqlite!.prepare('PRAGMA table_info(nodes)').all() as Array<{ name: string }>).map((c) => c.name);
    expect(nodeColumns).not.toContain('tags');
    await s.close();
  });

  it('a revoked token is refused by the pre-check and by the enrollment commit itself; a used one cannot be revoked', async () => {
    const s = await openServerStore(await freshPath());
    const a = await createToken(s, { ttlMs: 60_000 });
    const b = await createToken(s, { ttlMs: 60_000 });
    expect(a.id).toMatch(/^[0-9a-f]{16}$/);
    expect(a.id).not.toBe(b.id);
    const now = Date.now();
    const revoked = await revokeToken(s, a.id, now);
    expect(tokenState(revoked, now)).toBe('revoked');
    await expect(findUsableToken(s, a.token, now)).rejects.toThrow(expect.objectContaining({ code: 'ML_ERR_TOKEN_INVALID' }));
    // Even past the pre-check (an enrollment that read the token before the revocation), the commit's
    // own condition refuses it.
    const commit = (tokenHash: string, id: string) =>
      s.commitEnrollment({ tokenHash, now: Date.now(), node: { id, hostname: 'h', agentVersion: null, existing: false }, cert: { serial: id, notBefore: 0, notAfter: Date.now() + 1000, pem: 'x' } });
    expect(await commit(hashToken(a.token), 'n1')).toBe(false);
    expect(await s.getNode('n1')).toBeUndefined();
    // A second revocation keeps the first time.
    expect((await revokeToken(s, a.id, now + 5)).revokedAt).toBe(now);
    expect(await commit(hashToken(b.token), 'n2')).toBe(true);
    await expect(revokeToken(s, b.id)).rejects.toThrow(expect.objectContaining({ code: 'ML_ERR_TOKEN_USED' }));
    await expect(revokeToken(s, '0000000000000000')).rejects.toThrow(expect.objectContaining({ code: 'ML_ERR_TOKEN_NOT_FOUND' }));
    expect((await s.listTokens(10)).map((t) => [t.id, tokenState(t, Date.now())])).toEqual([
      [b.id, 'used'],
      [a.id, 'revoked'],
    ]);
    await s.close();
  });

  it('migration 3 gives the tokens of an older store distinct ids', async () => {
    const path = await freshPath();
    // A store as a release before migration 3 left it (the Store class itself speaks only the new schema).
    const old = new Database(path);
    old.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT');
    for (const m of MIGRATIONS.filter((x) => x.version < 3)) {
      old.exec(m.sqlite);
      old.prepare('INSERT INTO schema_migrations VALUES (?, ?, 0)').run(m.version, m.name);
    }
    for (const h of ['h1', 'h2', 'h3']) old.prepare('INSERT INTO tokens (hash, created_at, expires_at) VALUES (?, 1, 2)').run(h);
    old.close();
    const s = await openServerStore(path);
    const ids = (await s.listTokens(10)).map((t) => t.id);
    expect(ids).toHaveLength(3);
    expect(new Set(ids).size).toBe(3);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{16}$/);
    await s.close();
  });
});
