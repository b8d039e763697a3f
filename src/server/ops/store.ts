import type Database from 'better-sqlite3';
import type { Store } from '../store/store.js';

/**
 * SQL of the ops feature (tables from migrations.ts): the agent bundles the server offers and
 * the upgrade status agents report. The audit log is the core's (../audit-log.ts).
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

type Row = Record<string, unknown>;

export class OpsStore {
  readonly #db: Database.Database;
  readonly #stmts;

  constructor(store: Store) {
    this.#db = store.database;
    const db = this.#db;
    this.#stmts = {
      insertBundle: db.prepare(
        'INSERT INTO ops_agent_bundles (build_id, sha256, version, size, file, percent, current, created_at, signature, key_id, allow_downgrade) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) ' +
          'ON CONFLICT (build_id) DO UPDATE SET percent = excluded.percent, version = excluded.version, signature = excluded.signature, key_id = excluded.key_id, allow_downgrade = excluded.allow_downgrade',
      ),
      clearCurrent: db.prepare('UPDATE ops_agent_bundles SET current = 0 WHERE current = 1'),
      setCurrent: db.prepare('UPDATE ops_agent_bundles SET current = 1 WHERE build_id = ?'),
      currentBundle: db.prepare('SELECT * FROM ops_agent_bundles WHERE current = 1'),
      getBundle: db.prepare('SELECT * FROM ops_agent_bundles WHERE build_id = ?'),
      setStatus: db.prepare(
        'INSERT INTO ops_upgrade_status (node_id, build_id, state, code, message, ts) VALUES (?, ?, ?, ?, ?, ?) ' +
          'ON CONFLICT (node_id) DO UPDATE SET build_id = excluded.build_id, state = excluded.state, code = excluded.code, message = excluded.message, ts = excluded.ts',
      ),
      listStatus: db.prepare('SELECT * FROM ops_upgrade_status ORDER BY node_id'),
    };
  }

  // --- bundles ---

  /** Stores a bundle and makes it the current offer (in one transaction). */
  setCurrentBundle(b: Omit<BundleRow, 'current' | 'createdAt'>, now = Date.now()): BundleRow {
    this.#db.transaction(() => {
      this.#stmts.insertBundle.run(b.buildId, b.sha256, b.version, b.size, b.file, b.percent, now, b.signature, b.keyId, b.allowDowngrade ? 1 : 0);
      this.#stmts.clearCurrent.run();
      this.#stmts.setCurrent.run(b.buildId);
    })();
    return this.getBundle(b.buildId)!;
  }

  currentBundle(): BundleRow | undefined {
    const r = this.#stmts.currentBundle.get() as Row | undefined;
    return r ? bundleRow(r) : undefined;
  }

  getBundle(buildId: string): BundleRow | undefined {
    const r = this.#stmts.getBundle.get(buildId) as Row | undefined;
    return r ? bundleRow(r) : undefined;
  }

  // --- upgrade status ---

  setUpgradeStatus(s: UpgradeStatusRow): void {
    this.#stmts.setStatus.run(s.nodeId, s.buildId, s.state, s.code, s.message, s.ts);
  }

  listUpgradeStatus(): UpgradeStatusRow[] {
    return (this.#stmts.listStatus.all() as Row[]).map((r) => ({
      nodeId: r.node_id as string,
      buildId: r.build_id as string,
      state: r.state as string,
      code: (r.code as string | null) ?? null,
      message: (r.message as string | null) ?? null,
      ts: r.ts as number,
    }));
  }
}

function bundleRow(r: Row): BundleRow {
  return {
    buildId: r.build_id as string,
    sha256: r.sha256 as string,
    version: r.version as string,
    size: r.size as number,
    file: r.file as string,
    percent: r.percent as number,
    current: r.current === 1,
    createdAt: r.created_at as number,
    signature: (r.signature as string | null) ?? null,
    keyId: (r.key_id as string | null) ?? null,
    allowDowngrade: r.allow_downgrade === 1,
  };
}

const byStore = new WeakMap<Store, OpsStore>();

/** The OpsStore of a Store (one per store, statements prepared once). */
export function opsStoreOf(store: Store): OpsStore {
  let ops = byStore.get(store);
  if (!ops) byStore.set(store, (ops = new OpsStore(store)));
  return ops;
}
