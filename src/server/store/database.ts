import { chmodSync } from 'node:fs';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, sql } from 'kysely';
import pg from 'pg';
import { MeshlinkError } from '../../errors.js';
import type { Migration } from './migrations.js';
import { isPostgresUrl, redactUrl } from './location.js';

export { isPostgresUrl, redactUrl };

/**
 * The store's two backends behind one query layer (Kysely): SQLite (better-sqlite3, one file, the
 * embedded default) and PostgreSQL (pg, for replicas). Features' store modules write their queries
 * once against `StoreDatabase.db`; only this module knows which backend runs, and where the SQL of
 * the two differs (schema migrations, pragmas, advisory locks) it is kept here or in the migration
 * lists, each migration carrying one text per dialect.
 *
 * Conventions both backends follow, so that a row reads the same from either:
 * - times are integer milliseconds since the epoch (INTEGER in SQLite, BIGINT in PostgreSQL, read
 *   back as JS numbers: see INT8_AS_NUMBER);
 * - flags are integers 0/1, not booleans; binary data is a Buffer (BLOB / BYTEA);
 * - text compares by bytes: every PostgreSQL text column is COLLATE "C", like SQLite's BINARY;
 * - no query relies on SQLite's rowid: a table ordered by insertion has its own `seq` column.
 */

export type StoreDialect = 'sqlite' | 'postgres';

/** What the active-server lock reports (StoreDatabase.holdActive). */
export interface ActiveEvents {
  onWaiting(): void;
  onLost(err: Error): void;
}

/** Tables are typed by each store module (`db.withTables<...>()`); the shared handle is untyped. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Queryable = Kysely<any>;

export interface TransactionOptions {
  /**
   * The commit must survive a power cut (revocations, the CA): on SQLite this commit fsyncs the WAL
   * (synchronous=FULL for it); PostgreSQL's commits are durable by default.
   */
  durable?: boolean;
}

export interface StoreDatabase {
  readonly dialect: StoreDialect;
  /** The SQLite file's path, or the PostgreSQL URL without its password: for messages and logs. */
  readonly location: string;
  /** The query layer. Inside a transaction, use the handle given to the callback instead. */
  readonly db: Queryable;
  /**
   * Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. SQLite
   * takes the write lock at the start (BEGIN IMMEDIATE) so that two processes never deadlock
   * upgrading read locks; PostgreSQL runs READ COMMITTED, and the statements that decide (a token's
   * consuming UPDATE, say) are conditional single statements that stay correct under it.
   *
   * On SQLite the one connection is held for the whole of `fn`: a query on `db` instead of on the
   * given handle inside `fn` would wait for itself. Keep `fn` to queries on its handle.
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /** Whether the database answers a trivial query now. */
  ping(): Promise<boolean>;
  /**
   * Makes this process the one active server of the store (PostgreSQL; on SQLite the data dir's admin
   * socket already admits one server): resolves once it holds the store's active-server lock,
   * waiting while another server holds it (`onWaiting` is called once then). `onLost` is called if
   * the lock is lost and cannot be had again (another server took it while the database was away):
   * the caller must stop serving.
   */
  holdActive(events: ActiveEvents): Promise<void>;
  close(): Promise<void>;
  /** The better-sqlite3 handle (SQLite only): backups, integrity checks, checkpoints. */
  readonly sqlite: SqliteDatabase.Database | null;
}

/**
 * Opens the store at `location` (a file path, or a postgres:// URL) and applies the pending
 * `migrations`. A store that has applied a version missing from the list fails with
 * ML_ERR_STORE_SCHEMA: it was written by a newer meshlink.
 */
