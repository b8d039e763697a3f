import { chmodSync } from 'node:fs';
import Database from 'better-sqlite3';
import type { Migration } from './migrations.js';
import { MeshlinkError } from '../../errors.js';

/**
 * The only module that knows SQL. Synchronous (better-sqlite3): every statement here is a short
 * indexed lookup or write, so running them on the event loop costs microseconds, and it lets the
 * enrollment commit be one atomic transaction.
 *
 * Durability: WAL with `synchronous=NORMAL` by default, and FULL for the writes that must survive a
 * power cut: revocations (node removal) and the CA. WAL+NORMAL never corrupts the database and loses
 * nothing on a process crash; on power loss it may roll back the last commits. For a revocation that
 * would silently re-admit a removed node, so those commits fsync the WAL (which also makes every
 * earlier commit durable). For an enrollment, a rolled-back commit leaves an agent holding a
 * certificate the store does not know (refused with 401 until it re-enrolls) and its token usable
 * again until it expires; we accept that narrow window because an fsync per enrollment blocks the
 * event loop for milliseconds (measured 3-5 ms here), which cut enrollment throughput by more than half
 * and tripled heartbeat latency during bursts (bench/enroll.ts).
 */

export interface CaRow {
  keyBlob: Buffer;
  kdfSalt: Buffer;
  certPem: string;
  createdAt: number;
}
export interface TokenRow {
  hash: string;
  /** The public id (random; `server token list` shows it, `revoke` takes it). */
  id: string;
  createdAt: number;
  expiresAt: number;
  consumedAt: number | null;
  revokedAt: number | null;
  nodeId: string | null;
  /** SHA-256 of the CSR the token was redeemed with, and the serial issued for it (core migration 4). */
  csrSha256?: string | null;
  certSerial?: string | null;
}
export interface NodeRow {
  id: string;
  hostname: string;
  createdAt: number;
  agentVersion: string | null;
  lastSeen: number | null;
  removedAt: number | null;
}
export interface CertRow {
  serial: string;
  nodeId: string;
  notBefore: number;
  notAfter: number;
  revokedAt: number | null;
  pem: string;
}
export interface FleetTotals {
  /** Consumed one-time tokens. */
  enrollments: number;
  /** Certificates ever issued (enrollments + renewals). */
  certs: number;
  revoked: number;
  /** Removed nodes. */
  removed: number;
  /** Enrolled nodes not removed. */
  enrolled: number;
}
/** A node with its newest certificate, for listings. */
export interface NodeWithCert extends NodeRow {
  certSerial: string | null;
  certNotAfter: number | null;
}

export interface EnrollmentCommit {
  tokenHash: string;
  now: number;
  /** Re-enrollment keeps an existing node id; the node row is updated instead of inserted. */
  node: { id: string; hostname: string; agentVersion: string | null; existing: boolean };
  cert: Omit<CertRow, 'revokedAt' | 'nodeId'>;
  /** SHA-256 of the CSR: a retry with the same CSR soon after gets the same certificate (enroll.ts). */
  csrSha256?: string;
}

type Row = Record<string, unknown>;

const TOKEN_COLUMNS = 'hash, id, created_at, expires_at, consumed_at, revoked_at, node_id, csr_sha256, cert_serial';

function tokenFromRow(r: Row): TokenRow {
  return {
    hash: r.hash as string,
    id: r.id as string,
    createdAt: r.created_at as number,
    expiresAt: r.expires_at as number,
    consumedAt: (r.consumed_at as number | null) ?? null,
    revokedAt: (r.revoked_at as number | null) ?? null,
    nodeId: (r.node_id as string | null) ?? null,
    csrSha256: (r.csr_sha256 as string | null) ?? null,
    certSerial: (r.cert_serial as string | null) ?? null,
  };
}
function nodeFromRow(r: Row): NodeRow {
  return {
    id: r.id as string,
    hostname: r.hostname as string,
    createdAt: r.created_at as number,
    agentVersion: (r.agent_version as string | null) ?? null,
    lastSeen: (r.last_seen as number | null) ?? null,
    removedAt: (r.removed_at as number | null) ?? null,
  };
}
function certFromRow(r: Row): CertRow {
  return {
    serial: r.serial as string,
    nodeId: r.node_id as string,
    notBefore: r.not_before as number,
    notAfter: r.not_after as number,
    revokedAt: (r.revoked_at as number | null) ?? null,
    pem: r.pem as string,
  };
}

