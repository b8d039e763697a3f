import type { OfflineFeature, ServerFeature } from './feature.js';
import { MIGRATIONS as CORE_MIGRATIONS, type Migration } from './store/migrations.js';
import { Store } from './store/store.js';
import type { ActiveEvents } from './store/database.js';
import { observabilityFeature, observabilityOffline } from './observability/index.js';
import { OBSERVABILITY_MIGRATIONS } from './observability/migrations.js';
import { meshFeature, meshOffline } from './mesh/index.js';
import { MESH_MIGRATIONS } from './mesh/migrations.js';
import { opsFeature, opsOffline } from './ops/index.js';
import { consoleFeature } from './console/index.js';
import { OPS_MIGRATIONS } from './ops/migrations.js';

/** The features every server runs, in start order. */
// The console last: it serves the other features' routes, and closes first.
export const SERVER_FEATURES: readonly ServerFeature[] = [meshFeature, observabilityFeature, opsFeature, consoleFeature];

/** What each feature serves to the operator when no server runs (server/operator/offline.ts). */
export const OFFLINE_FEATURES: readonly OfflineFeature[] = [meshOffline, observabilityOffline, opsOffline];

/**
 * Every schema migration: the core's (versions 1–99) and each feature's own list (mesh 100–199, ops
 * 200–299, observability 300–399). Each feature's tables are created by its list whether or not that
 * feature runs, so that one store file serves every server build and every offline CLI command.
 */
export const SERVER_MIGRATIONS: readonly Migration[] = [...CORE_MIGRATIONS, ...MESH_MIGRATIONS, ...OPS_MIGRATIONS, ...OBSERVABILITY_MIGRATIONS];

/**
 * Opens the server's store with every migration: the one way to open it outside the store's own
 * tests. `location`: the SQLite file's path, or a postgres:// URL.
 */
export function openServerStore(location: string, options: { active?: ActiveEvents } = {}): Promise<Store> {
  return Store.open(location, SERVER_MIGRATIONS, options);
}
