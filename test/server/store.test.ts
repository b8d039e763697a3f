import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { openServerStore, SERVER_MIGRATIONS } from '../../src/server/features.js';
import { createToken, hashToken } from '../../src/server/tokens.js';
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
    openServerStore(path).close();
    const s = openServerStore(path);
    expect(s.schemaVersion()).toBe(Math.max(...SERVER_MIGRATIONS.map((m) => m.version)));
    expect(s.synchronousLevel()).toBe(1);
    s.close();
    const db = new Database(path, { readonly: true });
    expect(db.prepare('SELECT COUNT(*) AS n FROM schema_migrations').get()).toEqual({ n: SERVER_MIGRATIONS.length });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    db.close();
    const { statSync } = await import('node:fs');
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it('refuses a store from a newer meshlink', async () => {
    const path = await freshPath();
    openServerStore(path).close();
    const db = new Database(path);
    db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, ?, 0)').run('future');
    db.close();
    expect(() => openServerStore(path)).toThrow(expect.objectContaining({ code: 'ML_ERR_STORE_SCHEMA' }));
  });

  it('stores only the token hash; a token is consumed exactly once; foreign keys are enforced', async () => {
    const path = await freshPath();
    const s = openServerStore(path);
    const { token } = createToken(s, { ttlMs: 60_000 });
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
    expect(commit('n1', 'aa')).toBe(true);
    expect(commit('n2', 'bb')).toBe(false);
    expect(s.getNode('n2')).toBeUndefined();
    expect(() => s.insertCert('no-such-node', { serial: 'cc', notBefore: 0, notAfter: 1, pem: 'x' })).toThrow(/FOREIGN KEY/);
    const removed = s.removeNode('n1', Date.now());
    expect(removed).toEqual({ removed: true, revokedSerials: ['aa'] });
    expect(s.revokedSerials()).toEqual(['aa']);
    expect(s.removeNode('n1', Date.now())).toEqual({ removed: false, revokedSerials: [] });
    expect(s.synchronousLevel()).toBe(1); // back to NORMAL after the durable revocation commit
    s.close();
  });

  it('the enrollment commit runs the features\' hook inside its transaction: its writes commit with it, its throw rolls all back', async () => {
    const s = openServerStore(await freshPath());
    s.database.exec('CREATE TABLE hook_rows (node_id TEXT PRIMARY KEY) STRICT');
    const { token } = createToken(s, { ttlMs: 60_000 });
    const commit = (id: string, serial: string, hook: (c: { node: { id: string } }) => void) =>
      s.commitEnrollment(
        { tokenHash: hashToken(token), now: Date.now(), node: { id, hostname: 'h', agentVersion: null, existing: false }, cert: { serial, notBefore: 0, notAfter: Date.now() + 1000, pem: 'x' } },
        hook,
      );
    const insert = (c: { node: { id: string } }) => void s.database.prepare('INSERT INTO hook_rows (node_id) VALUES (?)').run(c.node.id);

    // A hook that fails after writing: nothing of the enrollment remains, and the token stays usable.
    expect(() =>
      commit('n1', 'aa', (c) => {
        insert(c);
        throw new Error('feature refused');
      }),
    ).toThrow('feature refused');
    expect(s.getNode('n1')).toBeUndefined();
    expect(s.getToken(hashToken(token))!.consumedAt).toBeNull();
    expect(s.database.prepare('SELECT COUNT(*) AS n FROM hook_rows').get()).toEqual({ n: 0 });
    expect(s.database.prepare('SELECT COUNT(*) AS n FROM certs').get()).toEqual({ n: 0 });

    // The same token then enrolls, with the hook's row; a lost race runs no hook.
    expect(commit('n2', 'bb', insert)).toBe(true);
    expect(s.getNode('n2')).toBeDefined();
    expect(s.database.prepare('SELECT node_id FROM hook_rows').all()).toEqual([{ node_id: 'n2' }]);
    let ran = false;
    expect(commit('n3', 'cc', () => void (ran = true))).toBe(false);
    expect(ran).toBe(false);
    s.close();
  });

  it('the core keeps no tags: tokens are written and read without them', async () => {
    const s = openServerStore(await freshPath());
    const { token } = createToken(s, { ttlMs: 60_000 });
    expect(Object.keys(s.getToken(hashToken(token))!).sort()).toEqual(['certSerial', 'consumedAt', 'createdAt', 'csrSha256', 'expiresAt', 'hash', 'nodeId']);
    const nodeColumns = (s.database.prepare('PRAGMA table_info(nodes)').all() as Array<{ name: string }>).map((c) => c.name);
    expect(nodeColumns).not.toContain('tags');
    s.close();
  });
});