export async function openStoreDatabase(
  location: string,
  migrations: readonly Migration[],
  options: { active?: ActiveEvents } = {},
): Promise<StoreDatabase> {
  const opened = isPostgresUrl(location) ? await openPostgres(location) : openSqlite(location);
  try {
    // A server becomes the active one before it migrates: a standby of a newer release must not change
    // the schema under the active server of an older one (a rolling upgrade).
    if (options.active) await opened.holdActive(options.active);
    await migrate(opened, migrations);
    return opened;
  } catch (err) {
    await opened.close();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// SQLite

/** Prepared statements kept per SQL text (Kysely prepares on every execution otherwise). */
const STATEMENT_CACHE_LIMIT = 512;

function openSqlite(path: string): StoreDatabase {
  const handle = new SqliteDatabase(path);
  try {
    handle.pragma('journal_mode = WAL');
    handle.pragma('synchronous = NORMAL');
    handle.pragma('foreign_keys = ON');
    handle.pragma('busy_timeout = 5000');
    chmodSync(path, 0o600);
  } catch (err) {
    handle.close();
    throw err;
  }
  // Kysely's SQLite driver calls only prepare() and close() on the database it is given. Each query
  // shape compiles to one SQL text with its values as parameters, so a cache keyed by the text
  // holds one statement per shape; the bound is a guard against a shape built per call.
  const statements = new Map<string, SqliteDatabase.Statement>();
  const cached = {
    prepare(text: string): SqliteDatabase.Statement {
      let stmt = statements.get(text);
      if (stmt === undefined) {
        if (statements.size >= STATEMENT_CACHE_LIMIT) statements.clear();
        stmt = handle.prepare(text);
        statements.set(text, stmt);
      }
      return stmt;
    },
    close(): void {
      if (handle.open) handle.close();
    },
  };
  const db: Queryable = new Kysely({ dialect: new SqliteDialect({ database: cached as unknown as SqliteDatabase.Database }) });
  let closed = false;
  return {
    dialect: 'sqlite',
    location: path,
    db,
    sqlite: handle,
    async transaction<T>(fn: (tx: Queryable) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
      // db.connection() holds the single connection (Kysely's mutex) for the callback: no other query
      // of this process interleaves with the transaction.
      return db.connection().execute(async (conn) => {
        if (options.durable) handle.pragma('synchronous = FULL');
        try {
          await sql`BEGIN IMMEDIATE`.execute(conn);
          // A COMMIT can fail too (a deferred foreign key, a full disk), and SQLite then keeps the
          // transaction open: roll it back, or every later BEGIN on this connection fails.
          try {
            const result = await fn(conn);
            await sql`COMMIT`.execute(conn);
            return result;
          } catch (err) {
            if (handle.inTransaction) await sql`ROLLBACK`.execute(conn);
            throw err;
          }
        } finally {
          if (options.durable) handle.pragma('synchronous = NORMAL');
        }
      });
    },
    async ping(): Promise<boolean> {
      try {
        handle.prepare('SELECT 1').get();
        return true;
      } catch {
        return false;
      }
    },
    async holdActive(): Promise<void> {},
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      // Kysely's SQLite driver closes the handle without waiting for the connection: take it first,
      // so that a transaction under way (a presence flush, a prune) commits before the close.
      await db.connection().execute(async () => {});
      await db.destroy();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

const INT8_OID = 20;

/**
 * BIGINT columns (times in milliseconds, counts) come back as JS numbers, as they do from SQLite.
 * pg returns them as strings by default because an int8 may exceed 2^53; ours never do (a time in
 * milliseconds reaches 2^53 in the year 287,396), and a value that did would fail loudly here.
 */
function int8AsNumber(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new RangeError(`a BIGINT from PostgreSQL is beyond 2^53: ${text}`);
  return n;
}

const PG_TYPES = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8_OID && format !== 'binary') return int8AsNumber;
    return pg.types.getTypeParser(oid, format);
  },
};

/** Connections per process: the event loop is single-threaded, so a few suffice to overlap round trips. */
const PG_POOL_SIZE = 8;

async function openPostgres(url: string): Promise<StoreDatabase> {
  const location = redactUrl(url);
  const pool = new pg.Pool({
    connectionString: url,
    max: PG_POOL_SIZE,
    types: PG_TYPES as pg.CustomTypesConfig,
    connectionTimeoutMillis: 10_000,
    // A statement that runs longer than this is a bug or a lock wait; fail it rather than hang a request.
    statement_timeout: 30_000,
    application_name: 'meshlink',
  });
  // An idle client that loses its connection emits 'error' on the pool; without a listener that
  // would crash the process. The next query gets a fresh connection (or fails with its own error).
  pool.on('error', () => {});
  try {
    const client = await pool.connect();
    client.release();
  } catch (err) {
    await pool.end().catch(() => {});
    throw new MeshlinkError('ML_ERR_STORE_UNAVAILABLE', `cannot connect to PostgreSQL at ${location}: ${(err as Error).message}`);
  }
  const db: Queryable = new Kysely({ dialect: new PostgresDialect({ pool }) });
  let closed = false;
  const active = new ActiveLock(url);
  return {
    dialect: 'postgres',
    location,
    db,
    sqlite: null,
    async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      return db.transaction().execute(fn);
    },
    async ping(): Promise<boolean> {
      try {
        await sql`SELECT 1`.execute(db);
        return true;
      } catch {
        return false;
      }
    },
    holdActive: (events) => active.hold(events),
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await active.release();
      await db.destroy();
    },
  };
}

