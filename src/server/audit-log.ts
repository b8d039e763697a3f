import type Database from 'better-sqlite3';
import type { Store } from './store/store.js';

/**
 * The audit log belongs to the core: every state-changing admin operation (the admin server records
 * them, whichever feature serves the route) and every record an agent reports about what it did
 * (audit.batch). Table `audit_log` (core migration 2; the ops feature's old `ops_audit` rows were moved
 * into it by ops migration 201). Records are inserted when an operation starts and completed with its
 * result when it ends, or written whole.
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

/** Details are JSON; keep each record small (the audit log is not a data store). */
const DETAILS_CAP = 4096;
const RESULT_CAP = 256;

function detailsJson(details: Record<string, unknown> | null | undefined): string | null {
  if (!details) return null;
  const json = JSON.stringify(details);
  return json.length <= DETAILS_CAP ? json : JSON.stringify({ truncated: true, head: json.slice(0, DETAILS_CAP - 64) });
}

type Row = Record<string, unknown>;

function recordOf(r: Row): AuditRecord {
  return {
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
  };
}

export class AuditLog {
  readonly #stmts;

  private constructor(db: Database.Database) {
    this.#stmts = {
      insert: db.prepare(
        'INSERT INTO audit_log (ts, finished_at, source, actor, operation, node_id, target, result, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      finish: db.prepare('UPDATE audit_log SET finished_at = ?, result = ?, details = COALESCE(?, details) WHERE id = ?'),
      list: db.prepare('SELECT * FROM audit_log ORDER BY id DESC LIMIT ?'),
      ofNode: db.prepare('SELECT * FROM audit_log WHERE node_id = ? ORDER BY id DESC LIMIT ?'),
      pruneAgent: db.prepare(`DELETE FROM audit_log WHERE node_id = ? AND source = 'agent' AND id <= (
        SELECT id FROM audit_log WHERE node_id = ? AND source = 'agent' ORDER BY id DESC LIMIT 1 OFFSET ?)`),
    };
  }

  static #byStore = new WeakMap<Store, AuditLog>();

  /** The audit log of a store (one per store, statements prepared once). */
  static of(store: Store): AuditLog {
    let log = AuditLog.#byStore.get(store);
    if (!log) AuditLog.#byStore.set(store, (log = new AuditLog(store.database)));
    return log;
  }

  /** Records the start of an operation; returns the id to finish it with. */
  start(a: AuditStart): number {
    const info = this.#stmts.insert.run(a.ts ?? Date.now(), null, a.source ?? 'admin', a.actor, a.operation, a.nodeId, a.target, 'started', detailsJson(a.details));
    return Number(info.lastInsertRowid);
  }

  finish(id: number, result: string, details?: Record<string, unknown> | null, at = Date.now()): void {
    this.#stmts.finish.run(at, result.slice(0, RESULT_CAP), detailsJson(details), id);
  }

  /** A complete record in one go (agent-reported records, quick admin calls). */
  record(a: AuditStart & { result: string; finishedAt?: number }): number {
    const ts = a.ts ?? Date.now();
    const info = this.#stmts.insert.run(ts, a.finishedAt ?? ts, a.source ?? 'admin', a.actor, a.operation, a.nodeId, a.target, a.result.slice(0, RESULT_CAP), detailsJson(a.details));
    return Number(info.lastInsertRowid);
  }

  /** Keeps the newest `keep` records a node's agent reported, deleting older ones (the operator's are never pruned here). */
  pruneAgentRecords(nodeId: string, keep: number): number {
    return this.#stmts.pruneAgent.run(nodeId, nodeId, keep).changes;
  }

  /** Newest first, at most `limit` (1–10,000) and at most PAGE_BYTES of records. */
  list(limit = 100): AuditRecord[] {
    return page(this.#stmts.list.all(clamp(limit)) as Row[]);
  }

  /** The node's newest records first (same caps as list). */
  ofNode(nodeId: string, limit: number): AuditRecord[] {
    return page(this.#stmts.ofNode.all(nodeId, clamp(limit)) as Row[]);
  }
}

/**
 * A page of records holds at most this many bytes of stored text (at least one record), so that
 * `meshlink server audit --limit 10000` of 4 KiB records stays far below the admin client's 16 MiB
 * answer cap instead of failing with "admin response too large": the newest records are shown.
 */
export const AUDIT_PAGE_BYTES = 8 * 1024 * 1024;

function page(rows: Row[]): AuditRecord[] {
  let bytes = 0;
  const out: AuditRecord[] = [];
  for (const r of rows) {
    bytes += 256 + String(r.details ?? '').length + String(r.target ?? '').length + String(r.actor ?? '').length + String(r.operation).length + String(r.result).length;
    if (out.length > 0 && bytes > AUDIT_PAGE_BYTES) break;
    out.push(recordOf(r));
  }
  return out;
}

const clamp = (limit: number): number => Math.max(1, Math.min(Math.floor(limit), 10_000));
