import type { Generated, Kysely } from 'kysely';
import { compiledStatement } from '../store/compiled-statement.js';
import type { StoreDatabase } from '../store/database.js';
import type { Store } from '../store/store.js';

/**
 * All queries of the observability upload (tables in migrations.ts), async on either backend. Retention is bounded
 * twice: at most `logsPerNode` warning lines per node (older ones are deleted as new ones arrive)
 * and nothing older than `maxAgeMs` (pruned periodically); metrics keep only the latest value per
 * series, and series not reported for `maxAgeMs` are pruned too.
 */

export interface MetricSampleRow {
  name: string;
  labels: Record<string, string>;
  value: number;
  ts: number;
}
export interface LogRow {
  ts: number;
  level: string;
  msg: string;
  fields: Record<string, unknown> | null;
  receivedAt: number;
}
export interface RetentionLimits {
  logsPerNode: number;
  seriesPerNode: number;
  maxAgeMs: number;
}

export const DEFAULT_RETENTION: RetentionLimits = Object.freeze({ logsPerNode: 500, seriesPerNode: 2000, maxAgeMs: 7 * 86_400_000 });

/** Column types of the observability tables, as the query layer sees them. */
interface ObsTables {
  obs_metrics: { node_id: string; name: string; labels: string; value: number; ts: number };
  obs_logs: { id: Generated<number>; node_id: string; ts: number; level: string; msg: string; fields: string | null; received_at: number };
  obs_drops: { node_id: string; kind: string; total: number };
}
type Db = Kysely<ObsTables>;

/**
 * "No limit" for a subquery that only skips rows (SQLite's LIMIT -1, PostgreSQL's LIMIT ALL): SQLite
 * takes OFFSET only after a LIMIT, and a limit past any table's size is a text both accept.
 */
const NO_LIMIT = Number.MAX_SAFE_INTEGER;

export class ObservabilityStore {
  readonly #database: StoreDatabase;
  readonly #db: Db;
  readonly #upsertMetric = compiledStatement(['node_id', 'name', 'labels', 'value', 'ts'], (db, v) =>
    db.insertInto('obs_metrics')
      .values({ node_id: v.node_id, name: v.name, labels: v.labels, value: v.value, ts: v.ts })
      .onConflict((oc) => oc.columns(['node_id', 'name', 'labels'])
        .doUpdateSet((eb) => ({ value: eb.ref('excluded.value'), ts: eb.ref('excluded.ts') }))
        .where((eb) => eb('excluded.ts', '>=', eb.ref('obs_metrics.ts')))),
  );
  readonly #insertLog = compiledStatement(['node_id', 'ts', 'level', 'msg', 'fields', 'received_at'], (db, v) =>
    db.insertInto('obs_logs').values({ node_id: v.node_id, ts: v.ts, level: v.level, msg: v.msg, fields: v.fields, received_at: v.received_at }),
  );

  constructor(store: Store) {
    this.#database = store.database;
    this.#db = store.database.db as Db;
  }

  async saveMetrics(nodeId: string, samples: readonly MetricSampleRow[], limits: RetentionLimits): Promise<void> {
    await this.#database.transaction(async (q) => {
      const tx = q as Db;
      // One statement per sample: a batch may name a series twice, which one multi-row upsert refuses on PostgreSQL.
      for (const s of samples) await this.#upsertMetric(tx, { node_id: nodeId, name: s.name, labels: canonicalLabels(s.labels), value: s.value, ts: s.ts });
      // An agent inventing label values must not grow the table without bound.
      await tx.deleteFrom('obs_metrics')
        .where('node_id', '=', nodeId)
        .where((eb) => eb(eb.refTuple('name', 'labels'), 'in',
          eb.selectFrom('obs_metrics').select(['name', 'labels']).where('node_id', '=', nodeId).orderBy('ts', 'desc').limit(NO_LIMIT).offset(limits.seriesPerNode)
            .$asTuple('name', 'labels')))
        .execute();
    });
  }

  async saveLogs(nodeId: string, records: ReadonlyArray<Omit<LogRow, 'receivedAt'>>, limits: RetentionLimits, now = Date.now()): Promise<void> {
    await this.#database.transaction(async (q) => {
      const tx = q as Db;
      for (const r of records) await this.#insertLog(tx, { node_id: nodeId, ts: r.ts, level: r.level, msg: r.msg, fields: r.fields ? JSON.stringify(r.fields) : null, received_at: now });
      await tx.deleteFrom('obs_logs')
        .where('node_id', '=', nodeId)
        .where('id', '<=', (eb) => eb.selectFrom('obs_logs').select('id').where('node_id', '=', nodeId).orderBy('id', 'desc').limit(1).offset(limits.logsPerNode))
        .execute();
    });
  }

  async addDrops(nodeId: string, kind: string, n: number): Promise<void> {
    if (n <= 0) return;
    await this.#db.insertInto('obs_drops')
      .values({ node_id: nodeId, kind, total: n })
      // Qualified: PostgreSQL finds a bare `total` ambiguous between the row and `excluded`.
      .onConflict((oc) => oc.columns(['node_id', 'kind']).doUpdateSet((eb) => ({ total: eb('obs_drops.total', '+', eb.ref('excluded.total')) })))
      .execute();
  }

  async prune(limits: RetentionLimits, now = Date.now()): Promise<void> {
    await this.#db.deleteFrom('obs_logs').where('received_at', '<', now - limits.maxAgeMs).execute();
    await this.#db.deleteFrom('obs_metrics').where('ts', '<', now - limits.maxAgeMs).execute();
  }

  async metricsOf(nodeId: string): Promise<MetricSampleRow[]> {
    const rows = await this.#db.selectFrom('obs_metrics').select(['name', 'labels', 'value', 'ts']).where('node_id', '=', nodeId).orderBy('name').orderBy('labels').execute();
    return rows.map((r) => ({ name: r.name, labels: JSON.parse(r.labels) as Record<string, string>, value: r.value, ts: r.ts }));
  }

  async recentLogs(nodeId: string, limit: number): Promise<LogRow[]> {
    const rows = await this.#db.selectFrom('obs_logs').select(['ts', 'level', 'msg', 'fields', 'received_at']).where('node_id', '=', nodeId).orderBy('id', 'desc').limit(limit).execute();
    return rows.map((r) => ({
      ts: r.ts,
      level: r.level,
      msg: r.msg,
      fields: r.fields === null ? null : (JSON.parse(r.fields) as Record<string, unknown>),
      receivedAt: r.received_at,
    }));
  }

  async drops(nodeId: string): Promise<Record<string, number>> {
    const rows = await this.#db.selectFrom('obs_drops').select(['kind', 'total']).where('node_id', '=', nodeId).execute();
    return Object.fromEntries(rows.map((r) => [r.kind, r.total]));
  }

  async logCount(): Promise<number> {
    const r = await this.#db.selectFrom('obs_logs').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
    return Number(r.n);
  }
}

/** Labels as JSON with sorted keys, so one series is one row. */
function canonicalLabels(labels: Record<string, string>): string {
  return JSON.stringify(Object.fromEntries(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
}
