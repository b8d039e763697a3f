import type { Migration } from '../store/migrations.js';

/** Schema migrations of the ops feature: versions 200–299, append only (see migrations.ts). */
export const OPS_MIGRATIONS: readonly Migration[] = [
  {
    version: 200,
    name: 'ops: audit log, agent bundles, upgrade status',
    sqlite: `
      -- One row per admin operation (and per agent-reported record): inserted when it starts,
      -- completed with its result when it ends. Times in ms since the epoch.
      CREATE TABLE ops_audit (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        ts          INTEGER NOT NULL,
        finished_at INTEGER,
        source      TEXT NOT NULL CHECK (source IN ('admin', 'agent')),
        actor       TEXT,
        operation   TEXT NOT NULL,
        node_id     TEXT,
        target      TEXT,
        result      TEXT NOT NULL,
        details     TEXT
      ) STRICT;
      CREATE INDEX ops_audit_ts ON ops_audit (ts);

      -- Agent builds the server can hand out. At most one is current (the offer).
      CREATE TABLE ops_agent_bundles (
        build_id   TEXT PRIMARY KEY,
        sha256     TEXT NOT NULL,
        version    TEXT NOT NULL,
        size       INTEGER NOT NULL,
        file       TEXT NOT NULL,
        percent    INTEGER NOT NULL CHECK (percent BETWEEN 0 AND 100),
        current    INTEGER NOT NULL DEFAULT 0 CHECK (current IN (0, 1)),
        created_at INTEGER NOT NULL
      ) STRICT;

      -- The last upgrade status each node reported (agent.upgrade.status).
      CREATE TABLE ops_upgrade_status (
        node_id  TEXT PRIMARY KEY,
        build_id TEXT NOT NULL,
        state    TEXT NOT NULL,
        message  TEXT,
        ts       INTEGER NOT NULL
      ) STRICT;
    `,
    postgres: `
      CREATE TABLE ops_agent_bundles (
        build_id   TEXT COLLATE "C" PRIMARY KEY,
        sha256     TEXT COLLATE "C" NOT NULL,
        version    TEXT COLLATE "C" NOT NULL,
        size       BIGINT NOT NULL,
        file       TEXT COLLATE "C" NOT NULL,
        percent    INTEGER NOT NULL CHECK (percent BETWEEN 0 AND 100),
        current    INTEGER NOT NULL DEFAULT 0 CHECK (current IN (0, 1)),
        created_at BIGINT NOT NULL
      );
      CREATE TABLE ops_upgrade_status (
        node_id  TEXT COLLATE "C" PRIMARY KEY,
        build_id TEXT COLLATE "C" NOT NULL,
        state    TEXT COLLATE "C" NOT NULL,
        message  TEXT COLLATE "C",
        ts       BIGINT NOT NULL
      );
      -- SQLite's migration 200 also made ops_audit, which 201 folded into the core's audit_log.
    `,
  },
  {
    version: 201,
    name: 'ops: the audit log moves to the core (audit_log)',
    sqlite: `
      -- Keeps ids, so audit record ids printed before the move still name the same record.
      INSERT INTO audit_log (id, ts, finished_at, source, actor, operation, node_id, target, result, details)
        SELECT id, ts, finished_at, source, actor, operation, node_id, target, result, details FROM ops_audit ORDER BY id;
      DROP TABLE ops_audit;
    `,
    postgres: `
      SELECT 1;
    `,
  },
  {
    version: 202,
    name: 'ops: signed agent releases (signature, key id, forced downgrade) and status codes',
    sqlite: `
      -- A bundle is offered only with the release signature \`upgrade set\` verified; rows from
      -- before signing keep NULL and are never offered again (agents refuse unsigned builds).
      ALTER TABLE ops_agent_bundles ADD COLUMN signature TEXT;
      ALTER TABLE ops_agent_bundles ADD COLUMN key_id TEXT;
      ALTER TABLE ops_agent_bundles ADD COLUMN allow_downgrade INTEGER NOT NULL DEFAULT 0 CHECK (allow_downgrade IN (0, 1));
      -- The ML_ERR_* code of a failed upgrade (agent.upgrade.status code).
      ALTER TABLE ops_upgrade_status ADD COLUMN code TEXT;
    `,
    postgres: `
      ALTER TABLE ops_agent_bundles ADD COLUMN signature TEXT COLLATE "C";
      ALTER TABLE ops_agent_bundles ADD COLUMN key_id TEXT COLLATE "C";
      ALTER TABLE ops_agent_bundles ADD COLUMN allow_downgrade INTEGER NOT NULL DEFAULT 0 CHECK (allow_downgrade IN (0, 1));
      ALTER TABLE ops_upgrade_status ADD COLUMN code TEXT COLLATE "C";
    `,
  },
];
