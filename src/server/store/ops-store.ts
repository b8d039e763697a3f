import type Database from 'better-sqlite3';
import type { Store } from './store.js';

/**
 * SQL of the ops feature (tables from migrations-ops.ts): the audit log, the agent bundles the
 * server offers and the upgrade status agents report.
 */

export interface AuditRecord {
  id: number;
  ts: number;
  finishedAt: number | null;
  source: 'admin' | 'agent';
  actor: string | null;
  operation: string;
  nodeId: string | null;
  target: string | null;
  result: string;
  details: Record<string, unknown> | null;
}

export interface AuditStart {
  ts?: number;
  source?: 'admin' | 'agent';
  actor: string | null;
  operation: string;
  nodeId: string | null;
  target: string | null;
  details?: Record<string, unknown> | null;
}

export interface BundleRow {
  buildId: string;
  sha256: string;
  version: string;
  size: number;
  file: string;
  percent: number;
  current: boolean;
  createdAt: number;
}

export interface UpgradeStatusRow {
  nodeId: string;
  buildId: string;
  state: string;
  message: string | null;
  ts: number;
}

type Row = Record<string, unknown>;

/** Details are JSON; keep each record small (the audit log is not a data store). */
const DETAILS_CAP = 4096;

function detailsJson(details: Record<string, unknown> | null | undefined): string | null {
  if (!details) return null;
  const json = JSON.stringify(details);
  return json.length <= DETAILS_CAP ? json : JSON.stringify({ truncated: true, head: json.slice(0, DETAILS_CAP - 64) });
}

export class OpsStore {
  readonly #db: Database.Database;
  readonly #stmts;

  constructor(store: Store) {
    this.#db = store.database;
    const db = this.#db;
    this.#stmts = {
      insertAudit: db.prepare(
        'INSERT INTO ops_audit (ts, finished_at, source, actor, operation, node_id, target, result, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      finishAudit: db.prepare('UPDATE ops_audit SET finished_at = ?, result = ?, details = COALESCE(?, details) WHERE id = ?'),
      listAudit: db.prepare('SELECT * FROM ops_audit ORDER BY id DESC LIMIT ?'),
      insertBundle: db.prepare(
        'INSERT INTO ops_agent_bundles (build_id, sha256, version, size, file, percent, current, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?) ' +
          'ON CONFLICT (build_id) DO UPDATE SET percent = excluded.percent, version = excluded.version',
      ),
      clearCurrent: db.prepare('UPDATE ops_agent_bundles SET current = 0 WHERE current = 1'),
      setCurrent: db.prepare('UPDATE ops_agent_bundles SET current = 1 WHERE build_id = ?'),
      currentBundle: db.prepare('SELECT * FROM ops_agent_bundles WHERE current = 1'),
      getBundle: db.prepare('SELECT * FROM ops_agent_bundles WHERE build_id = ?'),
      setStatus: db.prepare(
        'INSERT INTO ops_upgrade_status (node_id, build_id, state, message, ts) VALUES (?, ?, ?, ?, ?) ' +
          'ON CONFLICT (node_id) DO UPDATE SET build_id = excluded.build_id, state = excluded.state, message = excluded.message, ts = excluded.ts',
      ),
      listStatus: db.prepare('SELECT * FROM ops_upgrade_status ORDER BY node_id'),
    };
  }

  // --- audit ---

  /** Records the start of an operation; returns the id to finish it with. */
  startAudit(a: AuditStart): number {
    const info = this.#stmts.insertAudit.run(a.ts ?? Date.now(), null, a.source ?? 'admin', a.actor, a.operation, a.nodeId, a.target, 'started', detailsJson(a.details));
    return Number(info.lastInsertRowid);
  }

  finishAudit(id: number, result: string, details?: Record<string, unknown> | null, at = Date.now()): void {
    this.#stmts.finishAudit.run(at, result.slice(0, 256), detailsJson(details), id);
  }

  /** A complete record in one go (agent-reported records, quick admin calls). */
  recordAudit(a: AuditStart & { result: string; finishedAt?: number }): number {
    const ts = a.ts ?? Date.now();
    const info = this.#stmts.insertAudit.run(ts, a.finishedAt ?? ts, a.source ?? 'admin', a.actor, a.operation, a.nodeId, a.target, a.result.slice(0, 256), detailsJson(a.details));
    return Number(info.lastInsertRowid);
  }

  /** Newest first. */
  listAudit(limit = 100): AuditRecord[] {
    return (this.#stmts.listAudit.all(Math.max(1, Math.min(limit, 10_000))) as Row[]).map((r) => ({
      id: r.id as number,
      ts: r.ts as number,
      finishedAt: (r.finished_at as number | null) ?? null,
      source: r.source as 'admin' | 'agent',
      actor: (r.actor as string | null) ?? null,
      operation: r.operation as string,
      nodeId: (r.node_id as string | null) ?? null,
      target: (r.target as string | null) ?? null,
      result: r.result as string,
      details: r.details === null ? null : (JSON.parse(r.details as string) as Record<string, unknown>),
    }));
  }

  // --- bundles ---

  /** Stores a bundle and makes it the current offer (in one transaction). */
  setCurrentBundle(b: Omit<BundleRow, 'current' | 'createdAt'>, now = Date.now()): BundleRow {
    this.#db.transaction(() => {
      this.#stmts.insertBundle.run(b.buildId, b.sha256, b.version, b.size, b.file, b.percent, now);
      this.#stmts.clearCurrent.run();
      this.#stmts.setCurrent.run(b.buildId);
    })();
    return this.getBundle(b.buildId)!;
  }

  currentBundle(): BundleRow | undefined {
    const r = this.#stmts.currentBundle.get() as Row | undefined;
    return r ? bundleRow(r) : undefined;
  }

  getBundle(buildId: string): BundleRow | undefined {
    const r = this.#stmts.getBundle.get(buildId) as Row | undefined;
    return r ? bundleRow(r) : undefined;
  }

  // --- upgrade status ---

  setUpgradeStatus(s: UpgradeStatusRow): void {
    this.#stmts.setStatus.run(s.nodeId, s.buildId, s.state, s.message, s.ts);
  }

  listUpgradeStatus(): UpgradeStatusRow[] {
    return (this.#stmts.listStatus.all() as Row[]).map((r) => ({
      nodeId: r.node_id as string,
      buildId: r.build_id as string,
      state: r.state as string,
      message: (r.message as string | null) ?? null,
      ts: r.ts as number,
    }));
  }
}

function bundleRow(r: Row): BundleRow {
  return {
    buildId: r.build_id as string,
    sha256: r.sha256 as string,
    version: r.version as string,
    size: r.size as number,
    file: r.file as string,
    percent: r.percent as number,
    current: r.current === 1,
    createdAt: r.created_at as number,
  };
}

const byStore = new WeakMap<Store, OpsStore>();

/** The OpsStore of a Store (one per store, statements prepared once). */
export function opsStoreOf(store: Store): OpsStore {
  let ops = byStore.get(store);
  if (!ops) byStore.set(store, (ops = new OpsStore(store)));
  return ops;
}
