import type { Kysely, Selectable } from 'kysely';
import type { StoreDatabase } from '../store/database.js';
import type { Store } from '../store/store.js';

/**
 * The queries of the ops feature (tables from migrations.ts): the agent bundles the server offers and
 * the upgrade status agents report. The audit log is the core's (../audit-log.ts). Every method is
 * async (either backend, ../store/database.ts); on SQLite a query settles in a microtask.
 */

export interface BundleRow {
  buildId: string;
  sha256: string;
  version: string;
  size: number;
  file: string;
  percent: number;
  current: boolean;
  createdAt: number;
  /** Release signature (base64) and its key id, as `upgrade set` verified them; null on rows from before signing. */
  signature: string | null;
  keyId: string | null;
  /** The operator forced a version lower than the one it replaced (`--allow-downgrade`): agents may take it. */
  allowDowngrade: boolean;
}

export interface UpgradeStatusRow {
  nodeId: string;
  buildId: string;
  state: string;
  code: string | null;
  message: string | null;
  ts: number;
}

/** Column types of the ops tables, as the query layer sees them (flags are integers 0/1 on both backends). */
interface OpsTables {
  ops_agent_bundles: {
    build_id: string; sha256: string; version: string; size: number; file: string; percent: number; current: number; created_at: number;
    signature: string | null; key_id: string | null; allow_downgrade: number;
  };
  ops_upgrade_status: { node_id: string; build_id: string; state: string; code: string | null; message: string | null; ts: number };
}
type Db = Kysely<OpsTables>;

export class OpsStore {
  readonly #database: StoreDatabase;
  readonly #db: Db;

  constructor(store: Store) {
    this.#database = store.database;
    this.#db = store.database.db as Db;
  }

  // --- bundles ---

  /** Stores a bundle and makes it the current offer (in one transaction). */
  async setCurrentBundle(b: Omit<BundleRow, 'current' | 'createdAt'>, now = Date.now()): Promise<BundleRow> {
    return this.#database.transaction(async (q) => {
      const tx = q as Db;
      await tx.insertInto('ops_agent_bundles')
        .values({
          build_id: b.buildId, sha256: b.sha256, version: b.version, size: b.size, file: b.file, percent: b.percent, current: 0, created_at: now,
          signature: b.signature, key_id: b.keyId, allow_downgrade: b.allowDowngrade ? 1 : 0,
        })
        .onConflict((oc) => oc.column('build_id').doUpdateSet((eb) => ({
          percent: eb.ref('excluded.percent'),
          version: eb.ref('excluded.version'),
          signature: eb.ref('excluded.signature'),
          key_id: eb.ref('excluded.key_id'),
          allow_downgrade: eb.ref('excluded.allow_downgrade'),
        })))
        .execute();
      await tx.updateTable('ops_agent_bundles').set({ current: 0 }).where('current', '=', 1).execute();
      await tx.updateTable('ops_agent_bundles').set({ current: 1 }).where('build_id', '=', b.buildId).execute();
      // Read back inside the transaction: on SQLite the root handle would wait for this transaction.
      return bundleRow(await tx.selectFrom('ops_agent_bundles').selectAll().where('build_id', '=', b.buildId).executeTakeFirstOrThrow());
    });
  }

  async currentBundle(): Promise<BundleRow | undefined> {
    const r = await this.#db.selectFrom('ops_agent_bundles').selectAll().where('current', '=', 1).executeTakeFirst();
    return r ? bundleRow(r) : undefined;
  }

  async getBundle(buildId: string): Promise<BundleRow | undefined> {
    const r = await this.#db.selectFrom('ops_agent_bundles').selectAll().where('build_id', '=', buildId).executeTakeFirst();
    return r ? bundleRow(r) : undefined;
  }

  // --- upgrade status ---

  async setUpgradeStatus(s: UpgradeStatusRow): Promise<void> {
    await this.#db.insertInto('ops_upgrade_status')
      .values({ node_id: s.nodeId, build_id: s.buildId, state: s.state, code: s.code, message: s.message, ts: s.ts })
      .onConflict((oc) => oc.column('node_id').doUpdateSet((eb) => ({
        build_id: eb.ref('excluded.build_id'),
        state: eb.ref('excluded.state'),
        code: eb.ref('excluded.code'),
        message: eb.ref('excluded.message'),
        ts: eb.ref('excluded.ts'),
      })))
      .execute();
  }

  async listUpgradeStatus(): Promise<UpgradeStatusRow[]> {
    const rows = await this.#db.selectFrom('ops_upgrade_status').selectAll().orderBy('node_id').execute();
    return rows.map((r) => ({ nodeId: r.node_id, buildId: r.build_id, state: r.state, code: r.code ?? null, message: r.message ?? null, ts: r.ts }));
  }
}

function bundleRow(r: Selectable<OpsTables['ops_agent_bundles']>): BundleRow {
  return {
    buildId: r.build_id,
    sha256: r.sha256,
    version: r.version,
    size: r.size,
    file: r.file,
    percent: r.percent,
    current: r.current === 1,
    createdAt: r.created_at,
    signature: r.signature ?? null,
    keyId: r.key_id ?? null,
    allowDowngrade: r.allow_downgrade === 1,
  };
}

const byStore = new WeakMap<Store, OpsStore>();

/** The OpsStore of a Store (one per store). */
export function opsStoreOf(store: Store): OpsStore {
  let ops = byStore.get(store);
  if (!ops) byStore.set(store, (ops = new OpsStore(store)));
  return ops;
}
