import type Database from 'better-sqlite3';
import type { Store } from '../store/store.js';

/**
 * All SQL of the observability upload (tables in migrations.ts). Retention is bounded
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

type Row = Record<string, unknown>;

export class ObservabilityStore {
  readonly #db: Database.Database;
  readonly #s;

  constructor(store: Store) {
    const db = store.database;
    this.#db = db;
    this.#s = {
      upsertMetric: db.prepare(
        'INSERT INTO obs_metrics (node_id, name, labels, value, ts) VALUES (?, ?, ?, ?, ?) ' +
          'ON CONFLICT (node_id, name, labels) DO UPDATE SET value = excluded.value, ts = excluded.ts WHERE excluded.ts >= obs_metrics.ts',
      ),
      trimMetrics: db.prepare(
        'DELETE FROM obs_metrics WHERE node_id = ? AND (name, labels) IN (SELECT name, labels FROM obs_metrics WHERE node_id = ? ORDER BY ts DESC LIMIT -1 OFFSET ?)',
      ),
      metricsOf: db.prepare('SELECT name, labels, value, ts FROM obs_metrics WHERE node_id = ? ORDER BY name, labels'),
      insertLog: db.prepare('INSERT INTO obs_logs (node_id, ts, level, msg, fields, received_at) VALUES (?, ?, ?, ?, ?, ?)'),
      trimLogs: db.prepare('DELETE FROM obs_logs WHERE node_id = ? AND id <= (SELECT id FROM obs_logs WHERE node_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)'),
      logsOf: db.prepare('SELECT ts, level, msg, fields, received_at FROM obs_logs WHERE node_id = ? ORDER BY id DESC LIMIT ?'),
      addDrops: db.prepare('INSERT INTO obs_drops (node_id, kind, total) VALUES (?, ?, ?) ON CONFLICT (node_id, kind) DO UPDATE SET total = total + excluded.total'),
      dropsOf: db.prepare('SELECT kind, total FROM obs_drops WHERE node_id = ?'),
      pruneLogs: db.prepare('DELETE FROM obs_logs WHERE received_at < ?'),
      pruneMetrics: db.prepare('DELETE FROM obs_metrics WHERE ts < ?'),
      countLogs: db.prepare('SELECT COUNT(*) AS n FROM obs_logs'),
    };
  }

  saveMetrics(nodeId: string, samples: readonly MetricSampleRow[], limits: RetentionLimits): void {
    this.#db.transaction(() => {
      for (const s of samples) this.#s.upsertMetric.run(nodeId, s.name, canonicalLabels(s.labels), s.value, s.ts);
      // An agent inventing label values must not grow the table without bound.
      this.#s.trimMetrics.run(nodeId, nodeId, limits.seriesPerNode);
    })();
  }

  saveLogs(nodeId: string, records: ReadonlyArray<Omit<LogRow, 'receivedAt'>>, limits: RetentionLimits, now = Date.now()): void {
    this.#db.transaction(() => {
      for (const r of records) this.#s.insertLog.run(nodeId, r.ts, r.level, r.msg, r.fields ? JSON.stringify(r.fields) : null, now);
      this.#s.trimLogs.run(nodeId, nodeId, limits.logsPerNode);
    })();
  }

  addDrops(nodeId: string, kind: string, n: number): void {
    if (n > 0) this.#s.addDrops.run(nodeId, kind, n);
  }

  prune(limits: RetentionLimits, now = Date.now()): void {
    this.#s.pruneLogs.run(now - limits.maxAgeMs);
    this.#s.pruneMetrics.run(now - limits.maxAgeMs);
  }

  metricsOf(nodeId: string): MetricSampleRow[] {
    return (this.#s.metricsOf.all(nodeId) as Row[]).map((r) => ({
      name: r.name as string,
      labels: JSON.parse(r.labels as string) as Record<string, string>,
      value: r.value as number,
      ts: r.ts as number,
    }));
  }

  recentLogs(nodeId: string, limit: number): LogRow[] {
    return (this.#s.logsOf.all(nodeId, limit) as Row[]).map((r) => ({
      ts: r.ts as number,
      level: r.level as string,
      msg: r.msg as string,
      fields: r.fields === null ? null : (JSON.parse(r.fields as string) as Record<string, unknown>),
      receivedAt: r.received_at as number,
    }));
  }

  drops(nodeId: string): Record<string, number> {
    return Object.fromEntries((this.#s.dropsOf.all(nodeId) as Row[]).map((r) => [r.kind as string, r.total as number]));
  }

  logCount(): number {
    return (this.#s.countLogs.get() as { n: number }).n;
  }
}

/** Labels as JSON with sorted keys, so one series is one row. */
function canonicalLabels(labels: Record<string, string>): string {
  return JSON.stringify(Object.fromEntries(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
}