/** Meta counters of deleted certificate rows, so that fleet totals never go down. */
const META_CERTS_PRUNED = 'certs_pruned';
const META_REVOKED_PRUNED = 'revoked_certs_pruned';

export class Store {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly stmts;

  private constructor(path: string, db: Database.Database) {
    this.path = path;
    this.db = db;
    this.stmts = {
      getMeta: db.prepare('SELECT value FROM meta WHERE key = ?'),
      fleetTotals: db.prepare(`SELECT
        (SELECT COUNT(*) FROM tokens WHERE consumed_at IS NOT NULL) AS enrollments,
        (SELECT COUNT(*) FROM certs) + COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '${META_CERTS_PRUNED}'), 0) AS certs,
        (SELECT COUNT(*) FROM certs WHERE revoked_at IS NOT NULL)
          + COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '${META_REVOKED_PRUNED}'), 0) AS revoked,
        (SELECT COUNT(*) FROM nodes WHERE removed_at IS NOT NULL) AS removed,
        (SELECT COUNT(*) FROM nodes WHERE removed_at IS NULL) AS enrolled`),
      setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      getCa: db.prepare('SELECT key_blob, kdf_salt, cert_pem, created_at FROM ca WHERE id = 1'),
      insertCa: db.prepare('INSERT INTO ca (id, key_blob, kdf_salt, cert_pem, created_at) VALUES (1, ?, ?, ?, ?)'),
      replaceCaKey: db.prepare('UPDATE ca SET key_blob = ?, kdf_salt = ? WHERE id = 1 AND key_blob = ?'),
      replaceCa: db.prepare('UPDATE ca SET key_blob = ?, kdf_salt = ?, cert_pem = ?, created_at = ? WHERE id = 1'),
      deleteMeta: db.prepare('DELETE FROM meta WHERE key = ?'),
      insertToken: db.prepare(
        'INSERT INTO tokens (hash, id, created_at, expires_at, consumed_at, revoked_at, node_id) VALUES (?, ?, ?, ?, NULL, NULL, ?)',
      ),
      getToken: db.prepare(`SELECT ${TOKEN_COLUMNS} FROM tokens WHERE hash = ?`),
      getTokenById: db.prepare(`SELECT ${TOKEN_COLUMNS} FROM tokens WHERE id = ?`),
      // Newest first; rowid breaks ties of one millisecond in creation order.
      listTokens: db.prepare(`SELECT ${TOKEN_COLUMNS} FROM tokens ORDER BY created_at DESC, rowid DESC LIMIT ?`),
      revokeToken: db.prepare('UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL AND consumed_at IS NULL'),
      consumeToken: db.prepare(
        'UPDATE tokens SET consumed_at = ?, csr_sha256 = ?, cert_serial = ? WHERE hash = ? AND consumed_at IS NULL AND revoked_at IS NULL AND expires_at > ?',
      ),
      insertNode: db.prepare(
        'INSERT INTO nodes (id, hostname, created_at, agent_version, last_seen, removed_at) VALUES (?, ?, ?, ?, NULL, NULL)',
      ),
      updateNodeOnReenroll: db.prepare(
        'UPDATE nodes SET hostname = ?, agent_version = COALESCE(?, agent_version) WHERE id = ? AND removed_at IS NULL',
      ),
      getNode: db.prepare('SELECT * FROM nodes WHERE id = ?'),
      liveNodesByHostname: db.prepare('SELECT * FROM nodes WHERE hostname = ? AND removed_at IS NULL ORDER BY created_at'),
      listNodes: db.prepare(`
        SELECT n.*, c.serial AS cert_serial, c.not_after AS cert_not_after
        FROM nodes n
        LEFT JOIN certs c ON c.serial = (
          SELECT serial FROM certs WHERE node_id = n.id ORDER BY not_after DESC, rowid DESC LIMIT 1)
        WHERE n.removed_at IS NULL
        ORDER BY n.created_at, n.id`),
      markNodeRemoved: db.prepare('UPDATE nodes SET removed_at = ? WHERE id = ? AND removed_at IS NULL'),
      touchNode: db.prepare('UPDATE nodes SET last_seen = ? WHERE id = ?'),
      setAgentVersion: db.prepare('UPDATE nodes SET agent_version = ? WHERE id = ?'),
      insertCert: db.prepare(
        'INSERT INTO certs (serial, node_id, not_before, not_after, revoked_at, pem) VALUES (?, ?, ?, ?, NULL, ?)',
      ),
      getCert: db.prepare('SELECT * FROM certs WHERE serial = ?'),
      unrevokedSerialsOfNode: db.prepare('SELECT serial FROM certs WHERE node_id = ? AND revoked_at IS NULL'),
      revokeCertsOfNode: db.prepare('UPDATE certs SET revoked_at = ? WHERE node_id = ? AND revoked_at IS NULL'),
      revokedSerials: db.prepare('SELECT serial FROM certs WHERE revoked_at IS NOT NULL'),
      // Issue order is rowid order: certificates are only ever inserted, and pruning never deletes a
      // node's newest one, so the largest rowid (the one SQLite counts on) is never taken away.
      unrevokedCertsIssuedBefore: db.prepare(
        'SELECT serial FROM certs WHERE node_id = ? AND revoked_at IS NULL AND rowid < (SELECT rowid FROM certs WHERE serial = ?)'),
      revokeCertsIssuedBefore: db.prepare(
        'UPDATE certs SET revoked_at = ? WHERE node_id = ? AND revoked_at IS NULL AND rowid < (SELECT rowid FROM certs WHERE serial = ?)'),
      expiredCerts: db.prepare(`
        SELECT serial, revoked_at FROM certs c
        WHERE not_after < ? AND rowid <> (SELECT MAX(rowid) FROM certs WHERE node_id = c.node_id)
        LIMIT ?`),
      deleteCert: db.prepare('DELETE FROM certs WHERE serial = ?'),
      addToMetaCounter: db.prepare(
        `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)`),
    };
  }

