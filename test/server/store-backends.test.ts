import { statSync } from 'node:fs';
import { sql } from 'kysely';
import pg from 'pg';
import { beforeAll, describe, expect } from 'vitest';
import { AuditLog } from '../../src/server/audit-log.js';
import { SERVER_MIGRATIONS } from '../../src/server/features.js';
import { openStoreDatabase, type Queryable, type StoreDatabase } from '../../src/server/store/database.js';
import { MIGRATIONS } from '../../src/server/store/migrations.js';
import { Store, type EnrollmentCommit } from '../../src/server/store/store.js';
import { storeBackends, type StoreBackend } from '../helpers/store-backends.js';

/**
 * The core store (src/server/store/store.ts), its database layer (database.ts) and the audit log
 * (audit-log.ts) on both backends (issue 14): the same calls give the same rows on SQLite and on a
 * real PostgreSQL. The PostgreSQL part also starts four stores at once on one empty database (one
 * migration run, no deadlock) and checks that its migration texts make the schema SQLite's make.
 */

const BACKENDS = storeBackends();
const [SQLITE] = BACKENDS as [StoreBackend, StoreBackend];

const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;
/** Beyond a 32-bit integer: times and sizes must survive as BIGINT / INTEGER and come back as numbers. */
const BIG = 2 ** 31 + 12_345;
/** A time in milliseconds (2026), itself far beyond 2^31. */
const T0 = 1_780_000_000_000;
/** Every byte value, NUL and 0xff included: BLOB / BYTEA must round-trip them. */
const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

const VERSIONS = [...SERVER_MIGRATIONS].map((m) => m.version).sort((a, b) => a - b);

function token(s: Store, hash: string, createdAt: number, opts: { expiresAt?: number; nodeId?: string } = {}): Promise<void> {
  return s.insertToken({ hash, id: `id-${hash}`, createdAt, expiresAt: opts.expiresAt ?? createdAt + DAY, nodeId: opts.nodeId ?? null });
}

interface EnrollOptions {
  now?: number;
  existing?: boolean;
  hostname?: string;
  agentVersion?: string | null;
  notAfter?: number;
  hook?: (c: EnrollmentCommit, tx: Queryable) => Promise<void>;
}
function enroll(s: Store, tokenHash: string, nodeId: string, serial: string, o: EnrollOptions = {}): Promise<boolean> {
  const now = o.now ?? T0;
  return s.commitEnrollment(
    {
      tokenHash,
      now,
      node: { id: nodeId, hostname: o.hostname ?? `host-${nodeId}`, agentVersion: o.agentVersion === undefined ? '1.0.0' : o.agentVersion, existing: o.existing ?? false },
      cert: { serial, notBefore: now, notAfter: o.notAfter ?? now + DAY, pem: `pem-${serial}` },
      csrSha256: `csr-${serial}`,
    },
    o.hook,
  );
}

function cert(serial: string, notAfter: number): { serial: string; notBefore: number; notAfter: number; pem: string } {
  return { serial, notBefore: T0, notAfter, pem: `pem-${serial}` };
}

async function count(db: Queryable, table: string): Promise<number> {
  const r = await sql<{ n: number }>`SELECT COUNT(*) AS n FROM ${sql.table(table)}`.execute(db);
  return Number(r.rows[0]!.n);
}

async function migrationRows(db: Queryable): Promise<Array<{ version: number; name: string; applied_at: number }>> {
  return (await sql<{ version: number; name: string; applied_at: number }>`SELECT version, name, applied_at FROM schema_migrations ORDER BY version`.execute(db)).rows;
}