/**
 * The key of the session-level advisory lock held by the active server of a PostgreSQL store
 * ("meshlink-active", arbitrary). Until replicas share the fleet (docs/CLUSTER.md), two servers
 * serving one database at once would each run the mesh's recompute and number events on their own:
 * so one is active and the others stand by, each taking over within ACTIVE_RETRY_MS of the active
 * one's database session ending (its process gone, or its host: PostgreSQL's TCP keepalive).
 */
const ACTIVE_LOCK_KEY = 0x6d6c2d616374697en;
const ACTIVE_RETRY_MS = 1_000;

/** The active-server lock on a connection of its own (the pool's connections come and go). */
class ActiveLock {
  readonly #url: string;
  #client: pg.Client | null = null;
  #stopped = false;
  #timer: NodeJS.Timeout | null = null;

  constructor(url: string) {
    this.#url = url;
  }

  async hold(events: ActiveEvents): Promise<void> {
    let waiting = false;
    for (;;) {
      if (this.#stopped) throw new MeshlinkError('ML_ERR_SHUTTING_DOWN', 'the server stopped while waiting for the store');
      try {
        if (await this.#tryOnce(events)) return;
        if (!waiting) {
          waiting = true;
          events.onWaiting();
        }
      } catch {
        // The database is away: wait as if another server held the lock.
      }
      await new Promise((r) => setTimeout(r, ACTIVE_RETRY_MS).unref());
    }
  }

  /** One attempt on a fresh connection; the connection is kept only when it took the lock. */
  async #tryOnce(events: Pick<ActiveEvents, 'onLost'>): Promise<boolean> {
    const client = new pg.Client({
      connectionString: this.#url,
      application_name: 'meshlink-active',
      // Both ends probe an idle connection, so that a host that vanished (power, network) ends its
      // session, and with it the lock, in about 25 s instead of the system default of two hours.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      options: '-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3',
      connectionTimeoutMillis: 10_000,
    });
    client.on('error', () => {}); // reported through 'end' below
    let locked = false;
    try {
      await client.connect();
      const r = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [String(ACTIVE_LOCK_KEY)]);
      locked = r.rows[0]?.ok === true;
    } finally {
      // Not locked, or released meanwhile (the server closing while this attempt ran): let it go.
      if (!locked || this.#stopped) await client.end().catch(() => {});
    }
    if (!locked || this.#stopped) return false;
    this.#client = client;
    client.once('end', () => {
      if (this.#client !== client || this.#stopped) return;
      this.#client = null;
      // The lock went with the connection (PostgreSQL restarted, or the link dropped). Keep serving
      // and take it again: with the database away no other server can have taken it meanwhile, so
      // failing to get it back means one did after the database returned, and this one must stop.
      this.#retake(events);
    });
    return true;
  }

  #retake(events: Pick<ActiveEvents, 'onLost'>): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (this.#stopped) return;
      this.#tryOnce(events).then(
        (ok) => {
          if (!ok && !this.#stopped) events.onLost(new MeshlinkError('ML_ERR_STORE_UNAVAILABLE', 'another server became the active one of this store while the connection to it was lost'));
        },
        () => this.#retake(events), // still away: try again
      );
    }, ACTIVE_RETRY_MS);
  }

