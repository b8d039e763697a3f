import { existsSync } from 'node:fs';
import { AdminUnavailable } from '../server/admin.js';
import { adminSocketPath, parseServerConfig, storePath } from '../server/config.js';
import { openServerStore } from '../server/features.js';
import type { Store } from '../server/store/store.js';
import { MeshlinkError } from '../errors.js';

/** Runs `viaAdmin` against the running server's admin socket, else `direct` on the store (server stopped). */
export async function withServerOrStore<T>(dataDirFlag: string | undefined, viaAdmin: (socket: string) => Promise<T>, direct: (store: Store) => T): Promise<T> {
  const dataDir = parseServerConfig({ ...(dataDirFlag ? { dataDir: dataDirFlag } : {}) }).dataDir;
  try {
    return await viaAdmin(adminSocketPath(dataDir));
  } catch (err) {
    if (!(err instanceof AdminUnavailable)) throw err;
  }
  const path = storePath(dataDir);
  if (!existsSync(path)) throw new MeshlinkError('ML_ERR_NOT_INITIALIZED', `no store at ${path}: run \`meshlink server start\` once`);
  const store = openServerStore(path);
  try {
    return direct(store);
  } finally {
    store.close();
  }
}
