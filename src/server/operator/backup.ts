import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { AdminClient } from '../../admin-api/client.js';
import { MeshlinkError } from '../../errors.js';
import { fsyncPath } from '../../util/atomic-file.js';
import { adminSocketPath, storePath } from '../config.js';
import { openServerStore } from '../features.js';
import type { Store } from '../store/store.js';

/**
 * `meshlink server backup FILE` and `meshlink server restore FILE` (docs/SERVER.md, "Backup and
 * restore").
 *
 * A backup is a copy of the store made with SQLite's online backup API (Store.backupTo), so it is one
 * committed state even while the running server writes. It holds the CA key, the mesh master key and
 * everything under it only sealed (ca-key-crypto.ts): it is useless without the server key file, which
 * is kept, and must be backed up, apart. It is written to a temp file beside the target, fsynced, given
 * mode 0600 and renamed into place, so FILE is either the previous one or the complete new backup.
 *
 * A restore copies FILE into the data dir the same way, after checking that it is a meshlink store
 * (it opens with this release's migrations, passes SQLite's quick_check and holds a CA). It is offline
 * only: a running server holds the store open and would keep writing the old one.
 */

/** Writes a consistent backup of `store` to `target` (absolute), atomically. Returns its size. */
export async function backupStore(store: Store, target: string): Promise<{ path: string; bytes: number }> {
  const path = resolve(target);
  // Into the data dir it could replace the live store (or its log), and it would share its fate anyway.
  const dataDir = dirname(resolve(store.path));
  if (path === dataDir || path.startsWith(`${dataDir}/`)) {
    throw new MeshlinkError('ML_ERR_BACKUP', `the backup ${path} would be inside the data dir ${dataDir}: write it elsewhere`);
  }
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await store.backupTo(tmp);
    await chmod(tmp, 0o600);
    await fsyncPath(tmp);
    await rename(tmp, path);
    await fsyncPath(dirname(path));
  } catch (err) {
    await rm(tmp, { force: true });
    throw new MeshlinkError('ML_ERR_BACKUP', `cannot write the backup ${path}: ${(err as Error).message}`, { cause: err });
  }
  return { path, bytes: (await stat(path)).size };
}

/**
 * Replaces the data dir's store with the backup `file` (created when the data dir is new). Refuses
 * while a server answers on the data dir (ML_ERR_SERVER_RUNNING) and a file that is not a meshlink
 * store (ML_ERR_BACKUP). The key file is not touched: start the server with the key file that
 * sealed the backup (`--key-file` when the data dir is not the original one).
 */
export async function restoreStore(file: string, dataDir: string): Promise<{ path: string; bytes: number }> {
  const source = resolve(file);
  if (await new AdminClient(adminSocketPath(dataDir)).reachable()) {
    throw new MeshlinkError('ML_ERR_SERVER_RUNNING', `a server is running on ${dataDir}: stop it before restoring its store`);
  }
  if (!existsSync(source)) throw new MeshlinkError('ML_ERR_BACKUP', `no backup at ${source}`);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const target = storePath(dataDir);
  const tmp = join(dataDir, `.restore.${randomBytes(6).toString('hex')}.db`);
  try {
    await copyFile(source, tmp);
    await chmod(tmp, 0o600);
    await checkIsStore(tmp, source);
    await fsyncPath(tmp);
    // The old store's write-ahead log must not outlive it: SQLite would replay its frames onto the
    // restored file. Fold it into the old file first (a clean close leaves none), then drop what is left.
    await foldWal(target);
    await rm(`${target}-wal`, { force: true });
    await rm(`${target}-shm`, { force: true });
    await rename(tmp, target);
    await fsyncPath(dataDir);
  } catch (err) {
    await rm(tmp, { force: true });
    await rm(`${tmp}-wal`, { force: true });
    await rm(`${tmp}-shm`, { force: true });
    if (err instanceof MeshlinkError) throw err;
    throw new MeshlinkError('ML_ERR_BACKUP', `cannot restore ${source} into ${dataDir}: ${(err as Error).message}`, { cause: err });
  }
  return { path: target, bytes: (await stat(target)).size };
}

/** Opens the copy as the server would (migrations of this release), and checks its pages and its CA. */
async function checkIsStore(copy: string, source: string): Promise<void> {
  let store: Store;
  try {
    store = await openServerStore(copy);
  } catch (err) {
    if (err instanceof MeshlinkError && err.code === 'ML_ERR_STORE_SCHEMA') throw err;
    throw new MeshlinkError('ML_ERR_BACKUP', `${source} is not a meshlink store: ${(err as Error).message}`, { cause: err });
  }
  try {
    if (!store.quickCheck()) throw new MeshlinkError('ML_ERR_BACKUP', `${source} is damaged (SQLite quick_check failed)`);
    if (!(await store.getCa())) throw new MeshlinkError('ML_ERR_BACKUP', `${source} holds no CA: it is not a backup of an initialized server`);
  } finally {
    await store.close();
  }
}

/** Checkpoints the store at `path` if it exists and opens; a store that does not is being replaced anyway. */
async function foldWal(path: string): Promise<void> {
  if (!existsSync(path)) return;
  try {
    const old = await openServerStore(path);
    old.checkpoint();
    await old.close();
  } catch {
    /* damaged or foreign: its log is removed below */
  }
}