/** Waits for a condition (never for a time): polls until `check` holds, failing after a generous deadline. */
async function until(what: string, check: () => Promise<boolean>, deadlineMs = 20_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

// '%s' of the title in full (vitest's '$title' would shorten a skip reason to 40 characters).
describe.each(BACKENDS.map((b) => [b.title, b] as const))('the store on %s', (_title, backend) => {
  beforeAll(() => backend.ready(), 120_000);

  describe('migrations', () => {
    backend.it('apply once, in order, and a second open is a no-op', async () => {
      const at = await backend.location();
      const first = await backend.openStore(SERVER_MIGRATIONS, at);
      expect(first.dialect).toBe(backend.name);
      const applied = await migrationRows(first.database.db);
      expect(applied.map((r) => r.version)).toEqual(VERSIONS);
      expect(applied.map((r) => r.name)).toEqual(VERSIONS.map((v) => SERVER_MIGRATIONS.find((m) => m.version === v)!.name));
      for (const r of applied) expect(typeof r.applied_at).toBe('number');
      expect(await first.schemaVersion()).toBe(VERSIONS.at(-1));
      if (backend.name === 'sqlite') {
        // WAL, foreign keys on, the file readable by its owner only.
        expect(first.database.sqlite!.pragma('journal_mode', { simple: true })).toBe('wal');
        expect(first.database.sqlite!.pragma('foreign_keys', { simple: true })).toBe(1);
        expect(statSync(at).mode & 0o777).toBe(0o600);
      }
      await first.close();

      const second = await backend.openStore(SERVER_MIGRATIONS, at);
      // Same rows, same times: nothing ran again.
      expect(await migrationRows(second.database.db)).toEqual(applied);
      expect(await second.healthy()).toBe(true);
      await second.close();
      expect(await second.healthy()).toBe(false);
    });

    backend.it('a store with an applied version this build does not know fails with ML_ERR_STORE_SCHEMA', async () => {
      const at = await backend.location();
      const s = await backend.openStore(SERVER_MIGRATIONS, at);
      await sql`INSERT INTO schema_migrations (version, name, applied_at) VALUES (${999}, ${'future'}, ${T0})`.execute(s.database.db);
      await s.close();
      await expect(Store.open(at, SERVER_MIGRATIONS)).rejects.toMatchObject({ code: 'ML_ERR_STORE_SCHEMA', message: expect.stringContaining('999') });
      await expect(openStoreDatabase(at, SERVER_MIGRATIONS)).rejects.toMatchObject({ code: 'ML_ERR_STORE_SCHEMA' });
      // The core's list alone does not know the features' versions either: every opener passes the whole list.
      const fresh = await backend.location();
      await (await backend.openDatabase(SERVER_MIGRATIONS, fresh)).close();
      await expect(openStoreDatabase(fresh, MIGRATIONS)).rejects.toMatchObject({ code: 'ML_ERR_STORE_SCHEMA', message: expect.stringContaining('100') });
    });

    backend.it('a migration that fails is rolled back whole and not recorded, and the next open proceeds', async () => {
      const at = await backend.location();
      const bad = { version: 998, name: 'broken', sqlite: 'CREATE TABLE half_done (a INTEGER); SELECT no_such_column FROM half_done;', postgres: 'CREATE TABLE half_done (a INTEGER); SELECT no_such_column FROM half_done;' };
      await expect(openStoreDatabase(at, [...SERVER_MIGRATIONS, bad])).rejects.toThrow(/no_such_column/);
      // PostgreSQL: the failed opener no longer holds the migration lock (this open would wait otherwise).
      const d = await backend.openDatabase(SERVER_MIGRATIONS, at);
      expect((await migrationRows(d.db)).map((r) => r.version)).toEqual(VERSIONS);
      const tables = d.dialect === 'sqlite'
        ? await sql<{ n: number }>`SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'half_done'`.execute(d.db)
        : await sql<{ n: number }>`SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = 'half_done'`.execute(d.db);
      expect(Number(tables.rows[0]!.n)).toBe(0);
    });
  });

  describe('tokens', () => {
    backend.it('round-trip, list newest first with ties of one millisecond in insertion order, and revoke once', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      await token(s, 'a', T0);
      await token(s, 'b', T0 + 1);
      await token(s, 'c', T0 + 1); // same millisecond as b, inserted after it
      await token(s, 'd', T0 - 5);
      await token(s, 'e', T0 + 1); // same millisecond again, last
      expect(await s.getToken('a')).toEqual({
        hash: 'a', id: 'id-a', createdAt: T0, expiresAt: T0 + DAY, consumedAt: null, revokedAt: null, nodeId: null, csrSha256: null, certSerial: null,
      });
      expect(await s.getTokenById('id-b')).toEqual(await s.getToken('b'));
      expect(await s.getToken('nope')).toBeUndefined();
      expect((await s.listTokens(10)).map((t) => t.hash)).toEqual(['e', 'c', 'b', 'a', 'd']);
      expect((await s.listTokens(2)).map((t) => t.hash)).toEqual(['e', 'c']);

      expect(await s.revokeToken('id-a', T0 + 10)).toBe(true);
      expect(await s.revokeToken('id-a', T0 + 20)).toBe(false);
      expect((await s.getToken('a'))!.revokedAt).toBe(T0 + 10);
      expect(await s.revokeToken('id-none', T0)).toBe(false);
      // A used token cannot be revoked; a revoked one cannot be used.
      expect(await enroll(s, 'b', 'n1', 's1')).toBe(true);
      expect(await s.revokeToken('id-b', T0 + 30)).toBe(false);
      expect((await s.getToken('b'))!.revokedAt).toBeNull();
      expect(await enroll(s, 'a', 'n2', 's2')).toBe(false);
      expect(await s.getNode('n2')).toBeUndefined();
    });
  });

  describe('the enrollment commit', () => {
    backend.it('consumes the token once and writes the node, the certificate and the token’s redemption', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      await token(s, 't1', T0 - MINUTE);
      expect(await enroll(s, 't1', 'n1', 's1', { now: T0 })).toBe(true);
      expect(await enroll(s, 't1', 'n2', 's2', { now: T0 + 1 })).toBe(false);
      expect(await s.getToken('t1')).toEqual({
        hash: 't1', id: 'id-t1', createdAt: T0 - MINUTE, expiresAt: T0 - MINUTE + DAY, consumedAt: T0, revokedAt: null, nodeId: null, csrSha256: 'csr-s1', certSerial: 's1',
      });
      expect(await s.getNode('n1')).toEqual({ id: 'n1', hostname: 'host-n1', createdAt: T0, agentVersion: '1.0.0', lastSeen: null, removedAt: null });
      expect(await s.getCert('s1')).toEqual({ serial: 's1', nodeId: 'n1', notBefore: T0, notAfter: T0 + DAY, revokedAt: null, pem: 'pem-s1' });
      expect(await s.getNode('n2')).toBeUndefined();
      expect(await s.getCert('s2')).toBeUndefined();
      // An expired token (expires_at not after now) enrolls nothing.
      await token(s, 't2', T0, { expiresAt: T0 + 5 });
      expect(await enroll(s, 't2', 'n3', 's3', { now: T0 + 5 })).toBe(false);
      expect(await s.getNode('n3')).toBeUndefined();
      expect((await s.getToken('t2'))!.consumedAt).toBeNull();
      expect(await s.fleetTotals()).toEqual({ enrollments: 1, certs: 1, revoked: 0, removed: 0, enrolled: 1 });
    });

    backend.it('two concurrent commits of one token: exactly one wins (on PostgreSQL the loser waits on the winner’s row lock)', async () => {
      const at = await backend.location();
      const s = await backend.openStore(SERVER_MIGRATIONS, at);
      // PostgreSQL: the second commit comes from another store on the database (another replica).
      const other = backend.name === 'postgres' ? await backend.openStore(SERVER_MIGRATIONS, at) : s;
      await token(s, 'race', T0 - MINUTE);
      let waiters = 0;
      const hooks: string[] = [];
      // PostgreSQL: the winner holds its transaction open until the other commit's UPDATE is seen
      // waiting for the token's row lock (pg_stat_activity, from another connection), so both
      // transactions are provably in flight together; then the loser re-checks the row and finds it
      // consumed. SQLite has one connection: the second transaction starts after the first.
      const hook = async (c: EnrollmentCommit): Promise<void> => {
        hooks.push(c.node.id);
        if (backend.name !== 'postgres') return;
        await until('the other enrollment to wait for the token row lock', async () => {
          const r = await sql<{ n: number }>`SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`.execute(s.database.db);
          waiters = Number(r.rows[0]!.n);
          return waiters >= 1;
        });
      };
      const results = await Promise.all([enroll(s, 'race', 'na', 'sa', { hook }), enroll(other, 'race', 'nb', 'sb', { hook })]);
      expect([...results].sort()).toEqual([false, true]);
      const winner = results[0] ? 'a' : 'b';
      const loser = results[0] ? 'b' : 'a';
      expect(hooks).toEqual([`n${winner}`]); // the loser's hook never ran
      if (backend.name === 'postgres') expect(waiters).toBe(1);
      expect((await s.getToken('race'))!.certSerial).toBe(`s${winner}`);
      expect(await s.getNode(`n${winner}`)).toBeDefined();
      expect(await s.getNode(`n${loser}`)).toBeUndefined();
      expect(await count(s.database.db, 'certs')).toBe(1);
      expect(await count(s.database.db, 'nodes')).toBe(1);
    });

    backend.it('a hook that throws rolls the whole enrollment back, its own writes included; the token then enrolls', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      const audit = AuditLog.of(s);
      await token(s, 't', T0 - MINUTE);
      const writingHook = (fail: boolean) => async (c: EnrollmentCommit, tx: Queryable): Promise<void> => {
        await audit.record({ ts: T0, source: 'admin', actor: 'hook', operation: 'enroll', nodeId: c.node.id, target: null, result: 'ok' }, tx);
        await s.setMeta(`hook-${c.node.id}`, 'written', tx);
        if (fail) throw new Error('feature refused');
      };
      await expect(enroll(s, 't', 'n1', 's1', { hook: writingHook(true) })).rejects.toThrow('feature refused');
      expect(await s.getNode('n1')).toBeUndefined();
      expect(await s.getCert('s1')).toBeUndefined();
      expect(await s.getToken('t')).toMatchObject({ consumedAt: null, certSerial: null, csrSha256: null });
      expect(await audit.list()).toEqual([]);
      expect(await s.getMeta('hook-n1')).toBeUndefined();
      expect(await s.fleetTotals()).toEqual({ enrollments: 0, certs: 0, revoked: 0, removed: 0, enrolled: 0 });

      expect(await enroll(s, 't', 'n2', 's2', { hook: writingHook(false) })).toBe(true);
      expect(await s.getNode('n2')).toBeDefined();
      expect(await s.getMeta('hook-n2')).toBe('written');
      expect((await audit.ofNode('n2', 10)).map((r) => [r.actor, r.operation, r.result])).toEqual([['hook', 'enroll', 'ok']]);
    });

    backend.it('a renewal\'s certificate goes in only while its node is live', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      await token(s, 't1', T0 - MINUTE);
      expect(await enroll(s, 't1', 'n1', 's1')).toBe(true);
      expect(await s.insertCertIfLive('n1', cert('s2', T0 + DAY))).toBe(true);
      expect((await s.getCert('s2'))!.revokedAt).toBeNull();
      expect((await s.removeNode('n1', T0 + 1)).revokedSerials).toEqual(['s1', 's2']);
      expect(await s.insertCertIfLive('n1', cert('s3', T0 + DAY))).toBe(false);
      expect(await s.getCert('s3')).toBeUndefined();
      expect(await s.insertCertIfLive('nobody', cert('s4', T0 + DAY))).toBe(false);
      // The no-op UPDATE that locks the row changes nothing in it.
      expect((await s.getNode('n1'))!.removedAt).toBe(T0 + 1);
    });

    backend.it('re-enrollment keeps the node id, refreshes the node, revokes the older certificates in the same transaction; a removed node cannot re-enroll', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      await token(s, 't1', T0 - MINUTE);
      expect(await enroll(s, 't1', 'n1', 's1', { now: T0, agentVersion: '1.0.0' })).toBe(true);
      await s.insertCert('n1', cert('s1b', T0 + 2 * DAY)); // a renewal
      await token(s, 't2', T0, { nodeId: 'n1' });
      expect((await s.getToken('t2'))!.nodeId).toBe('n1');
      const t1 = T0 + MINUTE;
      const revoked: string[][] = [];
      expect(await enroll(s, 't2', 'n1', 's2', {
        now: t1, existing: true, hostname: 'renamed', agentVersion: null,
        hook: async (c, tx) => void revoked.push(await s.revokeCertsIssuedBefore(c.node.id, c.cert.serial, c.now, tx)),
      })).toBe(true);
      expect(revoked).toEqual([['s1', 's1b']]);
      // The hostname changes; a null agent version keeps the known one; created_at stays.
      expect(await s.getNode('n1')).toEqual({ id: 'n1', hostname: 'renamed', createdAt: T0, agentVersion: '1.0.0', lastSeen: null, removedAt: null });
      expect((await s.getCert('s1'))!.revokedAt).toBe(t1);
      expect((await s.getCert('s1b'))!.revokedAt).toBe(t1);
      expect((await s.getCert('s2'))!.revokedAt).toBeNull();
      expect((await s.listLiveNodes()).map((n) => [n.id, n.certSerial])).toEqual([['n1', 's1b']]); // the latest NotAfter

      await s.removeNode('n1', t1 + 1);
      await token(s, 't3', t1, { nodeId: 'n1' });
      await expect(enroll(s, 't3', 'n1', 's3', { now: t1 + 2, existing: true })).rejects.toMatchObject({ code: 'ML_ERR_TOKEN_INVALID' });
      expect((await s.getToken('t3'))!.consumedAt).toBeNull();
      expect(await s.getCert('s3')).toBeUndefined();
    });
  });

  describe('nodes and certificates', () => {
    backend.it('removeNode marks the node removed and revokes its certificates, once, durably', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      await token(s, 't1', T0);
      await token(s, 't2', T0);
      expect(await enroll(s, 't1', 'n1', 's1')).toBe(true);
      expect(await enroll(s, 't2', 'n2', 'other')).toBe(true);
      await s.insertCert('n1', cert('s2', T0 + DAY));
      await s.insertCert('n1', cert('s3', T0 + DAY));
      await s.revokeCertsIssuedBefore('n1', 's2', T0 + 1); // s1 revoked already: not revoked again
      const r = await s.removeNode('n1', T0 + 100);
      expect(r.removed).toBe(true);
      expect(r.revokedSerials).toEqual(['s2', 's3']); // in issue order
      expect([...(await s.revokedSerials())].sort()).toEqual(['s1', 's2', 's3']);
      expect((await s.getCert('s1'))!.revokedAt).toBe(T0 + 1);
      expect((await s.getCert('s3'))!.revokedAt).toBe(T0 + 100);
      expect((await s.getCert('other'))!.revokedAt).toBeNull();
      expect((await s.getNode('n1'))!.removedAt).toBe(T0 + 100);
      expect(await s.removeNode('n1', T0 + 200)).toEqual({ removed: false, revokedSerials: [] });
      expect((await s.listLiveNodes()).map((n) => n.id)).toEqual(['n2']);
      expect(await s.liveNodesByHostname('host-n1')).toEqual([]);
      expect(await s.fleetTotals()).toEqual({ enrollments: 2, certs: 4, revoked: 3, removed: 1, enrolled: 1 });
      if (backend.name === 'sqlite') expect(s.synchronousLevel()).toBe(1); // NORMAL again after the durable commit
    });

    backend.it('revokeCertsIssuedBefore follows issue order, not serial or NotAfter order', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      await token(s, 't0', T0);
      await token(s, 't1', T0);
      expect(await enroll(s, 't0', 'n0', 'first-of-other-node')).toBe(true);
      expect(await enroll(s, 't1', 'n1', 'zz', { notAfter: T0 + 9 * DAY })).toBe(true);
      await s.insertCert('n1', cert('mm', T0 + 1 * DAY));
      await s.insertCert('n1', cert('aa', T0 + 5 * DAY));
      await s.insertCert('n1', cert('qq', T0 + 2 * DAY));
      expect(await s.revokeCertsIssuedBefore('n1', 'aa', T0 + 1)).toEqual(['zz', 'mm']); // in issue order
      expect((await s.getCert('aa'))!.revokedAt).toBeNull();
      expect((await s.getCert('qq'))!.revokedAt).toBeNull();
      expect((await s.getCert('zz'))!.revokedAt).toBe(T0 + 1);
      // Already revoked ones are not revoked (or returned) again; an unknown serial revokes nothing.
      expect(await s.revokeCertsIssuedBefore('n1', 'qq', T0 + 2)).toEqual(['aa']);
      expect((await s.getCert('zz'))!.revokedAt).toBe(T0 + 1);
      expect(await s.revokeCertsIssuedBefore('n1', 'unknown', T0 + 3)).toEqual([]);
      expect((await s.getCert('first-of-other-node'))!.revokedAt).toBeNull();
      // Inside a caller's transaction, which then rolls back: nothing stays revoked.
      await s.insertCert('n1', cert('rr', T0 + DAY));
      await expect(s.database.transaction(async (tx) => {
        expect(await s.revokeCertsIssuedBefore('n1', 'rr', T0 + 4, tx)).toEqual(['qq']);
        throw new Error('rolled back');
      })).rejects.toThrow('rolled back');
      expect((await s.getCert('qq'))!.revokedAt).toBeNull();
    });

    backend.it('pruneExpiredCerts keeps each node’s newest and keeps the fleet totals monotonic', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      await token(s, 'ta', T0);
      await token(s, 'tb', T0);
      expect(await enroll(s, 'ta', 'na', 'a1', { notAfter: T0 + 1_000 })).toBe(true);
      await s.insertCert('na', cert('a2', T0 + 2_000));
      await s.insertCert('na', cert('a3', T0 + 500)); // the newest, though its NotAfter is the earliest
      expect(await enroll(s, 'tb', 'nb', 'b1', { notAfter: T0 + 100 })).toBe(true);
      await s.revokeCertsIssuedBefore('na', 'a2', T0 + 1); // a1 revoked
      const before = await s.fleetTotals();
      expect(before).toEqual({ enrollments: 2, certs: 4, revoked: 1, removed: 0, enrolled: 2 });

      expect(await s.pruneExpiredCerts(T0 + 10_000)).toEqual(['a1', 'a2']);
      expect(await s.getCert('a3')).toBeDefined();
      expect(await s.getCert('b1')).toBeDefined();
      expect(await count(s.database.db, 'certs')).toBe(2);
      expect(await s.fleetTotals()).toEqual(before);
      expect(await s.getMeta('certs_pruned')).toBe('2');
      expect(await s.getMeta('revoked_certs_pruned')).toBe('1');
      expect(await s.pruneExpiredCerts(T0 + 10_000)).toEqual([]);
      expect(await s.getMeta('certs_pruned')).toBe('2');

      // The counter adds up across sweeps (the upsert's update branch); `limit` bounds one sweep.
      await s.insertCert('na', cert('a4', T0 + 600));
      await s.insertCert('na', cert('a5', T0 + 700));
      expect(await s.pruneExpiredCerts(T0 + 10_000, 1)).toHaveLength(1);
      expect(await s.getMeta('certs_pruned')).toBe('3');
      expect(await s.pruneExpiredCerts(T0 + 10_000, 1)).toHaveLength(1);
      expect(await s.pruneExpiredCerts(T0 + 10_000, 1)).toEqual([]);
      expect((await s.listLiveNodes()).map((n) => [n.id, n.certSerial])).toEqual([['na', 'a5'], ['nb', 'b1']]);
      expect(await s.fleetTotals()).toEqual({ enrollments: 2, certs: 6, revoked: 1, removed: 0, enrolled: 2 });
      expect(await s.getMeta('certs_pruned')).toBe('4');
    });

    backend.it('touchNodes and setAgentVersion write BIGINT times up to 2^53 back as numbers', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      await token(s, 't1', T0);
      await token(s, 't2', T0);
      expect(await enroll(s, 't1', 'n1', 's1', { now: BIG })).toBe(true);
      expect(await enroll(s, 't2', 'n2', 's2', { now: BIG })).toBe(true);
      await s.touchNodes([['n1', Number.MAX_SAFE_INTEGER], ['n2', BIG + 1]]);
      await s.setAgentVersion('n2', '2.0.0');
      const n1 = (await s.getNode('n1'))!;
      expect(n1.lastSeen).toBe(Number.MAX_SAFE_INTEGER);
      expect(typeof n1.createdAt).toBe('number');
      expect(n1.createdAt).toBe(BIG);
      expect(await s.getNode('n2')).toMatchObject({ lastSeen: BIG + 1, agentVersion: '2.0.0' });
      expect((await s.listLiveNodes()).map((n) => [n.id, n.certNotAfter])).toEqual([['n1', BIG + DAY], ['n2', BIG + DAY]]);
      const totals = await s.fleetTotals();
      for (const v of Object.values(totals)) expect(typeof v).toBe('number');
    });
  });

  describe('transactions', () => {
    backend.it('a commit that fails (a deferred foreign key) rolls back and leaves the store usable', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      const { db } = s.database;
      await sql`CREATE TABLE deferred_ref (node_id TEXT NOT NULL REFERENCES nodes (id) DEFERRABLE INITIALLY DEFERRED)`.execute(db);
      // The statement passes; the check runs at COMMIT, which fails.
      await expect(s.database.transaction(async (tx) => {
        await sql`INSERT INTO deferred_ref (node_id) VALUES (${'ghost'})`.execute(tx);
        await s.setMeta('in-failed-commit', 'x', tx);
      })).rejects.toThrow(/foreign key/i);
      expect(await count(db, 'deferred_ref')).toBe(0);
      expect(await s.getMeta('in-failed-commit')).toBeUndefined();
      // The next transactions begin and commit (SQLite: no transaction left open on the connection).
      await s.setMeta('after', '1');
      await s.database.transaction(async (tx) => s.setMeta('after', '2', tx), { durable: true });
      expect(await s.getMeta('after')).toBe('2');
      await token(s, 't', T0);
      expect(await enroll(s, 't', 'n1', 's1')).toBe(true);
      if (backend.name === 'sqlite') expect(s.database.sqlite!.inTransaction).toBe(false);
    });
  });

  describe('meta and the CA', () => {
    backend.it('meta: set, overwrite, delete, and a rolled-back write leaves nothing', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      expect(await s.getMeta('k')).toBeUndefined();
      await s.setMeta('k', 'v1');
      await s.setMeta('k', 'v2');
      expect(await s.getMeta('k')).toBe('v2');
      await expect(s.database.transaction(async (tx) => {
        await s.setMeta('k', 'v3', tx);
        expect(await s.getMeta('k', tx)).toBe('v3');
        throw new Error('no');
      })).rejects.toThrow('no');
      expect(await s.getMeta('k')).toBe('v2');
      await s.deleteMeta('k');
      expect(await s.getMeta('k')).toBeUndefined();
      if (backend.name === 'sqlite') {
        // A durable commit runs at synchronous=FULL (2) and puts NORMAL (1) back, also when it fails.
        expect(await s.database.transaction(async () => s.synchronousLevel(), { durable: true })).toBe(2);
        expect(s.synchronousLevel()).toBe(1);
        await expect(s.database.transaction(async () => {
          throw new Error('durable failure');
        }, { durable: true })).rejects.toThrow('durable failure');
        expect(s.synchronousLevel()).toBe(1);
      }
    });

    backend.it('CA: insert once, replace with its meta in one transaction, re-seal only over the expected blob; buffers round-trip byte for byte', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      expect(await s.getCa()).toBeUndefined();
      const first = { keyBlob: ALL_BYTES, kdfSalt: Buffer.from([0, 0, 1, 0xff]), certPem: 'ca-1', createdAt: BIG };
      await s.insertCa(first);
      const got = (await s.getCa())!;
      expect(Buffer.isBuffer(got.keyBlob)).toBe(true);
      expect(got).toEqual(first);
      expect(got.keyBlob.equals(ALL_BYTES)).toBe(true);
      await expect(s.insertCa({ ...first, certPem: 'ca-again' })).rejects.toThrow();
      expect((await s.getCa())!.certPem).toBe('ca-1');

      const second = { keyBlob: Buffer.from('second key'), kdfSalt: Buffer.from('salt-2'), certPem: 'ca-2', createdAt: T0 };
      await s.replaceCa(second, async (tx) => s.setMeta('ca_pin', 'pin-2', tx));
      expect(await s.getCa()).toEqual(second);
      expect(await s.getMeta('ca_pin')).toBe('pin-2');
      await expect(s.replaceCa({ ...second, certPem: 'ca-3' }, async (tx) => {
        await s.setMeta('ca_pin', 'pin-3', tx);
        throw new Error('rotation failed');
      })).rejects.toThrow('rotation failed');
      expect(await s.getCa()).toEqual(second);
      expect(await s.getMeta('ca_pin')).toBe('pin-2');

      await s.replaceCaKey(Buffer.from('not the blob'), Buffer.from('resealed'), Buffer.from('salt-x'));
      expect((await s.getCa())!.keyBlob).toEqual(Buffer.from('second key'));
      await s.replaceCaKey(Buffer.from('second key'), Buffer.from('resealed'), Buffer.from('salt-r'));
      expect(await s.getCa()).toEqual({ ...second, keyBlob: Buffer.from('resealed'), kdfSalt: Buffer.from('salt-r') });
    });
  });

  describe('the audit log', () => {
    backend.it('start/finish/record, list and ofNode newest first, pruneAgentRecords keeps the newest agent records only', async () => {
      const s = await backend.openStore(SERVER_MIGRATIONS);
      const audit = AuditLog.of(s);
      expect(AuditLog.of(s)).toBe(audit);
      const a = await audit.start({ ts: T0, actor: 'op', operation: 'nodes.remove', nodeId: 'n1', target: 'n1', details: { why: 'test' } });
      const b = await audit.start({ ts: T0 + 1, actor: 'op', operation: 'tokens.create', nodeId: null, target: null });
      expect(typeof a).toBe('number');
      expect(b).toBeGreaterThan(a);
      await audit.finish(a, 'ok', undefined, T0 + 10); // no details: the start's stay
      await audit.finish(b, 'x'.repeat(300), { error: 'e' }, T0 + 11);
      const agentIds: number[] = [];
      for (let i = 0; i < 5; i++) {
        agentIds.push(await audit.record({ ts: BIG + i, source: 'agent', actor: 'n1', operation: `exec.${i}`, nodeId: 'n1', target: null, result: 'ok' }));
      }
      const other = await audit.record({ ts: T0, source: 'agent', actor: 'n2', operation: 'exec', nodeId: 'n2', target: null, result: 'ok', finishedAt: T0 + 5 });

      expect(await audit.list(1)).toEqual([{ id: other, ts: T0, finishedAt: T0 + 5, source: 'agent', actor: 'n2', operation: 'exec', nodeId: 'n2', target: null, result: 'ok', details: null }]);
      const all = await audit.list();
      expect(all.map((r) => r.id)).toEqual([other, ...[...agentIds].reverse(), b, a]);
      expect(all.find((r) => r.id === a)).toEqual({ id: a, ts: T0, finishedAt: T0 + 10, source: 'admin', actor: 'op', operation: 'nodes.remove', nodeId: 'n1', target: 'n1', result: 'ok', details: { why: 'test' } });
      expect(all.find((r) => r.id === b)).toMatchObject({ result: 'x'.repeat(256), finishedAt: T0 + 11, details: { error: 'e' } });
      expect(all.find((r) => r.id === agentIds[2])).toMatchObject({ ts: BIG + 2, finishedAt: BIG + 2 });
      expect((await audit.ofNode('n1', 100)).map((r) => r.id)).toEqual([...[...agentIds].reverse(), a]);
      expect((await audit.ofNode('n1', 2)).map((r) => r.id)).toEqual([agentIds[4], agentIds[3]]);

      expect(await audit.pruneAgentRecords('n1', 2)).toBe(3);
      // The newest two agent records of n1 stay; the operator's record of n1 and n2's record stay.
      expect((await audit.ofNode('n1', 100)).map((r) => r.id)).toEqual([agentIds[4], agentIds[3], a]);
      expect((await audit.ofNode('n2', 100)).map((r) => r.id)).toEqual([other]);
      expect(await audit.pruneAgentRecords('n1', 2)).toBe(0);
      expect(await audit.pruneAgentRecords('n1', 0)).toBe(2);
      expect((await audit.ofNode('n1', 100)).map((r) => r.id)).toEqual([a]);
      // A new record after pruning gets a larger id than any before (ids are never reused while rows exist).
      expect(await audit.record({ source: 'agent', actor: 'n1', operation: 'exec.5', nodeId: 'n1', target: null, result: 'ok' })).toBeGreaterThan(other);
    });
  });

  if (backend.name !== 'postgres') return;

  describe('PostgreSQL only: concurrent writers (two replicas on one database)', () => {
    /**
     * Runs two writers at once (on two stores of one database) while another session holds rows
     * locked (`lock`: a SELECT … FOR UPDATE of `keys`), and lets go only when both are seen waiting
     * for a lock: both have then read what they read before writing, so each must decide by what its
     * own write changed, and must not deadlock with the other.
     */
    async function raceOverLockedRows<A, B>(url: string, lock: string, keys: string[], first: () => Promise<A>, second: () => Promise<B>): Promise<[A, B]> {
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      try {
        await holder.query('BEGIN');
        expect((await holder.query(lock, [keys])).rowCount).toBe(keys.length);
        const both = Promise.all([first(), second()]);
        try {
          await until('both writers to wait for the locked rows', async () => {
            const r = await holder.query<{ n: number }>("SELECT COUNT(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'");
            return r.rows[0]!.n === 2;
          });
        } finally {
          await holder.query('COMMIT');
        }
        return await both;
      } finally {
        await holder.end();
      }
    }

    const LOCK_CERTS = 'SELECT serial FROM certs WHERE serial = ANY($1) FOR UPDATE';

    async function nodeWithCerts(url: string): Promise<[Store, Store]> {
      const one = await backend.openStore(SERVER_MIGRATIONS, url);
      const two = await backend.openStore(SERVER_MIGRATIONS, url);
      await token(one, 't', T0);
      expect(await enroll(one, 't', 'n1', 'c1', { notAfter: T0 + 1_000 })).toBe(true);
      await one.insertCert('n1', cert('c2', T0 + 2_000));
      await one.insertCert('n1', cert('c3', T0 + DAY));
      return [one, two];
    }

    backend.it('two sweeps at once delete each expired certificate once and count it once', async () => {
      const url = await backend.location();
      const [one, two] = await nodeWithCerts(url);
      await one.revokeCertsIssuedBefore('n1', 'c2', T0 + 1); // c1 revoked
      const [a, b] = await raceOverLockedRows(url, LOCK_CERTS, ['c1', 'c2'], () => one.pruneExpiredCerts(T0 + 10_000), () => two.pruneExpiredCerts(T0 + 10_000));
      expect([...a, ...b].sort()).toEqual(['c1', 'c2']);
      expect(await one.getMeta('certs_pruned')).toBe('2');
      expect(await one.getMeta('revoked_certs_pruned')).toBe('1');
      expect(await one.fleetTotals()).toEqual({ enrollments: 1, certs: 3, revoked: 1, removed: 0, enrolled: 1 });
    });

    backend.it('two revocations of the superseded certificates at once: each serial is reported revoked by one of them', async () => {
      const url = await backend.location();
      const [one, two] = await nodeWithCerts(url);
      const [a, b] = await raceOverLockedRows(url, LOCK_CERTS, ['c1', 'c2'], () => one.revokeCertsIssuedBefore('n1', 'c3', T0 + 5), () => two.revokeCertsIssuedBefore('n1', 'c3', T0 + 5));
      expect([...a, ...b].sort()).toEqual(['c1', 'c2']);
      expect([a.length, b.length].sort()).toEqual([0, 2]);
      expect((await one.getCert('c1'))!.revokedAt).toBe(T0 + 5);
      expect((await one.getCert('c3'))!.revokedAt).toBeNull();
    });

    backend.it('two presence batches of the same nodes in opposite orders at once: both commit, no deadlock', async () => {
      const url = await backend.location();
      const [one, two] = await nodeWithCerts(url);
      await token(one, 't2', T0);
      expect(await enroll(one, 't2', 'n2', 'd1')).toBe(true);
      // Each batch's first row is the row the other takes second: in the order given, each would
      // hold one row and wait for the other's (a deadlock PostgreSQL breaks by failing one batch).
      await raceOverLockedRows(url, 'SELECT id FROM nodes WHERE id = ANY($1) FOR UPDATE', ['n1', 'n2'],
        () => one.touchNodes([['n1', T0 + 1], ['n2', T0 + 1]]), () => two.touchNodes([['n2', T0 + 2], ['n1', T0 + 2]]));
      const seen = [(await one.getNode('n1'))!.lastSeen, (await one.getNode('n2'))!.lastSeen];
      // Whichever committed last wrote both rows.
      expect([[T0 + 1, T0 + 1], [T0 + 2, T0 + 2]]).toContainEqual(seen);
    });
    backend.it('a renewal\'s certificate and a removal of its node at once: the certificate is refused, or inserted and revoked', async () => {
      const url = await backend.location();
      const [one, two] = await nodeWithCerts(url);
      const [stored, removal] = await raceOverLockedRows(url, 'SELECT id FROM nodes WHERE id = ANY($1) FOR UPDATE', ['n1'],
        () => one.insertCertIfLive('n1', cert('r1', T0 + DAY)), () => two.removeNode('n1', T0 + 7));
      expect(removal.removed).toBe(true);
      // Whichever went first, no certificate of the removed node is left unrevoked.
      if (stored) {
        expect(removal.revokedSerials).toContain('r1');
        expect((await one.getCert('r1'))!.revokedAt).toBe(T0 + 7);
      } else {
        expect(await one.getCert('r1')).toBeUndefined();
      }
      expect((await one.listLiveNodes()).map((n) => n.id)).not.toContain('n1');
    });
  });

  describe('PostgreSQL only: migrations, schema, connection', () => {
    backend.it('four stores opening one empty database at once: every migration recorded once, every open succeeds, no deadlock', async () => {
      const url = await backend.location();
      // The migration lock's key ("meshlink" in ASCII, database.ts). Holding it here until all four
      // openers are seen waiting for it makes them contend for certain, whatever the scheduling.
      const key = BigInt(`0x${Buffer.from('meshlink').toString('hex')}`);
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      let opens: Array<PromiseSettledResult<StoreDatabase>>;
      try {
        await holder.query('SELECT pg_advisory_lock($1)', [key.toString()]);
        const opening = Promise.allSettled(Array.from({ length: 4 }, () => openStoreDatabase(url, SERVER_MIGRATIONS)));
        try {
          await until('four openers waiting for the migration lock', async () => {
            const r = await holder.query<{ n: number }>(
              `SELECT COUNT(*)::int AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database
               WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()
                 AND (l.classid::bigint << 32) + l.objid::bigint = $1::bigint AND l.objsubid = 1`,
              [key.toString()],
            );
            return r.rows[0]!.n === 4;
          });
          // Nothing was applied while the lock was held: not even schema_migrations exists yet.
          const early = await holder.query<{ t: string | null }>("SELECT to_regclass('public.schema_migrations')::text AS t");
          expect(early.rows[0]!.t).toBeNull();
        } finally {
          await holder.query('SELECT pg_advisory_unlock($1)', [key.toString()]);
          opens = await opening;
        }
      } finally {
        await holder.end();
      }
      for (const o of opens) if (o.status === 'fulfilled') backend.track(o.value);
      expect(opens.map((o) => (o.status === 'fulfilled' ? 'opened' : String(o.reason)))).toEqual(['opened', 'opened', 'opened', 'opened']);
      const databases = opens.map((o) => (o as PromiseFulfilledResult<StoreDatabase>).value);
      const perVersion = await sql<{ version: number; n: number }>`SELECT version, COUNT(*) AS n FROM schema_migrations GROUP BY version ORDER BY version`.execute(databases[0]!.db);
      expect(perVersion.rows).toEqual(VERSIONS.map((version) => ({ version, n: 1 })));
      for (const d of databases) {
        expect(d.dialect).toBe('postgres');
        expect(await d.ping()).toBe(true);
        expect(await count(d.db, 'audit_log')).toBe(0);
      }
    });

    backend.it('each migration’s PostgreSQL text applies on top of the ones before it, one open at a time', async () => {
      const url = await backend.location();
      const sorted = [...SERVER_MIGRATIONS].sort((a, b) => a.version - b.version);
      for (let i = 1; i <= sorted.length; i++) {
        const d = await openStoreDatabase(url, sorted.slice(0, i)).catch((err: Error) => {
          throw new Error(`migration ${sorted[i - 1]!.version} (${sorted[i - 1]!.name}) failed on PostgreSQL: ${err.message}`);
        });
        try {
          expect((await migrationRows(d.db)).map((r) => r.version)).toEqual(VERSIONS.slice(0, i));
        } finally {
          await d.close();
        }
      }
    });

    backend.it('the PostgreSQL schema is SQLite’s: same tables, columns in order, types, nullability, defaults, keys, indexes', async () => {
      const lite = await SQLITE.openDatabase(SERVER_MIGRATIONS);
      const post = await backend.openDatabase(SERVER_MIGRATIONS);
      const [a, b] = [await sqliteSchema(lite.db), await postgresSchema(post.db)];
      expect(Object.keys(b).sort()).toEqual(Object.keys(a).sort());
      for (const table of Object.keys(a)) expect({ table, ...b[table] }).toEqual({ table, ...a[table] });
      // SQLite's INTEGER is 64-bit; PostgreSQL's INTEGER is 32-bit, for small bounded values only (a
      // time or a size there would overflow in 2038 or at 2 GiB): BIGINT everywhere else.
      const int4 = await sql<{ c: string }>`SELECT table_name || '.' || column_name AS c FROM information_schema.columns
        WHERE table_schema = 'public' AND data_type = 'integer' ORDER BY 1`.execute(post.db);
      expect(int4.rows.map((r) => r.c)).toEqual(['ca.id', 'mesh_master.id', 'ops_agent_bundles.allow_downgrade', 'ops_agent_bundles.current', 'ops_agent_bundles.percent', 'schema_migrations.version']);
      // Text compares and sorts by bytes, as in SQLite, whatever the database's default collation.
      const notC = await sql<{ c: string }>`SELECT table_name || '.' || column_name AS c FROM information_schema.columns
        WHERE table_schema = 'public' AND data_type = 'text' AND collation_name IS DISTINCT FROM 'C' ORDER BY 1`.execute(post.db);
      expect(notC.rows.map((r) => r.c)).toEqual([]);
    });

    backend.it('on a database whose default collation is linguistic (ICU en-US), text sorts and compares by bytes, as on SQLite', async ({ skip }) => {
      const version = Number((await sql<{ v: string }>`SELECT current_setting('server_version_num') AS v`.execute((await backend.openDatabase(SERVER_MIGRATIONS)).db)).rows[0]!.v);
      if (version < 150000) skip('PostgreSQL before 15 cannot make ICU the default collation of a database');
      const post = await backend.openStore(SERVER_MIGRATIONS, await backend.location({ icuLocale: 'en-US' }));
      const lite = await SQLITE.openStore(SERVER_MIGRATIONS);
      // The database itself sorts 'a' before 'B' (bytes: 'B' is 0x42, 'a' 0x61).
      expect((await sql<{ lt: boolean }>`SELECT 'a' < 'B' AS lt`.execute(post.database.db)).rows[0]!.lt).toBe(true);
      const ids = ['a-1', 'B-2', 'b1', 'Z', '_x', 'é', 'A10', 'A9'];
      for (const s of [lite, post]) {
        for (const id of ids) {
          await token(s, `t-${id}`, T0);
          expect(await enroll(s, `t-${id}`, id, `s-${id}`, { now: T0, hostname: id })).toBe(true);
        }
      }
      const binary = [...ids].sort(); // JS compares UTF-16 code units: for these, byte order
      expect((await lite.listLiveNodes()).map((n) => n.id)).toEqual(binary);
      expect((await post.listLiveNodes()).map((n) => n.id)).toEqual(binary);
      // A pair ordered in JS (the mesh's PSK rows: node_a < node_b) passes the table's CHECK on both.
      for (const s of [lite, post]) {
        await s.database.db.insertInto('mesh_psks').values({ node_a: 'B-2', node_b: 'a-1', sealed: ALL_BYTES, created_at: T0 }).execute();
        const ordered = await sql<{ id: string }>`SELECT id FROM nodes WHERE hostname > ${'B-2'} ORDER BY hostname`.execute(s.database.db);
        expect(ordered.rows.map((r) => r.id)).toEqual(binary.filter((id) => id > 'B-2'));
      }
    });

    backend.it('a database that cannot be reached fails with ML_ERR_STORE_UNAVAILABLE, and no message or location shows the password', async () => {
      const url = await backend.location();
      const password = new URL(url).password;
      expect(password.length).toBeGreaterThan(8);
      const s = await backend.openStore(SERVER_MIGRATIONS, url);
      expect(s.path).not.toContain(password);
      expect(s.path).toContain(':***@');
      expect(s.database.location).toBe(s.path);
      const missing = backend.cluster().urlOf('no_such_database');
      const err = await openStoreDatabase(missing, SERVER_MIGRATIONS).then(() => null, (e: Error & { code?: string }) => e);
      expect(err).toMatchObject({ code: 'ML_ERR_STORE_UNAVAILABLE' });
      expect(err!.message).toContain('no_such_database');
      expect(err!.message).not.toContain(password);
      const wrong = new URL(url);
      wrong.password = 'wrong-password-123';
      const refused = await openStoreDatabase(wrong.toString(), SERVER_MIGRATIONS).then(() => null, (e: Error & { code?: string }) => e);
      expect(refused).toMatchObject({ code: 'ML_ERR_STORE_UNAVAILABLE', message: expect.stringMatching(/password authentication failed/) });
      expect(refused!.message).not.toContain('wrong-password-123');
    });

    backend.it('a password given as a URL parameter (which pg honours) is redacted too', async () => {
      const url = new URL(await backend.location());
      const password = url.password;
      url.password = '';
      url.searchParams.set('password', password);
      const s = await backend.openStore(SERVER_MIGRATIONS, url.toString());
      expect(await s.healthy()).toBe(true); // it did log in with it
      expect(s.path).not.toContain(password);
      expect(new URL(s.path).searchParams.get('password')).toBe('***');
      const wrong = new URL(url);
      wrong.searchParams.set('password', 'wrong-password-456');
      const err = await openStoreDatabase(wrong.toString(), SERVER_MIGRATIONS).then(() => null, (e: Error) => e);
      expect(err).toMatchObject({ code: 'ML_ERR_STORE_UNAVAILABLE' });
      expect(err!.message).not.toContain('wrong-password-456');
    });

    backend.it('the server ending the pool’s connections crashes nothing; the store answers again on fresh connections', async () => {
      const url = await backend.location();
      const s = await backend.openStore(SERVER_MIGRATIONS, url);
      await s.setMeta('before', 'kill');
      // Several pooled connections, idle once these settle.
      await Promise.all(Array.from({ length: 4 }, () => s.database.transaction(async (tx) => s.getMeta('before', tx))));
      const admin = new pg.Client({ connectionString: backend.cluster().url });
      await admin.connect();
      try {
        const killed = await admin.query<{ n: number }>(
          'SELECT COUNT(*)::int AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()) t',
          [new URL(url).pathname.slice(1)],
        );
        expect(killed.rows[0]!.n).toBeGreaterThanOrEqual(1);
      } finally {
        await admin.end();
      }
      // An idle client's 'error' must not be an uncaught exception (vitest fails the run on one).
      await until('the store to answer again', () => s.healthy());
      await s.setMeta('after', 'kill');
      expect(await s.getMeta('before')).toBe('kill');
      expect(await s.getMeta('after')).toBe('kill');
    });

    backend.it('a BIGINT beyond 2^53 fails loudly instead of coming back rounded', async () => {
      const d = await backend.openDatabase(SERVER_MIGRATIONS);
      expect((await sql<{ v: number }>`SELECT CAST(${String(Number.MAX_SAFE_INTEGER)} AS BIGINT) AS v`.execute(d.db)).rows[0]!.v).toBe(Number.MAX_SAFE_INTEGER);
      await expect(sql`SELECT CAST('9007199254740993' AS BIGINT) AS v`.execute(d.db)).rejects.toThrow(/beyond 2\^53/);
      expect(await d.ping()).toBe(true);
    });

    backend.it('the tables of both backends accept the same rows and give them back equal; both refuse the same bad rows', async () => {
      const lite = await SQLITE.openDatabase(SERVER_MIGRATIONS);
      const post = await backend.openDatabase(SERVER_MIGRATIONS);
      const tables = (await sqliteTables(lite.db)).filter((t) => t !== 'schema_migrations');
      expect(Object.keys(SMOKE_ROWS).sort()).toEqual([...tables].sort()); // a new table needs a row here
      for (const [table, row] of Object.entries(SMOKE_ROWS)) {
        for (const d of [lite, post]) await d.db.insertInto(table).values(row).execute();
      }
      for (const table of Object.keys(SMOKE_ROWS)) {
        const fromLite = await lite.db.selectFrom(table).selectAll().execute();
        const fromPost = await post.db.selectFrom(table).selectAll().execute();
        expect(fromLite).toHaveLength(1);
        expect(fromLite[0]).toMatchObject(SMOKE_ROWS[table]!);
        expect({ table, row: fromPost[0] }).toEqual({ table, row: fromLite[0] });
      }
      // A second node, for the constraints between rows of different nodes.
      for (const d of [lite, post]) await d.db.insertInto('nodes').values({ ...SMOKE_ROWS.nodes, id: 'n2' }).execute();
      for (const [table, row, why] of BAD_ROWS) {
        for (const d of [lite, post]) {
          await expect(d.db.insertInto(table).values(row).execute(), `${d.dialect} accepted ${table} ${why}`).rejects.toThrow();
        }
      }
      // The control: the same rows with the offending value fixed go in.
      for (const d of [lite, post]) {
        await d.db.insertInto('mesh_nodes').values({ ...SMOKE_ROWS.mesh_nodes, node_id: 'n2', mesh_ip: 0xfd00_0002, wg_public_key: 'wg2' }).execute();
        await d.db.insertInto('ops_agent_bundles').values({ ...SMOKE_ROWS.ops_agent_bundles, build_id: 'b5', percent: 100, current: 0, allow_downgrade: 1 }).execute();
        await d.db.insertInto('mesh_psks').values({ ...SMOKE_ROWS.mesh_psks, node_a: 'a', node_b: 'c' }).execute();
      }
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Schema comparison

interface ColumnShape {
  name: string;
  type: 'integer' | 'text' | 'blob' | 'real';
  /** 'generated': an identity column (PostgreSQL), AUTOINCREMENT or a seq kept by a trigger (SQLite). */
  nullable: boolean | 'generated';
  default: string | null;
  /** Position in the primary key (1-based), 0 when not in it. */
  pk: number;
}
interface TableShape {
  columns: ColumnShape[];
  /** CREATE INDEX indexes (not those backing a key or UNIQUE constraint): "name unique? (columns) partial?". */
  indexes: string[];
  /** UNIQUE constraints other than the primary key: "(columns)". */
  uniques: string[];
  /** Foreign keys: "(columns) -> table(columns)". */
  foreignKeys: string[];
}

async function sqliteTables(db: Queryable): Promise<string[]> {
  return (await sql<{ name: string }>`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`.execute(db)).rows.map((r) => r.name);
}

async function sqliteSchema(db: Queryable): Promise<Record<string, TableShape>> {
  const out: Record<string, TableShape> = {};
  const triggers = new Set((await sql<{ name: string }>`SELECT name FROM sqlite_master WHERE type = 'trigger'`.execute(db)).rows.map((r) => r.name));
  for (const table of await sqliteTables(db)) {
    const ddl = (await sql<{ sql: string }>`SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ${table}`.execute(db)).rows[0]!.sql;
    const cols = (await sql<{ name: string; type: string; notnull: number; dflt_value: string | null; pk: number }>`SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(${table})`.execute(db)).rows;
    const columns = cols.map((c): ColumnShape => {
      const generated = (c.pk === 1 && c.type === 'INTEGER' && /AUTOINCREMENT/i.test(ddl)) || (c.name === 'seq' && triggers.has(`${table}_seq`));
      return { name: c.name, type: c.type.toLowerCase() as ColumnShape['type'], nullable: generated ? 'generated' : !(c.notnull || c.pk > 0), default: c.dflt_value, pk: c.pk };
    });
    const indexes: string[] = [];
    const uniques: string[] = [];
    for (const ix of (await sql<{ name: string; unique: number; origin: string; partial: number }>`SELECT name, "unique", origin, partial FROM pragma_index_list(${table})`.execute(db)).rows) {
      const on = (await sql<{ name: string }>`SELECT name FROM pragma_index_info(${ix.name}) ORDER BY seqno`.execute(db)).rows.map((r) => r.name).join(', ');
      if (ix.origin === 'c') indexes.push(`${ix.name}${ix.unique ? ' unique' : ''} (${on})${ix.partial ? ' partial' : ''}`);
      else if (ix.origin === 'u') uniques.push(`(${on})`);
    }
    const fks = (await sql<{ id: number; seq: number; table: string; from: string; to: string }>`SELECT id, seq, "table", "from", "to" FROM pragma_foreign_key_list(${table}) ORDER BY id, seq`.execute(db)).rows;
    const foreignKeys = [...new Set(fks.map((f) => f.id))].map((id) => {
      const parts = fks.filter((f) => f.id === id);
      return `(${parts.map((p) => p.from).join(', ')}) -> ${parts[0]!.table}(${parts.map((p) => p.to).join(', ')})`;
    });
    out[table] = { columns, indexes: indexes.sort(), uniques: uniques.sort(), foreignKeys: foreignKeys.sort() };
  }
  return out;
}

const PG_TYPES: Record<string, ColumnShape['type']> = { bigint: 'integer', integer: 'integer', text: 'text', bytea: 'blob', 'double precision': 'real' };

async function postgresSchema(db: Queryable): Promise<Record<string, TableShape>> {
  const out: Record<string, TableShape> = {};
  const tables = (await sql<{ table_name: string }>`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`.execute(db)).rows.map((r) => r.table_name);
  for (const table of tables) {
    const cols = (await sql<{ column_name: string; data_type: string; is_nullable: string; column_default: string | null; is_identity: string; pk: number | null }>`
      SELECT c.column_name, c.data_type, c.is_nullable, c.column_default, c.is_identity,
        (SELECT k.ordinal_position FROM information_schema.table_constraints t
           JOIN information_schema.key_column_usage k ON k.constraint_name = t.constraint_name AND k.table_schema = t.table_schema
          WHERE t.table_schema = 'public' AND t.table_name = c.table_name AND t.constraint_type = 'PRIMARY KEY' AND k.column_name = c.column_name) AS pk
      FROM information_schema.columns c WHERE c.table_schema = 'public' AND c.table_name = ${table} ORDER BY c.ordinal_position`.execute(db)).rows;
    const columns = cols.map((c): ColumnShape => ({
      name: c.column_name,
      type: PG_TYPES[c.data_type] ?? (c.data_type as ColumnShape['type']),
      nullable: c.is_identity === 'YES' ? 'generated' : c.is_nullable === 'YES',
      // '[]'::text → '[]' (SQLite keeps the default's text as written).
      default: c.column_default === null ? null : c.column_default.replace(/::[a-z ]+$/, ''),
      pk: c.pk ?? 0,
    }));
    const indexRows = (await sql<{ name: string; def: string; constraint_type: string | null }>`
      SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS def,
        (SELECT con.contype::text FROM pg_constraint con WHERE con.conindid = x.indexrelid AND con.contype IN ('p', 'u')) AS constraint_type
      FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
      WHERE n.nspname = 'public' AND t.relname = ${table}`.execute(db)).rows;
    const indexes: string[] = [];
    const uniques: string[] = [];
    for (const ix of indexRows) {
      const m = /^CREATE (UNIQUE )?INDEX \S+ ON \S+ USING btree \(([^)]*)\)( WHERE .*)?$/.exec(ix.def);
      if (!m) throw new Error(`unexpected index definition: ${ix.def}`);
      if (ix.constraint_type === null) indexes.push(`${ix.name}${m[1] ? ' unique' : ''} (${m[2]})${m[3] ? ' partial' : ''}`);
      else if (ix.constraint_type === 'u') uniques.push(`(${m[2]})`);
    }
    const fkRows = (await sql<{ def: string }>`
      SELECT pg_get_constraintdef(con.oid) AS def FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
      WHERE n.nspname = 'public' AND t.relname = ${table} AND con.contype = 'f'`.execute(db)).rows;
    const foreignKeys = fkRows.map((r) => {
      const m = /^FOREIGN KEY \(([^)]*)\) REFERENCES (\S+)\(([^)]*)\)$/.exec(r.def);
      if (!m) throw new Error(`unexpected foreign key: ${r.def}`);
      return `(${m[1]}) -> ${m[2]}(${m[3]})`;
    });
    out[table] = { columns, indexes: indexes.sort(), uniques: uniques.sort(), foreignKeys: foreignKeys.sort() };
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// One row per table, in foreign-key order; identity / seq columns left to the backend.

const SMOKE_ROWS: Record<string, Record<string, unknown>> = {
  meta: { key: 'k', value: 'v' },
  ca: { id: 1, key_blob: ALL_BYTES, kdf_salt: Buffer.from([0, 1]), cert_pem: 'pem', created_at: T0 },
  nodes: { id: 'n1', hostname: 'h1', created_at: T0, agent_version: '1.2.3', last_seen: Number.MAX_SAFE_INTEGER, removed_at: null },
  tokens: { hash: 'h', created_at: T0, expires_at: T0 + DAY, consumed_at: BIG, node_id: 'n1', tags: '[]', id: 't1', revoked_at: null, csr_sha256: 'c', cert_serial: 's1' },
  certs: { serial: 's1', node_id: 'n1', not_before: T0, not_after: T0 + DAY, revoked_at: T0 + 1, pem: 'p' },
  audit_log: { ts: T0, finished_at: T0 + 1, source: 'agent', actor: 'a', operation: 'op', node_id: 'n1', target: 't', result: 'ok', details: '{"x":1}' },
  mesh_settings: { key: 'cidr', value: '100.64.0.0/10' },
  mesh_master: { id: 1, key_blob: ALL_BYTES, kdf_salt: Buffer.from('salt') },
  mesh_signing_keys: { key_id: 'k1', public_key: Buffer.from([1, 2, 3]), sealed_pkcs8: ALL_BYTES, created_at: T0 },
  mesh_nodes: { node_id: 'n1', mesh_ip: 0xfd00_0001, wg_public_key: 'wg', endpoints: '["1.2.3.4:51820"]', observed_addr: '1.2.3.4:5', last_seq: BIG, announced: 'null', nat: '{"mapping":"eim"}' },
  mesh_psks: { node_a: 'a', node_b: 'b', sealed: ALL_BYTES, created_at: T0 },
  mesh_events: { node_id: 'n1', seq: BIG, type: 'peer.add', ts: T0, sealed: ALL_BYTES, signature: Buffer.from([0xff, 0]), key_id: 'k1' },
  mesh_feed: { ts: T0, node_id: 'n1', kind: 'sent', type: 'peer.add', seq: 1, detail: '{}' },
  mesh_announced_peers: { node_id: 'n1', peer_id: 'n2', mesh_ip: '100.64.0.2', public_key: 'pk', endpoints: '[]', psk_tag: 'tag', path: 'relay' },
  mesh_token_tags: { token_hash: 'h', tags: '["db"]' },
  mesh_node_tags: { node_id: 'n1', tags: '["db"]' },
  ops_agent_bundles: { build_id: 'b1', sha256: 'ab', version: '1.0.0', size: 2 ** 33, file: 'f', percent: 50, current: 1, created_at: T0, signature: 'sig', key_id: 'k', allow_downgrade: 0 },
  ops_upgrade_status: { node_id: 'n1', build_id: 'b1', state: 'failed', message: null, ts: T0, code: 'ML_ERR_X' },
  obs_metrics: { node_id: 'n1', name: 'm', labels: '{}', value: 0.1 + 0.2, ts: T0 },
  obs_logs: { node_id: 'n1', ts: T0, level: 'warn', msg: 'm', fields: null, received_at: T0 + 1 },
  obs_drops: { node_id: 'n1', kind: 'logs', total: 2 ** 40 },
};

/** Rows both schemas must refuse (their CHECK, UNIQUE and FOREIGN KEY constraints). */
const BAD_ROWS: Array<[table: string, row: Record<string, unknown>, why: string]> = [
  ['ca', { ...SMOKE_ROWS.ca, id: 2 }, 'a second CA row'],
  ['mesh_master', { ...SMOKE_ROWS.mesh_master, id: 2 }, 'a second master key'],
  ['certs', { ...SMOKE_ROWS.certs, serial: 's2', node_id: 'ghost' }, 'a certificate of no node'],
  ['tokens', { ...SMOKE_ROWS.tokens, hash: 'h2' }, 'a second token with the same id'],
  ['audit_log', { ...SMOKE_ROWS.audit_log, source: 'robot' }, 'an unknown source'],
  ['mesh_psks', { ...SMOKE_ROWS.mesh_psks, node_a: 'b', node_b: 'a' }, 'a pair out of order'],
  ['mesh_nodes', { ...SMOKE_ROWS.mesh_nodes, node_id: 'n1', mesh_ip: 2 }, 'a second row of one node'],
  ['mesh_announced_peers', { ...SMOKE_ROWS.mesh_announced_peers, peer_id: 'n3', path: 'carrier-pigeon' }, 'an unknown path'],
  ['ops_agent_bundles', { ...SMOKE_ROWS.ops_agent_bundles, build_id: 'b2', percent: 101 }, 'a percent above 100'],
  ['ops_agent_bundles', { ...SMOKE_ROWS.ops_agent_bundles, build_id: 'b3', allow_downgrade: 2 }, 'a flag that is not 0/1'],
  ['ops_agent_bundles', { ...SMOKE_ROWS.ops_agent_bundles, build_id: 'b4', current: 2 }, 'a current flag that is not 0/1'],
  ['mesh_nodes', { ...SMOKE_ROWS.mesh_nodes, node_id: 'n2', wg_public_key: 'wg2' }, 'a mesh address held by another node'],
  ['mesh_nodes', { ...SMOKE_ROWS.mesh_nodes, node_id: 'n2', mesh_ip: 0xfd00_0002 }, 'a WireGuard key held by another node'],
  ['tokens', { ...SMOKE_ROWS.tokens, hash: 'h3', id: 't3', node_id: 'ghost' }, 'a token bound to no node'],
  ['mesh_token_tags', { token_hash: 'no-such-token', tags: '[]' }, 'tags of no token'],
];
