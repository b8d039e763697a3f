import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/server/audit-log.js';
import { createFeatureQuestions } from '../../src/server/feature.js';
import { Presence } from '../../src/server/presence.js';
import { PublicRoutes } from '../../src/server/public-routes.js';
import { openServerStore, SERVER_MIGRATIONS } from '../../src/server/features.js';
import { createLogger } from '../../src/util/logger.js';
import { tempDir } from './helpers.js';

const silent = createLogger({ name: 'test', level: 'silent' });

describe('server core parts', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterAll(async () => {
    for (const c of cleanups) await c();
  });
  async function freshPath(): Promise<string> {
    const d = await tempDir('ml-core-');
    cleanups.push(d.cleanup);
    return `${d.path}/meshlink.db`;
  }

  it('presence: online means an open session, counted per session; last_seen goes through one throttle', async () => {
    const s = await openServerStore(await freshPath());
    s.database.sqlite!.prepare("INSERT INTO nodes (id, hostname, created_at) VALUES ('n1', 'h1', 0)").run();
    const p = new Presence(s, silent, { flushMs: 3_600_000, minIntervalMs: 60_000 });
    const lastSeen = async (): Promise<number | null> => (await s.getNode('n1'))!.lastSeen;

    p.heard('n1', 1_000); // an authenticated connection before its session: seen, not online
    expect(p.isOnline('n1')).toBe(false);
    await p.flush();
    expect(await lastSeen()).toBe(1_000);

    p.opened('n1', 2_000);
    p.opened('n1', 2_500); // make-before-break: a second session
    expect(p.isOnline('n1')).toBe(true);
    p.heard('n1', 30_000); // within a minute of the last write: throttled
    await p.flush();
    expect(await lastSeen()).toBe(2_500);
    p.heard('n1', 62_501); // a minute later: written
    await p.flush();
    expect(await lastSeen()).toBe(62_501);

    p.closed('n1', 70_000); // one of two sessions closed: still online, and a close always writes
    expect(p.isOnline('n1')).toBe(true);
    await p.flush();
    expect(await lastSeen()).toBe(70_000);
    p.closed('n1', 71_000);
    expect(p.isOnline('n1')).toBe(false);
    expect(p.onlineCount).toBe(0);
    await p.close(); // flushes what is pending
    expect(await lastSeen()).toBe(71_000);
    await s.close();
  });

  it('public routes: a prefix match hands the handler the rest; overlapping or malformed prefixes are refused', () => {
    const routes = new PublicRoutes();
    const handler = async (): Promise<void> => {};
    routes.add({ method: 'GET', prefix: '/v1/agent/bundle/', clientCertificate: true }, handler);
    expect(routes.match('/v1/agent/bundle/abc')).toMatchObject({ rest: 'abc', route: { method: 'GET', clientCertificate: true } });
    expect(routes.match('/v1/agent/other')).toBeUndefined();
    expect(() => routes.add({ method: 'GET', prefix: '/v1/agent/', clientCertificate: false }, handler)).toThrow(/overlaps/);
    expect(() => routes.add({ method: 'GET', prefix: '/v1/agent/bundle/x/', clientCertificate: false }, handler)).toThrow(/overlaps/);
    expect(() => routes.add({ method: 'GET', prefix: 'v1/x', clientCertificate: false }, handler)).toThrow(/must look like/);
  });

  it('feature questions: answered once, asked by name; unanswered questions have no answer', async () => {
    const q = createFeatureQuestions();
    expect(q.ask('meshEventCreatedAt')).toBeUndefined();
    q.answer('meshEventCreatedAt', async (nodeId, seq) => (nodeId === 'n1' ? seq * 10 : undefined));
    expect(await q.ask('meshEventCreatedAt')?.('n1', 4)).toBe(40);
    expect(() => q.answer('meshEventCreatedAt', async () => undefined)).toThrow(/already answered/);
  });

  it('audit log: the core owns it; a store written before the move keeps its ops_audit records, ids included', async () => {
    const path = await freshPath();
    // The schema as the ops feature left it before the move: every migration up to and including 200.
    const db = new Database(path);
    db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT');
    for (const m of [...SERVER_MIGRATIONS].sort((a, b) => a.version - b.version)) {
      if (m.version === 2 || m.version === 201) continue;
      db.exec(m.sqlite);
      db.prepare('INSERT INTO schema_migrations VALUES (?, ?, 0)').run(m.version, m.name);
    }
    db.prepare("INSERT INTO ops_audit (id, ts, finished_at, source, actor, operation, node_id, target, result, details) VALUES (7, 1000, 1001, 'admin', 'alice', 'nodes/remove', 'n1', 'h1', 'ok', NULL)").run();
    db.close();

    const s = await openServerStore(path);
    const audit = AuditLog.of(s);
    expect(await audit.list(10)).toEqual([{ id: 7, ts: 1000, finishedAt: 1001, source: 'admin', actor: 'alice', operation: 'nodes/remove', nodeId: 'n1', target: 'h1', result: 'ok', details: null }]);
    const tables = (s.database.sqlite!.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>).map((t) => t.name);
    expect(tables).toContain('audit_log');
    expect(tables).not.toContain('ops_audit');
    // New records continue after the moved ids, and a started record is finished in place.
    const id = await audit.start({ actor: 'bob', operation: 'exec', nodeId: 'n1', target: 'ls', details: { big: 'x'.repeat(10_000) } });
    expect(id).toBeGreaterThan(7);
    await audit.finish(id, 'exit:0');
    const [newest] = await audit.ofNode('n1', 1);
    expect(newest).toMatchObject({ id, actor: 'bob', result: 'exit:0', details: { truncated: true } });
    expect(newest!.finishedAt).not.toBeNull();
    await s.close();
  });
});