  async release(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    const client = this.#client;
    this.#client = null;
    // Ending the session releases its advisory locks.
    await client?.end().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Migrations

/**
 * The key of the advisory lock that serialises migrations across replicas: N replicas that start
 * together on an empty database migrate once; the others wait for the lock, then find every version
 * applied. (Arbitrary; "meshlink" in ASCII, as a 64-bit integer.)
 */
const MIGRATION_LOCK_KEY = 0x6d6573686c696e6bn;

async function migrate(store: StoreDatabase, migrations: readonly Migration[]): Promise<void> {
  const sorted = [...migrations].sort((a, b) => a.version - b.version);
  if (store.sqlite !== null) {
    migrateSqlite(store.sqlite, sorted);
    return;
  }
  // One connection for the whole run: an advisory lock belongs to the session that took it.
  await store.db.connection().execute(async (conn) => {
    // The pool's statement timeout is for requests: waiting for another server's migration, or a
    // migration that rebuilds a large table, may take longer. RESET restores it for the pool.
    await sql`SET statement_timeout = 0`.execute(conn);
    await sql`SELECT pg_advisory_lock(${MIGRATION_LOCK_KEY})`.execute(conn);
    try {
      await sql`CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT COLLATE "C" NOT NULL, applied_at BIGINT NOT NULL)`.execute(conn);
      const rows = await sql<{ version: number }>`SELECT version FROM schema_migrations`.execute(conn);
      const applied = checkKnown(rows.rows.map((r) => r.version), sorted);
      for (const m of sorted) {
        if (applied.has(m.version)) continue;
        await conn.transaction().execute(async (tx) => {
          // The text is a fixed constant of this module's callers (no values): run it as is. pg
          // sends a query without parameters in the simple protocol, which takes several statements.
          await sql.raw(m.postgres).execute(tx);
          await sql`INSERT INTO schema_migrations (version, name, applied_at) VALUES (${m.version}, ${m.name}, ${Date.now()})`.execute(tx);
        });
      }
    } finally {
      await sql`SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY})`.execute(conn);
      await sql`RESET statement_timeout`.execute(conn);
    }
  });
}

function migrateSqlite(db: SqliteDatabase.Database, sorted: readonly Migration[]): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT');
  const applied = checkKnown((db.prepare('SELECT version FROM schema_migrations').all() as Array<{ version: number }>).map((r) => r.version), sorted);
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
  for (const m of sorted) {
    if (applied.has(m.version)) continue;
    db.transaction(() => {
      db.exec(m.sqlite);
      record.run(m.version, m.name, Date.now());
    }).immediate();
  }
}

/**
 * Versions are applied by set difference, not "above the maximum": features own separate version
 * ranges (core 1–99, mesh 100–199, ops 200–299, ...), and a feature's first migration may arrive
 * after another range's later ones.
 */
function checkKnown(appliedVersions: readonly number[], migrations: readonly Migration[]): Set<number> {
  const applied = new Set(appliedVersions);
  const known = new Set(migrations.map((m) => m.version));
  const unknown = [...applied].filter((v) => !known.has(v));
  if (unknown.length > 0) {
    throw new MeshlinkError('ML_ERR_STORE_SCHEMA', `store has schema migrations this meshlink does not know (${unknown.join(', ')}): it was written by a newer version`);
  }
  return applied;
}
