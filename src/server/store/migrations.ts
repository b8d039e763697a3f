/**
 * Numbered schema migrations. Append only: a released migration is never edited; a change is a new
 * entry. Each runs in its own transaction and is recorded in `schema_migrations`.
 * Times are integer milliseconds since the epoch (UTC).
 *
 * Each migration has one text per backend (database.ts). The PostgreSQL text makes the same schema
 * change in PostgreSQL's types (BIGINT for INTEGER, BYTEA for BLOB, identity columns for
 * AUTOINCREMENT, TEXT COLLATE "C" for TEXT: text compares and sorts by bytes, as SQLite's BINARY
 * does, whatever the database's default collation; a linguistic one, en-US say, puts 'a' before 'B'
 * and would change orders and CHECKs such as mesh_psks' node_a < node_b). Data moves that only a SQLite store of an earlier release needs (copying a column
 * into a new table, say) are absent from it: no PostgreSQL store predates the PostgreSQL backend,
 * so such a move always finds its source empty there.
 */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sqlite: string;
  readonly postgres: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sqlite: `
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
    postgres: `
      CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT COLLATE "C" NOT NULL);
      CREATE TABLE ca (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        key_blob   BYTEA NOT NULL,
        kdf_salt   BYTEA NOT NULL,
        cert_pem   TEXT COLLATE "C" NOT NULL,
        created_at BIGINT NOT NULL
      );
      CREATE TABLE nodes (
        id            TEXT COLLATE "C" PRIMARY KEY,
        hostname      TEXT COLLATE "C" NOT NULL,
        created_at    BIGINT NOT NULL,
        agent_version TEXT COLLATE "C",
        last_seen     BIGINT,
        removed_at    BIGINT
      );
      CREATE INDEX nodes_hostname ON nodes (hostname);
      CREATE TABLE tokens (
        hash        TEXT COLLATE "C" PRIMARY KEY,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL,
        consumed_at BIGINT,
        node_id     TEXT COLLATE "C" REFERENCES nodes (id),
        tags        TEXT COLLATE "C" NOT NULL DEFAULT '[]'
      );
      CREATE TABLE certs (
        serial     TEXT COLLATE "C" PRIMARY KEY,
        node_id    TEXT COLLATE "C" NOT NULL REFERENCES nodes (id),
        not_before BIGINT NOT NULL,
        not_after  BIGINT NOT NULL,
        revoked_at BIGINT,
        pem        TEXT COLLATE "C" NOT NULL
      );
      CREATE INDEX certs_node ON certs (node_id);
      CREATE INDEX certs_revoked ON certs (revoked_at) WHERE revoked_at IS NOT NULL;
    `,
  },
  {
    version: 2,
    name: 'core: audit log',
    sqlite: `
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
    postgres: `
      CREATE TABLE audit_log (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        ts          BIGINT NOT NULL,
        finished_at BIGINT,
        source      TEXT COLLATE "C" NOT NULL CHECK (source IN ('admin', 'agent')),
        actor       TEXT COLLATE "C",
        operation   TEXT COLLATE "C" NOT NULL,
        node_id     TEXT COLLATE "C",
        target      TEXT COLLATE "C",
        result      TEXT COLLATE "C" NOT NULL,
        details     TEXT COLLATE "C"
      );
      CREATE INDEX audit_log_ts ON audit_log (ts);
      CREATE INDEX audit_log_node ON audit_log (node_id, id);
    `,
  },
  {
    version: 3,
    name: 'core: token ids and revocation',
    sqlite: `
      -- A token's public id: what \`server token list\` shows and \`server token revoke ID\` takes. It is
      -- random, not derived from the token or its hash, so showing it tells nothing about either.
      ALTER TABLE tokens ADD COLUMN id TEXT;
      UPDATE tokens SET id = lower(hex(randomblob(8)));
      CREATE UNIQUE INDEX tokens_id ON tokens (id);
      -- Set by a revocation; a revoked token no longer enrolls (the consuming UPDATE checks it).
      ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;
      CREATE INDEX tokens_created ON tokens (created_at);
    `,
    postgres: `
      ALTER TABLE tokens ADD COLUMN id TEXT COLLATE "C";
      CREATE UNIQUE INDEX tokens_id ON tokens (id);
      ALTER TABLE tokens ADD COLUMN revoked_at BIGINT;
      CREATE INDEX tokens_created ON tokens (created_at);
    `,
  },
  {
    version: 4,
    name: 'core: the CSR and certificate a token was redeemed with',
    sqlite: `
      -- A retry of an enrollment whose answer was lost (the agent killed, the connection dropped) sends
      -- the same CSR with the same token: within a short window it gets the same certificate again
      -- instead of a burnt token (src/server/enroll.ts).
      ALTER TABLE tokens ADD COLUMN csr_sha256 TEXT;
      ALTER TABLE tokens ADD COLUMN cert_serial TEXT;
    `,
    postgres: `
      ALTER TABLE tokens ADD COLUMN csr_sha256 TEXT COLLATE "C";
      ALTER TABLE tokens ADD COLUMN cert_serial TEXT COLLATE "C";
    `,
  },
  {
    version: 5,
    name: 'core: insertion order of tokens and certificates in a column of their own',
    sqlite: `
      -- Queries ordered by SQLite's rowid (a token listing's ties, a node's certificates in issue
      -- order) read this column instead, which PostgreSQL has too. SQLite keeps it equal to the rowid
      -- by a trigger, so the order is exactly the one before; existing rows take their rowid.
      ALTER TABLE tokens ADD COLUMN seq INTEGER;
      UPDATE tokens SET seq = rowid;
      CREATE TRIGGER tokens_seq AFTER INSERT ON tokens WHEN NEW.seq IS NULL
      BEGIN UPDATE tokens SET seq = NEW.rowid WHERE rowid = NEW.rowid; END;
      ALTER TABLE certs ADD COLUMN seq INTEGER;
      UPDATE certs SET seq = rowid;
      CREATE TRIGGER certs_seq AFTER INSERT ON certs WHEN NEW.seq IS NULL
      BEGIN UPDATE certs SET seq = NEW.rowid WHERE rowid = NEW.rowid; END;
      CREATE INDEX certs_node_seq ON certs (node_id, seq);
    `,
    postgres: `
      ALTER TABLE tokens ADD COLUMN seq BIGINT GENERATED BY DEFAULT AS IDENTITY;
      ALTER TABLE certs ADD COLUMN seq BIGINT GENERATED BY DEFAULT AS IDENTITY;
      CREATE INDEX certs_node_seq ON certs (node_id, seq);
    `,
  },
];
