import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Migration } from '../../src/server/store/migrations.js';
import { Store } from '../../src/server/store/store.js';
import { POSTGRES_MISSING, startPostgres, type PostgresCluster } from '../helpers/postgres.js';

/**
 * Stores to run one feature store's tests on each backend: SQLite files in a temp dir, and databases
 * of one throwaway PostgreSQL cluster (test/helpers/postgres.ts; `skip` says why when it cannot run).
 * Each open() is a fresh, migrated store; close() closes them all and removes the files or the cluster.
 */
export interface Backend {
  name: string;
  skip: string | null;
  open(): Promise<Store>;
  close(): Promise<void>;
}

export function sqliteBackend(migrations: readonly Migration[]): Backend {
  let dir: string | null = null;
  const stores: Store[] = [];
  return {
    name: 'SQLite',
    skip: null,
    async open() {
      dir ??= await mkdtemp(join(tmpdir(), 'ml-store-'));
      const s = await Store.open(join(dir, `store-${stores.length}.db`), migrations);
      stores.push(s);
      return s;
    },
    async close() {
      for (const s of stores) await s.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    },
  };
}

export function postgresBackend(migrations: readonly Migration[]): Backend {
  let cluster: PostgresCluster | null = null;
  const stores: Store[] = [];
  return {
    name: 'PostgreSQL',
    skip: POSTGRES_MISSING,
    async open() {
      cluster ??= await startPostgres();
      const s = await Store.open(await cluster.createDatabase(`store_${stores.length}`), migrations);
      stores.push(s);
      return s;
    },
    async close() {
      for (const s of stores) await s.close();
      await cluster?.stop();
    },
  };
}

