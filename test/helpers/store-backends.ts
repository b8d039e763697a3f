import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, it } from 'vitest';
import { openStoreDatabase, type StoreDatabase } from '../../src/server/store/database.js';
import type { Migration } from '../../src/server/store/migrations.js';
import { Store } from '../../src/server/store/store.js';
import { POSTGRES_MISSING, startPostgres, type PostgresCluster } from './postgres.js';

/**
 * The store's two backends for tests (issue 14: "the store's tests run against both backends"), as a
 * list for `describe.each`:
 *
 * ```ts
 * const BACKENDS = storeBackends(); // at the top level of the test file: registers its hooks
 * describe.each(BACKENDS.map((b) => [b.title, b] as const))('the store on %s', (_title, backend) => {
 *   beforeAll(() => backend.ready(), 120_000);
 *   backend.it('…', async () => {
 *     const store = await backend.openStore(SERVER_MIGRATIONS);
 *   });
 * });
 * ```
 *
 * - `sqlite`: a fresh file in a fresh temp dir per location, removed after the test.
 * - `postgres`: one throwaway cluster per test file (test/helpers/postgres.ts), started on first use
 *   and stopped after the file; a fresh database per location (CREATE DATABASE), dropped after the
 *   test. Where PostgreSQL cannot be had and CI is not set, its cases are skipped and the title
 *   says why; under CI (`process.env.CI`) they run, so a missing PostgreSQL fails the file (the
 *   `ready()` of its beforeAll throws why).
 *
 * Stores and databases opened through a backend are closed after each test (before their database
 * is dropped), so a failing test leaks no pool.
 */

export type StoreBackendName = 'sqlite' | 'postgres';

export interface StoreBackend {
  readonly name: StoreBackendName;
  /** The name, with the reason when its cases are skipped here (for a describe title). */
  readonly title: string;
  /** Why this backend's cases are skipped here, or null when they run. */
  readonly skip: string | null;
  /** `it`, skipped when the backend cannot run here. */
  readonly it: typeof it;
  /** Makes the backend usable (starts the file's PostgreSQL cluster); for a `beforeAll`. */
  ready(): Promise<void>;
  /**
   * A new empty store location (a file path, or a postgres:// URL of a new database). `icuLocale`
   * (postgres only): the database's default collation is that ICU locale's, not the cluster's C.
   */
  location(options?: { icuLocale?: string }): Promise<string>;
  /** openStoreDatabase at `location` (a new one when omitted), closed after the test. */
  openDatabase(migrations: readonly Migration[], location?: string): Promise<StoreDatabase>;
  /** Store.open at `location` (a new one when omitted), closed after the test. */
  openStore(migrations: readonly Migration[], location?: string): Promise<Store>;
  /** Closes `closable` after the test (for stores opened otherwise). */
  track<T extends { close(): Promise<void> }>(closable: T): T;
  /** The file's PostgreSQL cluster (postgres only, after ready()). */
  cluster(): PostgresCluster;
}

/** Why the postgres cases are skipped here, or null: never skipped under CI (.ci/run installs PostgreSQL). */
export const POSTGRES_SKIP: string | null = process.env.CI ? null : POSTGRES_MISSING;

/**
 * The backends for one test file. Call it once, at the file's top level: it registers the file's
 * afterEach (close what the test opened, drop its databases, remove its dirs) and afterAll (stop the
 * cluster).
 */
export function storeBackends(): readonly StoreBackend[] {
  const closables: Array<{ close(): Promise<void> }> = [];
  const cleanups: Array<() => Promise<void>> = [];
  let cluster: Promise<PostgresCluster> | null = null;
  let started: PostgresCluster | null = null;
  let databases = 0;

  afterEach(async () => {
    // Close first: a database is dropped only when no pool of this test holds it.
    const errors: unknown[] = [];
    for (const c of closables.splice(0).reverse()) await c.close().catch((err: unknown) => errors.push(err));
    for (const c of cleanups.splice(0).reverse()) await c().catch((err: unknown) => errors.push(err));
    if (errors.length > 0) throw new AggregateError(errors, 'store backend cleanup failed');
  });
  afterAll(async () => {
    await started?.stop();
  }, 60_000);

  function track<T extends { close(): Promise<void> }>(closable: T): T {
    closables.push(closable);
    return closable;
  }

  function make(name: StoreBackendName, skip: string | null, location: (options?: { icuLocale?: string }) => Promise<string>, ready: () => Promise<void>): StoreBackend {
    const backend: StoreBackend = {
      name,
      title: skip === null ? name : `${name} (skipped: ${skip})`,
      skip,
      it: it.skipIf(skip !== null) as typeof it,
      ready,
      location,
      async openDatabase(migrations, at) {
        return track(await openStoreDatabase(at ?? (await location()), migrations));
      },
      async openStore(migrations, at) {
        return track(await Store.open(at ?? (await location()), migrations));
      },
      track,
      cluster() {
        if (started === null) throw new Error('the PostgreSQL cluster is not started (call ready() first)');
        return started;
      },
    };
    return backend;
  }

  const sqlite = make(
    'sqlite',
    null,
    async () => {
      const dir = await mkdtemp(join(tmpdir(), 'ml-store-'));
      cleanups.push(() => rm(dir, { recursive: true, force: true }));
      return join(dir, 'meshlink.db');
    },
    async () => {},
  );

  const readyPostgres = async (): Promise<void> => {
    if (POSTGRES_SKIP !== null) return;
    cluster ??= startPostgres().then((c) => (started = c));
    await cluster;
  };
  const postgres = make(
    'postgres',
    POSTGRES_SKIP,
    async (options) => {
      await readyPostgres();
      const c = started!;
      const name = `store_${process.pid}_${++databases}`;
      const url = await c.createDatabase(name, options);
      cleanups.push(() => c.dropDatabase(name));
      return url;
    },
    readyPostgres,
  );

  return [sqlite, postgres];
}
