/**
 * Numbered schema migrations. Append only: a released migration is never edited; a change is a new
 * entry. Each runs in its own transaction and is recorded in `schema_migrations`.
 * Times are integer milliseconds since the epoch (UTC).
 */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
      CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT;

      -- One row: the CA private key encrypted with AES-256-GCM (see ca-key-crypto.ts) and the CA certificate.
      CREATE TABLE ca (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        key_blob   BLOB NOT NULL,
        kdf_salt   BLOB NOT NULL,
        cert_pem   TEXT NOT NULL,
        created_at INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE nodes (
        id            TEXT PRIMARY KEY,
        hostname      TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        agent_version TEXT,
        last_seen     INTEGER,
        removed_at    INTEGER
      ) STRICT;
      CREATE INDEX nodes_hostname ON nodes (hostname);

      -- Only the SHA-256 of a token is stored. node_id set = re-enrollment token that keeps that node id.
      CREATE TABLE tokens (
        hash        TEXT PRIMARY KEY,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        consumed_at INTEGER,
        node_id     TEXT REFERENCES nodes (id),
        tags        TEXT NOT NULL DEFAULT '[]'
      ) STRICT;

      CREATE TABLE certs (
        serial     TEXT PRIMARY KEY,
        node_id    TEXT NOT NULL REFERENCES nodes (id),
        not_before INTEGER NOT NULL,
        not_after  INTEGER NOT NULL,
        revoked_at INTEGER,
        pem        TEXT NOT NULL
      ) STRICT;
      CREATE INDEX certs_node ON certs (node_id);
      CREATE INDEX certs_revoked ON certs (revoked_at) WHERE revoked_at IS NOT NULL;
    `,
  },
  {
    version: 2,
    name: 'core: audit log',
    sql: `
      -- The audit log is the core's (src/server/audit-log.ts): admin operations of every feature and
      -- what agents report having done. Inserted when an operation starts, completed with its result.
      -- Ops migration 201 moves the rows of the ops feature's former ops_audit table here.
      CREATE TABLE audit_log (
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
      CREATE INDEX audit_log_ts ON audit_log (ts);
      CREATE INDEX audit_log_node ON audit_log (node_id, id);
    `,
  },
  {
    version: 3,
    name: 'core: token ids and revocation',
    sql: `
      -- A token's public id: what \`server token list\` shows and \`server token revoke ID\` takes. It is
      -- random, not derived from the token or its hash, so showing it tells nothing about either.
      ALTER TABLE tokens ADD COLUMN id TEXT;
      UPDATE tokens SET id = lower(hex(randomblob(8)));
      CREATE UNIQUE INDEX tokens_id ON tokens (id);
      -- Set by a revocation; a revoked token no longer enrolls (the consuming UPDATE checks it).
      ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;
      CREATE INDEX tokens_created ON tokens (created_at);
    `,
  },
  {
    version: 4,
    name: 'core: the CSR and certificate a token was redeemed with',
    sql: `
      -- A retry of an enrollment whose answer was lost (the agent killed, the connection dropped) sends
      -- the same CSR with the same token: within a short window it gets the same certificate again
      -- instead of a burnt token (src/server/enroll.ts).
      ALTER TABLE tokens ADD COLUMN csr_sha256 TEXT;
      ALTER TABLE tokens ADD COLUMN cert_serial TEXT;
    `,
  },
];
