import { AdminClient, type Operator } from '../admin-api/client.js';
import { adminSocketPath, parseServerConfig } from '../server/config.js';
import { OfflineOperator } from '../server/operator/offline.js';

/** The data dir of `--data-dir`, else MESHLINK_DATA_DIR, else the documented default. */
export function dataDirOf(flag: string | undefined): string {
  return parseServerConfig({ ...(flag ? { dataDir: flag } : {}) }).dataDir;
}

export function adminSocketOf(dataDirFlag: string | undefined): string {
  return adminSocketPath(dataDirOf(dataDirFlag));
}

/**
 * Runs `fn` on the operator API: the running server's admin socket when a server answers there, else
 * the offline operator on the store (the same routes and handlers; routes that need agents fail with
 * ML_ERR_SERVER_NOT_RUNNING). `op.live` tells which, for the message the command prints.
 */
export async function withOperator<T>(dataDirFlag: string | undefined, fn: (op: Operator) => Promise<T>): Promise<T> {
  const dataDir = dataDirOf(dataDirFlag);
  const client = new AdminClient(adminSocketPath(dataDir));
  const op: Operator = (await client.reachable()) ? client : await OfflineOperator.open(dataDir);
  try {
    return await fn(op);
  } finally {
    await op.close();
  }
}
