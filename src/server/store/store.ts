import { sql, type Kysely } from 'kysely';
import type { Migration } from './migrations.js';
import { MeshlinkError } from '../../errors.js';
import { openStoreDatabase, type ActiveEvents, type Queryable, type StoreDatabase, type StoreDialect } from './database.js';
import { affectedRows, compiledStatement } from './compiled-statement.js';

/**
 * The core's tables (meta, CA, tokens, nodes, certificates), on either backend (database.ts). Every
 * method is async: on SQLite a query still runs synchronously inside better-sqlite3 and its promise
 * settles in a microtask, so the order of work on the event loop is the one it always was; on
 * PostgreSQL it is a round trip.
 *
 * Durability on SQLite: WAL with `synchronous=NORMAL` by default, and FULL for the writes that must survive a
 * power cut: revocations (node removal) and the CA. WAL+NORMAL never corrupts the database and loses
 * nothing on a process crash; on power loss it may roll back the last commits. For a revocation that
 * would silently re-admit a removed node, so those commits fsync the WAL (which also makes every
 * earlier commit durable). For an enrollment, a rolled-back commit leaves an agent holding a
 * certificate the store does not know (refused with 401 until it re-enrolls) and its token usable
 * again until it expires; we accept that narrow window because an fsync per enrollment blocks the
 * event loop for milliseconds (measured 3-5 ms here), which cut enrollment throughput by more than half
 * and tripled heartbeat latency during bursts (bench/enroll.ts). PostgreSQL commits are durable.
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

/** Column types of the core's tables, as the query layer sees them. */
interface CoreTables {
  meta: { key: string; value: string };
  ca: { id: number; key_blob: Buffer; kdf_salt: Buffer; cert_pem: string; created_at: number };
  tokens: {
    hash: string; id: string; created_at: number; expires_at: number; consumed_at: number | null; revoked_at: number | null;
    node_id: string | null; csr_sha256: string | null; cert_serial: string | null; seq: number | null;
  };
  nodes: { id: string; hostname: string; created_at: number; agent_version: string | null; last_seen: number | null; removed_at: number | null };
  certs: { serial: string; node_id: string; not_before: number; not_after: number; revoked_at: number | null; pem: string; seq: number | null };
  schema_migrations: { version: number; name: string; applied_at: number };
}

type Core = Kysely<CoreTables>;

const TOKEN_COLUMNS = ['hash', 'id', 'created_at', 'expires_at', 'consumed_at', 'revoked_at', 'node_id', 'csr_sha256', 'cert_serial'] as const;

function tokenFromRow(r: Pick<CoreTables['tokens'], (typeof TOKEN_COLUMNS)[number]>): TokenRow {
  return {
    hash: r.hash,
    id: r.id,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    consumedAt: r.consumed_at ?? null,
    revokedAt: r.revoked_at ?? null,
    nodeId: r.node_id ?? null,
    csrSha256: r.csr_sha256 ?? null,
    certSerial: r.cert_serial ?? null,
  };
}
function nodeFromRow(r: CoreTables['nodes']): NodeRow {
  return {
    id: r.id,
    hostname: r.hostname,
    createdAt: r.created_at,
    agentVersion: r.agent_version ?? null,
    lastSeen: r.last_seen ?? null,
    removedAt: r.removed_at ?? null,
  };
}
const CERT_COLUMNS = ['serial', 'node_id', 'not_before', 'not_after', 'revoked_at', 'pem'] as const;
function certFromRow(r: Pick<CoreTables['certs'], (typeof CERT_COLUMNS)[number]>): CertRow {
  return { serial: r.serial, nodeId: r.node_id, notBefore: r.not_before, notAfter: r.not_after, revokedAt: r.revoked_at ?? null, pem: r.pem };
}

/** Meta counters of deleted certificate rows, so that fleet totals never go down. */
const META_CERTS_PRUNED = 'certs_pruned';
const META_REVOKED_PRUNED = 'revoked_certs_pruned';

/** Rows changed by an UPDATE or DELETE (Kysely reports a bigint). */
const changed = (r: { numUpdatedRows?: bigint; numDeletedRows?: bigint }): number => Number(r.numUpdatedRows ?? r.numDeletedRows ?? 0n);

