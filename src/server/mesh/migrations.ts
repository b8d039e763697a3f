import type { Migration } from '../store/migrations.js';

/** Schema migrations of the mesh feature: versions 100–199, append only (see ../store/migrations.ts). */
export const MESH_MIGRATIONS: readonly Migration[] = [
  {
    version: 100,
    name: 'mesh: node tags, addresses, keys, PSKs, event log, feed',
    sqlite: `
      -- Tags of a node (JSON array), from its enrollment token or 'server nodes tag'.
      ALTER TABLE nodes ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';

      CREATE TABLE mesh_settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT;

      -- The mesh master key, encrypted like the CA key (ca-key-crypto.ts); it seals everything below.
      CREATE TABLE mesh_master (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        key_blob BLOB NOT NULL,
        kdf_salt BLOB NOT NULL
      ) STRICT;

      CREATE TABLE mesh_signing_keys (
        key_id       TEXT PRIMARY KEY,
        public_key   BLOB NOT NULL,
        sealed_pkcs8 BLOB NOT NULL,
        created_at   INTEGER NOT NULL
      ) STRICT;

      -- One row per live node in the mesh. Deleting the row frees the address.
      CREATE TABLE mesh_nodes (
        node_id       TEXT PRIMARY KEY REFERENCES nodes (id),
        mesh_ip       INTEGER NOT NULL UNIQUE,
        wg_public_key TEXT,
        endpoints     TEXT NOT NULL DEFAULT '[]',
        observed_addr TEXT,
        last_seq      INTEGER NOT NULL DEFAULT 0,
        -- What the events sent so far told this node (peers without PSKs, a PSK fingerprint instead).
        announced     TEXT NOT NULL DEFAULT 'null'
      ) STRICT;

      CREATE TABLE mesh_psks (
        node_a     TEXT NOT NULL,
        node_b     TEXT NOT NULL,
        sealed     BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (node_a, node_b),
        CHECK (node_a < node_b)
      ) STRICT;
      CREATE INDEX mesh_psks_b ON mesh_psks (node_b);

      -- Signed envelopes per node for replay; the envelope is sealed (it may carry PSKs).
      CREATE TABLE mesh_events (
        node_id   TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        type      TEXT NOT NULL,
        ts        INTEGER NOT NULL,
        sealed    BLOB NOT NULL,
        signature BLOB NOT NULL,
        key_id    TEXT NOT NULL,
        PRIMARY KEY (node_id, seq)
      ) STRICT;

      -- What 'server events tail' shows: events sent (secrets redacted) and drift reports.
      CREATE TABLE mesh_feed (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      INTEGER NOT NULL,
        node_id TEXT,
        kind    TEXT NOT NULL,
        type    TEXT NOT NULL,
        seq     INTEGER,
        detail  TEXT NOT NULL
      ) STRICT;

      -- Carries a token's tags from its consumption to the node row inside the one enrollment
      -- transaction (Store.commitEnrollment consumes the token, then inserts or updates the node).
      CREATE TABLE mesh_enroll_tags (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        tags TEXT NOT NULL
      ) STRICT;

      CREATE TRIGGER mesh_token_consumed AFTER UPDATE OF consumed_at ON tokens
      WHEN OLD.consumed_at IS NULL AND NEW.consumed_at IS NOT NULL
      BEGIN
        INSERT INTO mesh_enroll_tags (id, tags) VALUES (1, NEW.tags)
          ON CONFLICT (id) DO UPDATE SET tags = excluded.tags;
      END;

      CREATE TRIGGER mesh_node_enrolled AFTER INSERT ON nodes
      WHEN EXISTS (SELECT 1 FROM mesh_enroll_tags WHERE id = 1)
      BEGIN
        UPDATE nodes SET tags = (SELECT tags FROM mesh_enroll_tags WHERE id = 1) WHERE id = NEW.id;
        DELETE FROM mesh_enroll_tags WHERE id = 1;
      END;

      -- Re-enrollment: a token with tags replaces the node's tags; one without keeps them.
      CREATE TRIGGER mesh_node_reenrolled AFTER UPDATE OF hostname ON nodes
      WHEN EXISTS (SELECT 1 FROM mesh_enroll_tags WHERE id = 1)
      BEGIN
        UPDATE nodes SET tags = (SELECT tags FROM mesh_enroll_tags WHERE id = 1)
          WHERE id = NEW.id AND (SELECT tags FROM mesh_enroll_tags WHERE id = 1) <> '[]';
        DELETE FROM mesh_enroll_tags WHERE id = 1;
      END;
    `,
    postgres: `
      CREATE TABLE mesh_settings (key TEXT COLLATE "C" PRIMARY KEY, value TEXT COLLATE "C" NOT NULL);
      CREATE TABLE mesh_master (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        key_blob BYTEA NOT NULL,
        kdf_salt BYTEA NOT NULL
      );
      CREATE TABLE mesh_signing_keys (
        key_id       TEXT COLLATE "C" PRIMARY KEY,
        public_key   BYTEA NOT NULL,
        sealed_pkcs8 BYTEA NOT NULL,
        created_at   BIGINT NOT NULL
      );
      CREATE TABLE mesh_nodes (
        node_id       TEXT COLLATE "C" PRIMARY KEY REFERENCES nodes (id),
        mesh_ip       BIGINT NOT NULL UNIQUE,
        wg_public_key TEXT COLLATE "C",
        endpoints     TEXT COLLATE "C" NOT NULL DEFAULT '[]',
        observed_addr TEXT COLLATE "C",
        last_seq      BIGINT NOT NULL DEFAULT 0,
        announced     TEXT COLLATE "C" NOT NULL DEFAULT 'null'
      );
      CREATE TABLE mesh_psks (
        node_a     TEXT COLLATE "C" NOT NULL,
        node_b     TEXT COLLATE "C" NOT NULL,
        sealed     BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (node_a, node_b),
        CHECK (node_a < node_b)
      );
      CREATE INDEX mesh_psks_b ON mesh_psks (node_b);
      CREATE TABLE mesh_events (
        node_id   TEXT COLLATE "C" NOT NULL,
        seq       BIGINT NOT NULL,
        type      TEXT COLLATE "C" NOT NULL,
        ts        BIGINT NOT NULL,
        sealed    BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        key_id    TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (node_id, seq)
      );
      CREATE TABLE mesh_feed (
        id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        ts      BIGINT NOT NULL,
        node_id TEXT COLLATE "C",
        kind    TEXT COLLATE "C" NOT NULL,
        type    TEXT COLLATE "C" NOT NULL,
        seq     BIGINT,
        detail  TEXT COLLATE "C" NOT NULL
      );
      -- SQLite's migration 100 also added nodes.tags and enrollment triggers, which migration 102
      -- replaced; a PostgreSQL store starts at 102's design.
    `,
  },
  {
    version: 101,
    name: 'mesh: what each node was told, one row per (node, peer)',
    sqlite: `
      -- A node's view of one peer as the events sent so far told it (a PSK fingerprint, not the PSK).
      -- One row per pair and direction, so a change to one peer (a key, an endpoint, a new node)
      -- rewrites one row per viewer instead of every viewer's whole view: a join into a full mesh of
      -- n nodes writes O(n), not O(n^2). mesh_nodes.announced keeps the node's own part
      -- ({meshIp, cidr}, or null when it was never told anything).
      CREATE TABLE mesh_announced_peers (
        node_id    TEXT NOT NULL,
        peer_id    TEXT NOT NULL,
        mesh_ip    TEXT NOT NULL,
        public_key TEXT NOT NULL,
        endpoints  TEXT NOT NULL,
        psk_tag    TEXT NOT NULL,
        PRIMARY KEY (node_id, peer_id)
      ) STRICT, WITHOUT ROWID;

      INSERT INTO mesh_announced_peers (node_id, peer_id, mesh_ip, public_key, endpoints, psk_tag)
        SELECT m.node_id, p.key, json_extract(p.value, '$.meshIp'), json_extract(p.value, '$.publicKey'),
               json_extract(p.value, '$.endpoints'), json_extract(p.value, '$.pskTag')
        FROM mesh_nodes m, json_each(m.announced, '$.peers') p
        WHERE m.announced <> 'null';
      UPDATE mesh_nodes SET announced = json_remove(announced, '$.peers') WHERE announced <> 'null';
    `,
    postgres: `
      CREATE TABLE mesh_announced_peers (
        node_id    TEXT COLLATE "C" NOT NULL,
        peer_id    TEXT COLLATE "C" NOT NULL,
        mesh_ip    TEXT COLLATE "C" NOT NULL,
        public_key TEXT COLLATE "C" NOT NULL,
        endpoints  TEXT COLLATE "C" NOT NULL,
        psk_tag    TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (node_id, peer_id)
      );
    `,
  },
  {
    version: 102,
    name: 'mesh: tags of tokens and nodes in the mesh’s own tables',
    sqlite: `
      -- Tags are the mesh's: they leave the core's tokens and nodes tables. A token's tags are keyed
      -- by its hash; at enrollment the mesh's commit hook (ServerFeatureContext.enrollment) gives them
      -- to the node inside the enrollment transaction, replacing the triggers of migration 100.
      CREATE TABLE mesh_token_tags (
        token_hash TEXT PRIMARY KEY REFERENCES tokens (hash),
        tags       TEXT NOT NULL
      ) STRICT;
      CREATE TABLE mesh_node_tags (
        node_id TEXT PRIMARY KEY REFERENCES nodes (id),
        tags    TEXT NOT NULL
      ) STRICT;

      INSERT INTO mesh_token_tags (token_hash, tags) SELECT hash, tags FROM tokens WHERE tags <> '[]';
      INSERT INTO mesh_node_tags (node_id, tags) SELECT id, tags FROM nodes WHERE tags <> '[]';

      DROP TRIGGER mesh_token_consumed;
      DROP TRIGGER mesh_node_enrolled;
      DROP TRIGGER mesh_node_reenrolled;
      DROP TABLE mesh_enroll_tags;
      -- Added by migration 100, so the mesh's to drop. tokens.tags (core migration 1) stays, unread
      -- and unwritten: a core migration dropping it would run before this copy on an upgraded store
      -- (versions apply in order), and the core does not know the mesh's tables.
      ALTER TABLE nodes DROP COLUMN tags;
    `,
    postgres: `
      CREATE TABLE mesh_token_tags (
        token_hash TEXT COLLATE "C" PRIMARY KEY REFERENCES tokens (hash),
        tags       TEXT COLLATE "C" NOT NULL
      );
      CREATE TABLE mesh_node_tags (
        node_id TEXT COLLATE "C" PRIMARY KEY REFERENCES nodes (id),
        tags    TEXT COLLATE "C" NOT NULL
      );
    `,
  },
  {
    version: 110,
    name: 'mesh: a WireGuard key belongs to at most one node',
    sqlite: `
      -- Two nodes with one key made their peers render two [Peer] sections with that key, cutting one
      -- of them off (issue 17). A key held by several rows is dropped from all of them (the store
      -- cannot tell the owner from the claimant); each node reports its key again on its next
      -- connection, and the first to do so keeps it.
      UPDATE mesh_nodes SET wg_public_key = NULL WHERE wg_public_key IN (
        SELECT wg_public_key FROM mesh_nodes WHERE wg_public_key IS NOT NULL GROUP BY wg_public_key HAVING COUNT(*) > 1
      );
      CREATE UNIQUE INDEX mesh_nodes_wg_public_key ON mesh_nodes (wg_public_key) WHERE wg_public_key IS NOT NULL;
    `,
    postgres: `
      CREATE UNIQUE INDEX mesh_nodes_wg_public_key ON mesh_nodes (wg_public_key) WHERE wg_public_key IS NOT NULL;
    `,
  },
  {
    version: 111,
    name: 'mesh: NAT reports of nodes, the path each node was told for each peer',
    sqlite: `
      -- The node's NAT report from its last hello (JSON {reflexive, mapping}, contract/mesh-events.ts),
      -- NULL when it reported none. The path of a pair is chosen from the two reports (path.ts).
      ALTER TABLE mesh_nodes ADD COLUMN nat TEXT;
      -- The path a node was told for a peer ('direct' | 'relay'); NULL for rows written before paths,
      -- so the first recompute after the upgrade tells every node its paths.
      ALTER TABLE mesh_announced_peers ADD COLUMN path TEXT CHECK (path IS NULL OR path IN ('direct', 'relay'));
    `,
    postgres: `
      ALTER TABLE mesh_nodes ADD COLUMN nat TEXT COLLATE "C";
      ALTER TABLE mesh_announced_peers ADD COLUMN path TEXT COLLATE "C" CHECK (path IS NULL OR path IN ('direct', 'relay'));
    `,
  },
  {
    version: 112,
    name: 'mesh: insertion order of signing keys in a column of their own',
    sqlite: `
      -- Signing keys were listed by (created_at, rowid); this column replaces the rowid, which
      -- PostgreSQL lacks (see core migration 5, the same for tokens and certificates).
      ALTER TABLE mesh_signing_keys ADD COLUMN seq INTEGER;
      UPDATE mesh_signing_keys SET seq = rowid;
      CREATE TRIGGER mesh_signing_keys_seq AFTER INSERT ON mesh_signing_keys WHEN NEW.seq IS NULL
      BEGIN UPDATE mesh_signing_keys SET seq = NEW.rowid WHERE rowid = NEW.rowid; END;
    `,
    postgres: `
      ALTER TABLE mesh_signing_keys ADD COLUMN seq BIGINT GENERATED BY DEFAULT AS IDENTITY;
    `,
  },
];
