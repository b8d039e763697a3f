import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { z } from 'zod';
import { MeshlinkError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import type { Logger } from '../util/logger.js';
import { SealingSecret } from './ca-key-crypto.js';

/**
 * The server key file: 32 random bytes that, with the optional MESHLINK_CA_PASSPHRASE, seal the CA
 * key and the mesh master key (ca-key-crypto.ts). It is the secret that is NOT in the database, so it
 * must not live in the data dir either: a backup or a copy of the data dir alone must not open the
 * store. Hence the rules below.
 *
 * Where: `--key-file` / MESHLINK_KEY_FILE when given (refused inside the data dir). Otherwise, for the
 * system data dir /var/lib/meshlink/server, /etc/meshlink/server.key when it exists or can be created
 * there (a read-only /etc, e.g. systemd's ProtectSystem, falls through); else `<data dir>.key` beside
 * the data dir (`/srv/mesh` → `/srv/mesh.key`). An existing file is always preferred over creating
 * one, in that order, so the choice does not change between starts.
 *
 * When it is created: only when the store has nothing sealed yet, or holds only blobs of an earlier
 * release (path-bound, re-sealed now). A store already sealed with a key file whose key file is gone is
 * refused with ML_ERR_KEY_FILE: making a new key then would only hide that the old one is lost.
 *
 * Format: 64 lower-case hex digits and a newline. Mode 0600, owned by the server's user (or root);
 * a file readable or writable by group or others is refused, as is a symlink.
 */

export const SYSTEM_DATA_DIR = '/var/lib/meshlink/server';
export const SYSTEM_KEY_FILE = '/etc/meshlink/server.key';
const MAX_KEY_FILE_BYTES = 256;
const keyFileText = z.string().regex(/^[0-9a-f]{64}\n?$/, 'the key file must hold 64 lower-case hex digits');

export interface OpenedKeyFile {
  readonly secret: SealingSecret;
  readonly path: string;
  readonly created: boolean;
}

/** True when `path` is `dir` or lies beneath it. */
function inside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/** The default key file locations for a data dir, in the order they are looked for and created. */
export function defaultKeyFiles(dataDir: string): string[] {
  const abs = resolve(dataDir);
  const beside = join(dirname(abs), `${basename(abs)}.key`);
  return abs === SYSTEM_DATA_DIR ? [SYSTEM_KEY_FILE, beside] : [beside];
}

/**
 * Opens the key file of a data dir (creating it when `mayCreate` and none exists) and returns the
 * sealing secret with the passphrase mixed in.
 */
export async function openKeyFile(options: {
  dataDir: string;
  /** The configured key file (`--key-file`, MESHLINK_KEY_FILE), else null for the defaults. */
  keyFile: string | null;
  passphrase: string;
  mayCreate: boolean;
  logger: Logger;
}): Promise<OpenedKeyFile> {
  const dataDir = resolve(options.dataDir);
  const candidates = options.keyFile ? [resolve(options.keyFile)] : defaultKeyFiles(dataDir);
  for (const path of candidates) {
    if (inside(path, dataDir)) {
      throw new MeshlinkError('ML_ERR_CONFIG', `--key-file ${path} is inside the data dir ${dataDir}: the key file must be kept apart from the store it unlocks`);
    }
  }
  for (const path of candidates) {
    const bytes = await readKeyFile(path);
    if (bytes) return { secret: new SealingSecret(bytes, options.passphrase), path, created: false };
  }
  if (!options.mayCreate) {
    throw new MeshlinkError(
      'ML_ERR_KEY_FILE',
      `the store is sealed with a server key file and there is none at ${candidates.join(' or ')}: restore it there or name it with --key-file (MESHLINK_KEY_FILE)`,
    );
  }
  let lastError: unknown;
  for (const path of candidates) {
    const bytes = randomBytes(32);
    try {
      await writeFileAtomic(path, `${bytes.toString('hex')}\n`, { mode: 0o600, exclusive: true, dirMode: 0o700 });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Someone created it first (another start racing this one): use theirs.
      if (code === 'EEXIST') {
        const theirs = await readKeyFile(path);
        if (theirs) return { secret: new SealingSecret(theirs, options.passphrase), path, created: false };
      }
      // Not writable here (a read-only /etc, no permission): try the next place.
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
        lastError = err;
        continue;
      }
      throw new MeshlinkError('ML_ERR_KEY_FILE', `cannot create the server key file ${path}: ${(err as Error).message}`, { cause: err });
    }
    options.logger.warn({ keyFile: path }, 'created the server key file: back it up apart from the data dir; without it the store and its backups cannot be opened');
    return { secret: new SealingSecret(bytes, options.passphrase), path, created: true };
  }
  throw new MeshlinkError('ML_ERR_KEY_FILE', `cannot create a server key file at ${candidates.join(' or ')}: ${(lastError as Error | undefined)?.message ?? 'not writable'}`, { cause: lastError });
}

/** The key bytes, or null when the file does not exist. Refuses a symlink, a loose mode, a foreign owner, a malformed file. */
async function readKeyFile(path: string): Promise<Buffer | null> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ELOOP') throw new MeshlinkError('ML_ERR_KEY_FILE', `the server key file ${path} is a symlink: name the file itself`);
    throw new MeshlinkError('ML_ERR_KEY_FILE', `cannot read the server key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new MeshlinkError('ML_ERR_KEY_FILE', `the server key file ${path} is not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new MeshlinkError('ML_ERR_KEY_FILE', `the server key file ${path} is open to group or others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`);
    }
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
      throw new MeshlinkError('ML_ERR_KEY_FILE', `the server key file ${path} belongs to uid ${st.uid}, not to the server's user (${uid}) or root`);
    }
    if (st.size > MAX_KEY_FILE_BYTES) throw new MeshlinkError('ML_ERR_KEY_FILE', `the server key file ${path} is not a meshlink key file (${st.size} bytes)`);
    const text = (await handle.readFile({ encoding: 'utf8' })).slice(0, MAX_KEY_FILE_BYTES);
    const parsed = keyFileText.safeParse(text);
    if (!parsed.success) throw new MeshlinkError('ML_ERR_KEY_FILE', `the server key file ${path} is malformed: the key file must hold 64 lower-case hex digits`);
    return Buffer.from(parsed.data.slice(0, 64), 'hex');
  } finally {
    await handle.close();
  }
}