export class Store {
  /** The SQLite file's path, or the PostgreSQL URL without its password. */
  readonly path: string;
  readonly dialect: StoreDialect;
  readonly #database: StoreDatabase;
  readonly #db: Core;
  // The statements of enrollment and presence, compiled once (compiled-statement.ts: the builder's
  // per-query cost is several times what SQLite takes to run them).
  readonly #tokenByHash = compiledStatement(['hash'], (db, v) => (db as Core).selectFrom('tokens').select(TOKEN_COLUMNS).where('hash', '=', v.hash));
  readonly #nodeById = compiledStatement(['id'], (db, v) => (db as Core).selectFrom('nodes').selectAll().where('id', '=', v.id));
  readonly #consumeToken = compiledStatement(['now', 'csr', 'serial', 'hash'], (db, v) =>
    (db as Core).updateTable('tokens').set({ consumed_at: v.now, csr_sha256: v.csr, cert_serial: v.serial })
      .where('hash', '=', v.hash).where('consumed_at', 'is', null).where('revoked_at', 'is', null).where('expires_at', '>', v.now));
  readonly #insertNode = compiledStatement(['id', 'hostname', 'now', 'version'], (db, v) =>
    (db as Core).insertInto('nodes').values({ id: v.id, hostname: v.hostname, created_at: v.now, agent_version: v.version, last_seen: null, removed_at: null }));
  readonly #insertCert = compiledStatement(['serial', 'node', 'from', 'to', 'pem'], (db, v) =>
    // seq is left to the backend: SQLite's trigger sets it to the rowid, PostgreSQL's identity column counts.
    (db as Core).insertInto('certs').values({ serial: v.serial, node_id: v.node, not_before: v.from, not_after: v.to, revoked_at: null, pem: v.pem }));
  readonly #touchNode = compiledStatement(['id', 'seen'], (db, v) => (db as Core).updateTable('nodes').set({ last_seen: v.seen }).where('id', '=', v.id));
  readonly #certBySerial = compiledStatement(['serial'], (db, v) => (db as Core).selectFrom('certs').select(CERT_COLUMNS).where('serial', '=', v.serial));
  readonly #setAgentVersion = compiledStatement(['id', 'version'], (db, v) => (db as Core).updateTable('nodes').set({ agent_version: v.version }).where('id', '=', v.id));
  readonly #lockLiveNode = compiledStatement(['id'], (db, v) => (db as Core).updateTable('nodes').set({ removed_at: null }).where('id', '=', v.id).where('removed_at', 'is', null));

  private constructor(database: StoreDatabase) {
    this.#database = database;
    this.path = database.location;
    this.dialect = database.dialect;
    this.#db = database.db as Core;
  }

  /**
   * Opens (creating if needed) the store at `location` (a file path, or a postgres:// URL) and
   * applies the pending ones of `migrations`: the core's and every feature's list, which only the
   * composition root knows (openServerStore in ../features.ts). A store that has applied a version
   * missing from the list fails with ML_ERR_STORE_SCHEMA, so every opener must pass the whole list.
   * `active`: become the store's one active server first (a PostgreSQL store; StoreDatabase.holdActive).
   */
  static async open(location: string, migrations: readonly Migration[], options: { active?: ActiveEvents } = {}): Promise<Store> {
    return new Store(await openStoreDatabase(location, migrations, options));
  }

  async close(): Promise<void> {
    await this.#database.close();
  }

  /** The query layer and transactions, for the store modules of features: the only other places that know SQL. */
  get database(): StoreDatabase {
    return this.#database;
  }

  /** Whether the database answers a read (the health checks: /healthz on the gateway and the metrics listener). */
  healthy(): Promise<boolean> {
    return this.#database.ping();
  }

  async schemaVersion(): Promise<number> {
    const row = await this.#db.selectFrom('schema_migrations').select((eb) => eb.fn.max('version').as('v')).executeTakeFirst();
    return row?.v ?? 0;
  }

  // --- meta ---
  async getMeta(key: string, q: Queryable = this.#db): Promise<string | undefined> {
    return (await (q as Core).selectFrom('meta').select('value').where('key', '=', key).executeTakeFirst())?.value;
  }
  async setMeta(key: string, value: string, q: Queryable = this.#db): Promise<void> {
    await (q as Core).insertInto('meta').values({ key, value }).onConflict((oc) => oc.column('key').doUpdateSet({ value })).execute();
  }
  async deleteMeta(key: string, q: Queryable = this.#db): Promise<void> {
    await (q as Core).deleteFrom('meta').where('key', '=', key).execute();
  }

  // --- CA ---
  async getCa(): Promise<CaRow | undefined> {
    const r = await this.#db.selectFrom('ca').select(['key_blob', 'kdf_salt', 'cert_pem', 'created_at']).where('id', '=', 1).executeTakeFirst();
    if (!r) return undefined;
    return { keyBlob: Buffer.from(r.key_blob), kdfSalt: Buffer.from(r.kdf_salt), certPem: r.cert_pem, createdAt: r.created_at };
  }
  async insertCa(row: CaRow): Promise<void> {
    await this.#database.transaction(async (tx) => {
      await (tx as Core).insertInto('ca').values({ id: 1, key_blob: row.keyBlob, kdf_salt: row.kdfSalt, cert_pem: row.certPem, created_at: row.createdAt }).execute();
    }, { durable: true });
  }
  /**
   * The end of a CA rotation (ca-rotation.ts): the next CA becomes the CA, and `apply` (meta updates:
   * the rotation state cleared, the pin) commits in the same durable transaction.
   */
  async replaceCa(row: CaRow, apply: (tx: Queryable) => Promise<void>): Promise<void> {
    await this.#database.transaction(async (tx) => {
      await (tx as Core).updateTable('ca').set({ key_blob: row.keyBlob, kdf_salt: row.kdfSalt, cert_pem: row.certPem, created_at: row.createdAt }).where('id', '=', 1).execute();
      await apply(tx);
    }, { durable: true });
  }
  /** Re-seals the CA key (same key, new blob: a migration of its sealing), only if the blob is still `previous`. */
  async replaceCaKey(previous: Buffer, keyBlob: Buffer, kdfSalt: Buffer): Promise<void> {
    await this.#database.transaction(async (tx) => {
      await (tx as Core).updateTable('ca').set({ key_blob: keyBlob, kdf_salt: kdfSalt }).where('id', '=', 1).where('key_blob', '=', previous).execute();
    }, { durable: true });
  }

  /**
   * A consistent copy of the whole database at `path` (SQLite's online backup API: pages copied in
   * steps, restarting if a write lands meanwhile, so the copy is one committed state while the server
   * keeps running). The caller makes it atomic (temp file, fsync, rename). A PostgreSQL store is
   * backed up with PostgreSQL's own tools (docs/CLUSTER.md).
   */
  async backupTo(path: string): Promise<void> {
    await this.#sqlite('backup').backup(path);
  }

  /** SQLite's quick_check: true when the pages and indexes are sound (a backup about to be restored). */
  quickCheck(): boolean {
    return this.#sqlite('quick_check').pragma('quick_check', { simple: true }) === 'ok';
  }

  /** Folds the write-ahead log into the database file and truncates it. */
  checkpoint(): void {
    this.#sqlite('checkpoint').pragma('wal_checkpoint(TRUNCATE)');
  }

  /** The current synchronous level (1 = NORMAL, 2 = FULL), for tests. */
  synchronousLevel(): number {
    return this.#sqlite('synchronous').pragma('synchronous', { simple: true }) as number;
  }

  #sqlite(what: string): NonNullable<StoreDatabase['sqlite']> {
    const handle = this.#database.sqlite;
    if (handle === null) throw new MeshlinkError('ML_ERR_BACKUP', `${what} is for a SQLite store; back up PostgreSQL with pg_dump (docs/CLUSTER.md)`);
    return handle;
  }

  // --- tokens ---
  async insertToken(row: Omit<TokenRow, 'consumedAt' | 'revokedAt'>): Promise<void> {
    await this.#db.insertInto('tokens').values({
      hash: row.hash, id: row.id, created_at: row.createdAt, expires_at: row.expiresAt, consumed_at: null, revoked_at: null, node_id: row.nodeId,
    }).execute();
  }
  async getToken(hash: string): Promise<TokenRow | undefined> {
    const r = (await this.#tokenByHash(this.#db, { hash })).rows[0] as Pick<CoreTables['tokens'], (typeof TOKEN_COLUMNS)[number]> | undefined;
    return r ? tokenFromRow(r) : undefined;
  }
  async getTokenById(id: string): Promise<TokenRow | undefined> {
    const r = await this.#db.selectFrom('tokens').select(TOKEN_COLUMNS).where('id', '=', id).executeTakeFirst();
    return r ? tokenFromRow(r) : undefined;
  }
  /** The `limit` newest tokens, used, expired and revoked ones included (tokens are never deleted). */
  async listTokens(limit: number): Promise<TokenRow[]> {
    // Newest first; seq (insertion order) breaks ties of one millisecond.
    const rows = await this.#db.selectFrom('tokens').select(TOKEN_COLUMNS).orderBy('created_at', 'desc').orderBy('seq', 'desc').limit(limit).execute();
    return rows.map(tokenFromRow);
  }
  /**
   * Revokes a token that has not been used: true when this call revoked it. Durable like a node's
   * removal: a revocation rolled back by a power cut would make the token usable again.
   */
  async revokeToken(id: string, now: number): Promise<boolean> {
    return this.#database.transaction(async (tx) => {
      const r = await (tx as Core).updateTable('tokens').set({ revoked_at: now })
        .where('id', '=', id).where('revoked_at', 'is', null).where('consumed_at', 'is', null).executeTakeFirst();
      return changed(r) === 1;
    }, { durable: true });
  }

  /**
   * The enrollment commit: consume the token (a single conditional UPDATE; one changed row means this
   * caller won, also under PostgreSQL's READ COMMITTED, where a concurrent consumer's UPDATE waits for
   * the row and then re-checks the condition), create or refresh the node, record the certificate,
   * all in one transaction. Returns false when the token was consumed or expired in the meantime,
   * and then nothing is written. `inTransaction` runs inside it, after those writes (the features'
   * enrollment hooks, given the transaction's handle): what it writes commits with the enrollment,
   * and a throw rolls the whole enrollment back.
   */
  async commitEnrollment(c: EnrollmentCommit, inTransaction?: (c: EnrollmentCommit, tx: Queryable) => Promise<void>): Promise<boolean> {
    return this.#database.transaction(async (q) => {
      const tx = q as Core;
      const consumed = await this.#consumeToken(tx, { now: c.now, csr: c.csrSha256 ?? null, serial: c.cert.serial, hash: c.tokenHash });
      if (affectedRows(consumed) !== 1) return false;
      if (c.node.existing) {
        const updated = await tx.updateTable('nodes')
          .set((eb) => ({ hostname: c.node.hostname, agent_version: eb.fn.coalesce(eb.val(c.node.agentVersion), eb.ref('agent_version')) }))
          .where('id', '=', c.node.id).where('removed_at', 'is', null).executeTakeFirst();
        if (changed(updated) !== 1) throw new MeshlinkError('ML_ERR_TOKEN_INVALID', `the token is bound to node ${c.node.id}, which was removed`);
      } else {
        await this.#insertNode(tx, { id: c.node.id, hostname: c.node.hostname, now: c.now, version: c.node.agentVersion });
      }
      await this.#insertCertRow(tx, c.node.id, c.cert);
      await inTransaction?.(c, q);
      return true;
    });
  }

  // --- nodes ---
  async getNode(id: string): Promise<NodeRow | undefined> {
    const r = (await this.#nodeById(this.#db, { id })).rows[0] as CoreTables['nodes'] | undefined;
    return r ? nodeFromRow(r) : undefined;
  }
  async liveNodesByHostname(hostname: string): Promise<NodeRow[]> {
    const rows = await this.#db.selectFrom('nodes').selectAll().where('hostname', '=', hostname).where('removed_at', 'is', null).orderBy('created_at').execute();
    return rows.map(nodeFromRow);
  }
  async listLiveNodes(): Promise<NodeWithCert[]> {
    // Each node with its newest certificate (the latest NotAfter; issue order breaks ties).
    const rows = await this.#db.selectFrom('nodes as n')
      .leftJoin('certs as c', (join) => join.onRef('c.serial', '=', (eb) => eb.selectFrom('certs').select('serial')
        .whereRef('certs.node_id', '=', 'n.id').orderBy('not_after', 'desc').orderBy('seq', 'desc').limit(1)))
      .selectAll('n').select(['c.serial as cert_serial', 'c.not_after as cert_not_after'])
      .where('n.removed_at', 'is', null).orderBy('n.created_at').orderBy('n.id').execute();
    return rows.map((r) => ({ ...nodeFromRow(r), certSerial: r.cert_serial ?? null, certNotAfter: r.cert_not_after ?? null }));
  }
  /** Totals for metrics (monotonic across restarts: tokens are never deleted, pruned certificates are counted), in one query. */
  async fleetTotals(): Promise<FleetTotals> {
    const pruned = (key: string) => sql<number>`COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ${key}), 0)`;
    const r = await sql<FleetTotals>`SELECT
        (SELECT COUNT(*) FROM tokens WHERE consumed_at IS NOT NULL) AS enrollments,
        (SELECT COUNT(*) FROM certs) + ${pruned(META_CERTS_PRUNED)} AS certs,
        (SELECT COUNT(*) FROM certs WHERE revoked_at IS NOT NULL) + ${pruned(META_REVOKED_PRUNED)} AS revoked,
        (SELECT COUNT(*) FROM nodes WHERE removed_at IS NOT NULL) AS removed,
        (SELECT COUNT(*) FROM nodes WHERE removed_at IS NULL) AS enrolled`.execute(this.#db);
    const t = r.rows[0]!;
    // COUNT is a BIGINT in PostgreSQL (read as a number, database.ts) and an integer in SQLite.
    return { enrollments: Number(t.enrollments), certs: Number(t.certs), revoked: Number(t.revoked), removed: Number(t.removed), enrolled: Number(t.enrolled) };
  }
  /** Records last-seen times in one transaction (batched by Presence). */
  async touchNodes(entries: ReadonlyArray<readonly [id: string, lastSeen: number]>): Promise<void> {
    // In id order: two replicas' batches over the same nodes then lock the rows in one order, where
    // in their own orders each could hold a row the other waits for (PostgreSQL fails one batch as a
    // deadlock). The rows written are the same.
    const sorted = [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    await this.#database.transaction(async (tx) => {
      for (const [id, lastSeen] of sorted) await this.#touchNode(tx, { id, seen: lastSeen });
    });
  }
  async setAgentVersion(id: string, agentVersion: string): Promise<void> {
    await this.#setAgentVersion(this.#db, { id, version: agentVersion });
  }

  /**
   * Removes a node: marks it removed and revokes every unrevoked certificate of it, atomically.
   * Returns the serials revoked now (empty if the node was already removed).
   */
  async removeNode(id: string, now: number): Promise<{ removed: boolean; revokedSerials: string[] }> {
    return this.#database.transaction(async (q) => {
      const tx = q as Core;
      const removed = changed(await tx.updateTable('nodes').set({ removed_at: now }).where('id', '=', id).where('removed_at', 'is', null).executeTakeFirst()) === 1;
      // One UPDATE … RETURNING: the serials reported are the rows this statement revoked, also under
      // PostgreSQL's READ COMMITTED, where a SELECT before the UPDATE could miss a certificate
      // committed between the two (then revoked but absent from the live revocation list).
      const revoked = await tx.updateTable('certs').set({ revoked_at: now }).where('node_id', '=', id).where('revoked_at', 'is', null)
        .returning(['serial', 'seq']).execute();
      return { removed, revokedSerials: inIssueOrder(revoked) };
    }, { durable: true });
  }

  // --- certs ---
  async insertCert(nodeId: string, cert: Omit<CertRow, 'revokedAt' | 'nodeId'>): Promise<void> {
    await this.#insertCertRow(this.#db, nodeId, cert);
  }
  /**
   * A renewal's certificate: inserted only while its node is live, and never left unrevoked by a
   * removal running at the same time. The no-op UPDATE takes the node row's write lock (PostgreSQL;
   * SQLite's BEGIN IMMEDIATE already holds the database's) before the insert: a removal that came
   * first has committed and the UPDATE matches nothing (false, nothing inserted); one that comes
   * later waits for this commit, and its certs UPDATE, a later statement, sees the new row and
   * revokes it.
   */
  async insertCertIfLive(nodeId: string, cert: Omit<CertRow, 'revokedAt' | 'nodeId'>): Promise<boolean> {
    return this.#database.transaction(async (q) => {
      const live = affectedRows(await this.#lockLiveNode(q, { id: nodeId })) === 1;
      if (live) await this.#insertCertRow(q, nodeId, cert);
      return live;
    });
  }
  async #insertCertRow(q: Queryable, nodeId: string, cert: Omit<CertRow, 'revokedAt' | 'nodeId'>): Promise<void> {
    await this.#insertCert(q, { serial: cert.serial, node: nodeId, from: cert.notBefore, to: cert.notAfter, pem: cert.pem });
  }
  async getCert(serial: string): Promise<CertRow | undefined> {
    const r = (await this.#certBySerial(this.#db, { serial })).rows[0] as Pick<CoreTables['certs'], (typeof CERT_COLUMNS)[number]> | undefined;
    return r ? certFromRow(r) : undefined;
  }
  async revokedSerials(): Promise<string[]> {
    return (await this.#db.selectFrom('certs').select('serial').where('revoked_at', 'is not', null).execute()).map((r) => r.serial);
  }

  /**
   * Revokes every unrevoked certificate of the node issued before `serial` (docs/SERVER.md,
   * "Certificates of a node"): at re-enrollment, inside the enrollment's transaction, and when the
   * first session on a renewed certificate opens. Returns the serials revoked now.
   *
   * Issue order is `seq` order (core migration 5): certificates are only ever inserted, and pruning
   * never deletes a node's newest one.
   *
   * Plain durability (no fsync): a power cut that rolls this back is repaired at the next session on
   * `serial`, which revokes them again before it is admitted to the node's operations.
   */
  async revokeCertsIssuedBefore(nodeId: string, serial: string, now: number, q?: Queryable): Promise<string[]> {
    const run = async (tx: Core): Promise<string[]> => {
      const seqOf = tx.selectFrom('certs').select('seq').where('serial', '=', serial);
      // One UPDATE … RETURNING (not a SELECT, then the UPDATE): two replicas revoking at once each
      // report only what they revoked (PostgreSQL re-checks revoked_at IS NULL on a row the other
      // one updated).
      const revoked = await tx.updateTable('certs').set({ revoked_at: now })
        .where('node_id', '=', nodeId).where('revoked_at', 'is', null).where('seq', '<', seqOf)
        .returning(['serial', 'seq']).execute();
      return inIssueOrder(revoked);
    };
    if (q !== undefined) return run(q as Core);
    return this.#database.transaction(async (tx) => run(tx as Core));
  }

  /**
   * Deletes certificates whose NotAfter is before `cutoff` (the caller adds the renewal grace), except
   * each node's newest, which the node listing shows. At most `limit` a call, so one sweep is short.
   * Returns the deleted serials (the caller drops them from the revocation list: a certificate that
   * can no longer pass the NotAfter check needs no revocation entry). The totals stay monotonic:
   * deleted rows are counted in meta.
   */
  async pruneExpiredCerts(cutoff: number, limit = 1_000): Promise<string[]> {
    return this.#database.transaction(async (q) => {
      const tx = q as Core;
      // In issue order, so that two sweeps at once (replicas on PostgreSQL) lock rows in one order
      // and never deadlock; it is also the order SQLite's scan gave before (seq = rowid).
      const rows = await tx.selectFrom('certs as c').select('c.serial')
        .where('c.not_after', '<', cutoff)
        .where('c.seq', '<>', (eb) => eb.selectFrom('certs').select((e) => e.fn.max('seq').as('m')).whereRef('certs.node_id', '=', 'c.node_id'))
        .orderBy('c.seq').limit(limit).execute();
      // Counted by what each DELETE removed (and the row's revocation as it was then): a concurrent
      // sweep may have taken a row since the SELECT, and must not be counted twice in the totals.
      const deleted: string[] = [];
      let revoked = 0;
      for (const r of rows) {
        const gone = await tx.deleteFrom('certs').where('serial', '=', r.serial).returning('revoked_at').executeTakeFirst();
        if (gone === undefined) continue;
        deleted.push(r.serial);
        if (gone.revoked_at !== null) revoked++;
      }
      if (deleted.length > 0) await addToMetaCounter(tx, META_CERTS_PRUNED, deleted.length);
      if (revoked > 0) await addToMetaCounter(tx, META_REVOKED_PRUNED, revoked);
      return deleted;
    });
  }
}

/** Serials of certificate rows in issue order (seq). */
function inIssueOrder(rows: ReadonlyArray<{ serial: string; seq: number | null }>): string[] {
  return [...rows].sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0)).map((r) => r.serial);
}

async function addToMetaCounter(q: Core, key: string, add: number): Promise<void> {
  // The addend is the proposed row's text, cast like the stored one: better-sqlite3 binds a JS number
  // as a REAL, and INTEGER + REAL would store '3.0' where the counter was '3'.
  await q.insertInto('meta').values({ key, value: String(add) })
    .onConflict((oc) => oc.column('key').doUpdateSet({ value: sql<string>`CAST(CAST(meta.value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)` }))
    .execute();
}
