import type { Generated, Insertable, Kysely, Selectable } from 'kysely';
import type { Queryable } from './store/database.js';
import type { Store } from './store/store.js';
import { compiledStatement } from './store/compiled-statement.js';

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

interface AuditTables {
  audit_log: {
    id: Generated<number>; ts: number; finished_at: number | null; source: 'admin' | 'agent'; actor: string | null; operation: string;
    node_id: string | null; target: string | null; result: string; details: string | null;
  };
}
type Row = Selectable<AuditTables['audit_log']>;
type Db = Kysely<AuditTables>;

function recordOf(r: Row): AuditRecord {
  return {
    id: r.id,
    ts: r.ts,
    finishedAt: r.finished_at ?? null,
    source: r.source,
    actor: r.actor ?? null,
    operation: r.operation,
    nodeId: r.node_id ?? null,
    target: r.target ?? null,
    result: r.result,
    details: r.details === null ? null : (JSON.parse(r.details) as Record<string, unknown>),
  };
}

const AUDIT_COLUMNS = ['ts', 'finished_at', 'source', 'actor', 'operation', 'node_id', 'target', 'result', 'details'] as const;

export class AuditLog {
  readonly #db: Db;
  /** Every record goes through this one statement (an enrollment, an agent's reports): compiled once. */
  readonly #insertRecord = compiledStatement(AUDIT_COLUMNS, (db, v) => (db as Db).insertInto('audit_log').values(v).returning('id'));

  private constructor(db: Queryable) {
    this.#db = db as Db;
  }

  static #byStore = new WeakMap<Store, AuditLog>();

  /** The audit log of a store (one per store). */
  static of(store: Store): AuditLog {
    let log = AuditLog.#byStore.get(store);
    if (!log) AuditLog.#byStore.set(store, (log = new AuditLog(store.database.db)));
    return log;
  }

  /** Records the start of an operation; returns the id to finish it with. */
  async start(a: AuditStart): Promise<number> {
    return this.#insert({ ts: a.ts ?? Date.now(), finished_at: null, source: a.source ?? 'admin', actor: a.actor, operation: a.operation, node_id: a.nodeId, target: a.target, result: 'started', details: detailsJson(a.details) });
  }

  async finish(id: number, result: string, details?: Record<string, unknown> | null, at = Date.now()): Promise<void> {
    await this.#db.updateTable('audit_log')
      .set((eb) => ({ finished_at: at, result: result.slice(0, RESULT_CAP), details: eb.fn.coalesce(eb.val(detailsJson(details)), eb.ref('details')) }))
      .where('id', '=', id).execute();
  }

  /**
   * A complete record in one go (agent-reported records, quick admin calls). `tx`: the transaction
   * it belongs to (the enrollment's), when it must commit or roll back with other writes.
   */
  async record(a: AuditStart & { result: string; finishedAt?: number }, tx?: Queryable): Promise<number> {
    const ts = a.ts ?? Date.now();
    return this.#insert({ ts, finished_at: a.finishedAt ?? ts, source: a.source ?? 'admin', actor: a.actor, operation: a.operation, node_id: a.nodeId, target: a.target, result: a.result.slice(0, RESULT_CAP), details: detailsJson(a.details) }, tx);
  }

  async #insert(row: Required<Omit<Insertable<AuditTables['audit_log']>, 'id'>>, tx?: Queryable): Promise<number> {
    const r = await this.#insertRecord(tx ?? this.#db, row);
    return Number((r.rows[0] as { id: number | bigint }).id);
  }

  /** Keeps the newest `keep` records a node's agent reported, deleting older ones (the operator's are never pruned here). */
  async pruneAgentRecords(nodeId: string, keep: number): Promise<number> {
    const r = await this.#db.deleteFrom('audit_log').where('node_id', '=', nodeId).where('source', '=', 'agent')
      .where('id', '<=', (eb) => eb.selectFrom('audit_log').select('id').where('node_id', '=', nodeId).where('source', '=', 'agent')
        .orderBy('id', 'desc').limit(1).offset(keep))
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  }

  /** Newest first, at most `limit` (1–10,000) and at most PAGE_BYTES of records. */
  async list(limit = 100): Promise<AuditRecord[]> {
    return page(await this.#db.selectFrom('audit_log').selectAll().orderBy('id', 'desc').limit(clamp(limit)).execute());
  }

  /** The node's newest records first (same caps as list). */
  async ofNode(nodeId: string, limit: number): Promise<AuditRecord[]> {
    return page(await this.#db.selectFrom('audit_log').selectAll().where('node_id', '=', nodeId).orderBy('id', 'desc').limit(clamp(limit)).execute());
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