  /**
   * Opens (creating if needed) the store file and applies the pending ones of `migrations`: the core's
   * and every feature's list, which only the composition root knows (openServerStore in
   * ../features.ts). A store that has applied a version missing from the list fails with
   * ML_ERR_STORE_SCHEMA, so every opener must pass the whole list.
   */
  static open(path: string, migrations: readonly Migration[]): Store {
    const db = new Database(path);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 5000');
      chmodSync(path, 0o600);
      migrate(db, migrations);
      return new Store(path, db);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** The database handle, for the store modules of features (src/server/store/*-store.ts): the only other places that know SQL. */
  get database(): Database.Database {
    return this.db;
  }

  /** Whether the database answers a read (the health checks: /healthz on the gateway and the metrics listener). */
  healthy(): boolean {
    try {
      this.schemaVersion();
      return true;
    } catch {
      return false;
    }
  }

  schemaVersion(): number {
    const row = this.db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null };
    return row.v ?? 0;
  }

  // --- meta ---
  getMeta(key: string): string | undefined {
    return (this.stmts.getMeta.get(key) as { value: string } | undefined)?.value;
  }
  setMeta(key: string, value: string): void {
    this.stmts.setMeta.run(key, value);
  }
  deleteMeta(key: string): void {
    this.stmts.deleteMeta.run(key);
  }

  // --- CA ---
  getCa(): CaRow | undefined {
    const r = this.stmts.getCa.get() as Row | undefined;
    if (!r) return undefined;
    return { keyBlob: r.key_blob as Buffer, kdfSalt: r.kdf_salt as Buffer, certPem: r.cert_pem as string, createdAt: r.created_at as number };
  }
  insertCa(row: CaRow): void {
    this.durably(() => this.stmts.insertCa.run(row.keyBlob, row.kdfSalt, row.certPem, row.createdAt));
  }
  /**
   * The end of a CA rotation (ca-rotation.ts): the next CA becomes the CA, and `apply` (meta updates:
   * the rotation state cleared, the pin) commits in the same durable transaction.
   */
  replaceCa(row: CaRow, apply: () => void): void {
    this.durably(() => {
      this.stmts.replaceCa.run(row.keyBlob, row.kdfSalt, row.certPem, row.createdAt);
      apply();
    });
  }
  /** Re-seals the CA key (same key, new blob: a migration of its sealing), only if the blob is still `previous`. */
  replaceCaKey(previous: Buffer, keyBlob: Buffer, kdfSalt: Buffer): void {
    this.durably(() => this.stmts.replaceCaKey.run(keyBlob, kdfSalt, previous));
  }

  /**
   * A consistent copy of the whole database at `path` (SQLite's online backup API: pages copied in
   * steps, restarting if a write lands meanwhile, so the copy is one committed state while the server
   * keeps running). The caller makes it atomic (temp file, fsync, rename).
   */
  async backupTo(path: string): Promise<void> {
    await this.db.backup(path);
  }

  /** SQLite's quick_check: true when the pages and indexes are sound (a backup about to be restored). */
  quickCheck(): boolean {
    return this.db.pragma('quick_check', { simple: true }) === 'ok';
  }

  /** Folds the write-ahead log into the database file and truncates it. */
  checkpoint(): void {
    this.db.pragma('wal_checkpoint(TRUNCATE)');
  }

  /** Runs `fn` in an IMMEDIATE transaction whose commit fsyncs the WAL (synchronous=FULL for this commit). */
  private durably<T>(fn: () => T): T {
    this.db.pragma('synchronous = FULL');
    try {
      return this.db.transaction(fn).immediate();
    } finally {
      this.db.pragma('synchronous = NORMAL');
    }
  }

  /** The current synchronous level (1 = NORMAL, 2 = FULL), for tests. */
  synchronousLevel(): number {
    return this.db.pragma('synchronous', { simple: true }) as number;
  }

  // --- tokens ---
  insertToken(row: Omit<TokenRow, 'consumedAt' | 'revokedAt'>): void {
    this.stmts.insertToken.run(row.hash, row.id, row.createdAt, row.expiresAt, row.nodeId);
  }
  getToken(hash: string): TokenRow | undefined {
    const r = this.stmts.getToken.get(hash) as Row | undefined;
    return r ? tokenFromRow(r) : undefined;
  }
  getTokenById(id: string): TokenRow | undefined {
    const r = this.stmts.getTokenById.get(id) as Row | undefined;
    return r ? tokenFromRow(r) : undefined;
  }
  /** The `limit` newest tokens, used, expired and revoked ones included (tokens are never deleted). */
  listTokens(limit: number): TokenRow[] {
    return (this.stmts.listTokens.all(limit) as Row[]).map(tokenFromRow);
  }
  /**
   * Revokes a token that has not been used: true when this call revoked it. Durable like a node's
   * removal: a revocation rolled back by a power cut would make the token usable again.
   */
  revokeToken(id: string, now: number): boolean {
    return this.durably(() => this.stmts.revokeToken.run(now, id).changes === 1);
  }

  /**
   * The enrollment commit: consume the token (a single conditional UPDATE; `changes === 1` means this
   * caller won), create or refresh the node, record the certificate, all in one transaction. Returns
   * false when the token was consumed or expired in the meantime, and then nothing is written.
   * `inTransaction` runs inside it, after those writes (the features' enrollment hooks): what it
   * writes commits with the enrollment, and a throw rolls the whole enrollment back.
   */
  commitEnrollment(c: EnrollmentCommit, inTransaction?: (c: EnrollmentCommit) => void): boolean {
    return this.db.transaction((): boolean => {
      const consumed = this.stmts.consumeToken.run(c.now, c.csrSha256 ?? null, c.cert.serial, c.tokenHash, c.now);
      if (consumed.changes !== 1) return false;
      if (c.node.existing) {
        const updated = this.stmts.updateNodeOnReenroll.run(c.node.hostname, c.node.agentVersion, c.node.id);
        if (updated.changes !== 1) throw new MeshlinkError('ML_ERR_TOKEN_INVALID', `the token is bound to node ${c.node.id}, which was removed`);
      } else {
        this.stmts.insertNode.run(c.node.id, c.node.hostname, c.now, c.node.agentVersion);
      }
      this.stmts.insertCert.run(c.cert.serial, c.node.id, c.cert.notBefore, c.cert.notAfter, c.cert.pem);
      inTransaction?.(c);
      return true;
    }).immediate();
  }

  // --- nodes ---
  getNode(id: string): NodeRow | undefined {
    const r = this.stmts.getNode.get(id) as Row | undefined;
    return r ? nodeFromRow(r) : undefined;
  }
  liveNodesByHostname(hostname: string): NodeRow[] {
    return (this.stmts.liveNodesByHostname.all(hostname) as Row[]).map(nodeFromRow);
  }
  listLiveNodes(): NodeWithCert[] {
    return (this.stmts.listNodes.all() as Row[]).map((r) => ({
      ...nodeFromRow(r),
      certSerial: (r.cert_serial as string | null) ?? null,
      certNotAfter: (r.cert_not_after as number | null) ?? null,
    }));
  }
  /** Totals for metrics (monotonic across restarts: tokens are never deleted, pruned certificates are counted), in one query. */
  fleetTotals(): FleetTotals {
    return this.stmts.fleetTotals.get() as FleetTotals;
  }
  /** Records last-seen times in one transaction (batched by Presence). */
  touchNodes(entries: ReadonlyArray<readonly [id: string, lastSeen: number]>): void {
    this.db.transaction(() => {
      for (const [id, lastSeen] of entries) this.stmts.touchNode.run(lastSeen, id);
    })();
  }
  setAgentVersion(id: string, agentVersion: string): void {
    this.stmts.setAgentVersion.run(agentVersion, id);
  }

  /**
   * Removes a node: marks it removed and revokes every unrevoked certificate of it, atomically.
   * Returns the serials revoked now (empty if the node was already removed).
   */
  removeNode(id: string, now: number): { removed: boolean; revokedSerials: string[] } {
    return this.durably(() => {
      const removed = this.stmts.markNodeRemoved.run(now, id).changes === 1;
      const serials = (this.stmts.unrevokedSerialsOfNode.all(id) as { serial: string }[]).map((r) => r.serial);
      this.stmts.revokeCertsOfNode.run(now, id);
      return { removed, revokedSerials: serials };
    });
  }

  // --- certs ---
  insertCert(nodeId: string, cert: Omit<CertRow, 'revokedAt' | 'nodeId'>): void {
    this.stmts.insertCert.run(cert.serial, nodeId, cert.notBefore, cert.notAfter, cert.pem);
  }
  getCert(serial: string): CertRow | undefined {
    const r = this.stmts.getCert.get(serial) as Row | undefined;
    return r ? certFromRow(r) : undefined;
  }
  revokedSerials(): string[] {
    return (this.stmts.revokedSerials.all() as { serial: string }[]).map((r) => r.serial);
  }

  /**
   * Revokes every unrevoked certificate of the node issued before `serial` (docs/SERVER.md,
   * "Certificates of a node"): at re-enrollment, inside the enrollment's transaction, and when the
   * first session on a renewed certificate opens. Returns the serials revoked now.
   *
   * Plain durability (no fsync): a power cut that rolls this back is repaired at the next session on
   * `serial`, which revokes them again before it is admitted to the node's operations.
   */
  revokeCertsIssuedBefore(nodeId: string, serial: string, now: number): string[] {
    return this.db.transaction(() => {
      const serials = (this.stmts.unrevokedCertsIssuedBefore.all(nodeId, serial) as { serial: string }[]).map((r) => r.serial);
      if (serials.length > 0) this.stmts.revokeCertsIssuedBefore.run(now, nodeId, serial);
      return serials;
    })();
  }

  /**
   * Deletes certificates whose NotAfter is before `cutoff` (the caller adds the renewal grace), except
   * each node's newest, which the node listing shows. At most `limit` a call, so one sweep is short.
   * Returns the deleted serials (the caller drops them from the revocation list: a certificate that
   * can no longer pass the NotAfter check needs no revocation entry). The totals stay monotonic:
   * deleted rows are counted in meta.
   */
  pruneExpiredCerts(cutoff: number, limit = 1_000): string[] {
    return this.db.transaction(() => {
      const rows = this.stmts.expiredCerts.all(cutoff, limit) as { serial: string; revoked_at: number | null }[];
      let revoked = 0;
      for (const r of rows) {
        this.stmts.deleteCert.run(r.serial);
        if (r.revoked_at !== null) revoked++;
      }
      if (rows.length > 0) this.stmts.addToMetaCounter.run(META_CERTS_PRUNED, String(rows.length));
      if (revoked > 0) this.stmts.addToMetaCounter.run(META_REVOKED_PRUNED, String(revoked));
      return rows.map((r) => r.serial);
    })();
  }
}


function migrate(db: Database.Database, migrations: readonly Migration[]): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT');
  // Versions are applied by set difference, not "above the maximum": features own separate version
  // ranges (core 1–99, mesh 100–199, ops 200–299, ...), and a feature's first migration may arrive
  // after another range's later ones.
  const applied = new Set((db.prepare('SELECT version FROM schema_migrations').all() as Array<{ version: number }>).map((r) => r.version));
  const knownVersions = new Set(migrations.map((m) => m.version));
  const unknown = [...applied].filter((v) => !knownVersions.has(v));
  if (unknown.length > 0) {
    throw new MeshlinkError('ML_ERR_STORE_SCHEMA', `store has schema migrations this meshlink does not know (${unknown.join(', ')}): it was written by a newer version`);
  }
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (applied.has(m.version)) continue;
    db.transaction(() => {
      db.exec(m.sql);
      record.run(m.version, m.name, Date.now());
    }).immediate();
  }
}
