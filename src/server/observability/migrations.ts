import type { Migration } from '../store/migrations.js';

/** Schema migrations of the observability upload (issue 6): versions 300–399, append only. */
export const OBSERVABILITY_MIGRATIONS: readonly Migration[] = [
  {
    version: 300,
    name: 'observability: latest agent metrics, agent warnings, drop counters',
    sql: `
      -- The latest value of each metric series an agent reported (one row per node, name, labels).
      CREATE TABLE obs_metrics (
        node_id TEXT NOT NULL,
        name    TEXT NOT NULL,
        labels  TEXT NOT NULL,
        value   REAL NOT NULL,
        ts      INTEGER NOT NULL,
        PRIMARY KEY (node_id, name, labels)
      ) STRICT, WITHOUT ROWID;

      -- Agent log lines at warning level and above; bounded per node and by age (store.ts).
      CREATE TABLE obs_logs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        node_id     TEXT NOT NULL,
        ts          INTEGER NOT NULL,
        level       TEXT NOT NULL,
        msg         TEXT NOT NULL,
        fields      TEXT,
        received_at INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX obs_logs_node ON obs_logs (node_id, id);
      CREATE INDEX obs_logs_received ON obs_logs (received_at);

      -- Records the agent dropped before they could be sent (its bounded queues), and batches the
      -- server refused over its per-node rate, as running totals.
      CREATE TABLE obs_drops (
        node_id TEXT NOT NULL,
        kind    TEXT NOT NULL,
        total   INTEGER NOT NULL,
        PRIMARY KEY (node_id, kind)
      ) STRICT, WITHOUT ROWID;
    `,
  },
];
