import { link, open, rename, unlink, mkdir } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';

export interface AtomicWriteOptions {
  /** File mode of the final file; key material must pass 0o600. */
  mode?: number;
  /**
   * Never replace an existing file: the temp file is hard-linked into place instead of renamed, so
   * of two writers racing to create one file exactly one wins and the other gets EEXIST (a key file
   * created at first start must not be swapped under a server that already sealed with it).
   */
  exclusive?: boolean;
  /** Mode of the parent directory if it must be created (default: the umask's). */
  dirMode?: number;
}

/**
 * Writes `data` to `path` so that a reader (or a process restarted after a crash) sees either the
 * old content or the new content, never a torn file: temp file in the same directory, fsync, rename,
 * then fsync of the directory so the rename itself is durable.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: AtomicWriteOptions = {},
): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, ...(options.dirMode !== undefined ? { mode: options.dirMode } : {}) });
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const mode = options.mode ?? 0o644;
  const handle = await open(tmp, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.chmod(mode);
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await handle.close();
  try {
    if (options.exclusive) await link(tmp, path);
    else await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  if (options.exclusive) await unlink(tmp);
  await fsyncPath(dir);
}

/** fsync of a file's content, or of a directory's entries (a rename, a new file or link). */
export async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
