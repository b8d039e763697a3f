import { constants, existsSync, type Stats } from 'node:fs';
import { open, realpath, type FileHandle } from 'node:fs/promises';
import { isAbsolute, normalize, sep } from 'node:path';
import { MeshlinkError } from '../../errors.js';

/**
 * Path resolution beneath a held directory descriptor, without following symbolic links: what
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) does, for a runtime that has no openat.
 *
 * Why: checking a path with realpath() and then using it by name is a race. A local user who can write
 * inside a transfer directory swaps a subdirectory for a symlink between the check and the use, and
 * the agent (root) reads or writes outside the directory (issue 17, item 10).
 *
 * How: the walk opens the transfer directory, then each component of the rest of the path with
 * O_DIRECTORY | O_NOFOLLOW *relative to the previous directory's descriptor*. Node has no openat, but
 * Linux gives one through procfs: `/proc/self/fd/N` is a magic link that the kernel resolves to the
 * open file N itself (the very inode, wherever it now is), not by re-walking the path it was opened
 * by. So `open("/proc/self/fd/N/name", O_NOFOLLOW)` looks `name` up in the directory N refers to, and
 * O_NOFOLLOW refuses `name` if it is a symlink (ELOOP); O_DIRECTORY refuses anything but a directory.
 * test/agent/beneath.test.ts checks this claim: after the original path of N is replaced by a symlink
 * elsewhere, a lookup through N still lands in N's directory.
 *
 * Rules: the path must be absolute and, lexically after normalisation (so `..` cannot climb), inside a
 * transfer directory as configured or as its realpath (the configured directory itself is the
 * operator's and may be a symlink). Every component beneath it must be a real directory; the final one
 * is returned as a name in the held parent, which callers open with O_NOFOLLOW, rename or unlink
 * through `at()`, so no step ever follows a link beneath the transfer directory.
 *
 * Limits (docs/OPERATIONS.md, "File transfer"):
 * - Linux only (procfs mounted at /proc); elsewhere transfers are refused, not done unsafely.
 * - A descriptor pins a directory, not its place: if a local user *moves* a directory the walk already
 *   holds out of the transfer tree (which needs write access to both places), the operation completes
 *   in that directory where it now is. openat2's RESOLVE_BENEATH has the same limit; it prevents
 *   following links, which is the attack (a symlink needs no rights at the target).
 * - Each walk costs one open per component; paths are capped at 64 components.
 */

const PROC_FD = '/proc/self/fd';
const MAX_COMPONENTS = 64;
/** An open that must not follow a final symlink, nor block on a FIFO, nor make a tty ours. */
const NO_FOLLOW = constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;
const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | NO_FOLLOW;

/** A directory beneath a transfer directory, held open, and the final name the request asked for. */
export interface HeldParent {
  /** The held directory; fsync it after a rename. */
  readonly dir: FileHandle;
  /** The final component of the request (never empty, `.` or `..`). */
  readonly name: string;
  /** A path naming `entry` in the held directory itself (through its descriptor), not by its old path. */
  at(entry: string): string;
  close(): Promise<void>;
}

function procFdAvailable(): boolean {
  return existsSync(PROC_FD);
}

function forbidden(message: string): MeshlinkError {
  return new MeshlinkError('ML_ERR_OPS_PATH_FORBIDDEN', message);
}

/** The components of `path` beneath one of `roots` (configured and real), or null if none holds it. */
async function split(roots: readonly string[], path: string): Promise<{ root: string; parts: string[] } | null> {
  const wanted = normalize(path);
  for (const configured of roots) {
    const candidates = new Set([configured]);
    const real = await realpath(configured).catch(() => null);
    if (real !== null) candidates.add(real);
    for (const root of candidates) {
      const prefix = root.endsWith(sep) ? root : root + sep;
      if (wanted.startsWith(prefix)) return { root, parts: wanted.slice(prefix.length).split(sep).filter((p) => p !== '') };
    }
  }
  return null;
}

/** Opens `name` in the directory `dirFd` refers to, as a directory, following no link. */
async function openDirAt(dirFd: number, name: string, shown: string): Promise<FileHandle> {
  try {
    return await open(`${PROC_FD}/${dirFd}/${name}`, DIR_FLAGS);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new MeshlinkError('ML_ERR_OPS_NOT_FOUND', `directory ${shown} does not exist`);
    if (code === 'ELOOP' || code === 'ENOTDIR') throw forbidden(`${shown} is a symbolic link or not a directory; transfers never follow links beneath a --transfer-dir`);
    throw new MeshlinkError('ML_ERR_OPS_IO', `opening ${shown}: ${(err as Error).message}`);
  }
}

/**
 * Walks to the parent directory of `path` beneath one of `roots` and holds it open. Throws
 * ML_ERR_OPS_TRANSFER_DISABLED (no roots), ML_ERR_OPS_BAD_REQUEST (relative), ML_ERR_OPS_PATH_FORBIDDEN
 * (outside, through a link, or the directory itself), ML_ERR_OPS_NOT_FOUND (a missing directory).
 */
export async function openParentBeneath(roots: readonly string[], path: string): Promise<HeldParent> {
  if (roots.length === 0) {
    throw new MeshlinkError('ML_ERR_OPS_TRANSFER_DISABLED', 'file transfer is disabled on this agent; start it with --transfer-dir DIR');
  }
  if (!isAbsolute(path)) throw new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', `the path must be absolute: ${path}`);
  if (!procFdAvailable()) throw forbidden(`transfers need /proc (Linux) to resolve paths safely beneath a --transfer-dir; refusing ${path}`);
  const found = await split(roots, path);
  if (found === null) throw forbidden(`${path} is not inside an allowed transfer directory`);
  const name = found.parts.pop();
  if (name === undefined) throw forbidden(`${path} is a transfer directory itself, not a file in it`);
  if (found.parts.length >= MAX_COMPONENTS) throw new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', `${path} has more than ${MAX_COMPONENTS} components`);

  let dir: FileHandle;
  try {
    // The transfer directory itself is the operator's choice: it may be reached through links.
    dir = await open(found.root, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch {
    throw new MeshlinkError('ML_ERR_OPS_NOT_FOUND', `transfer directory ${found.root} does not exist`);
  }
  let shown = found.root;
  try {
    for (const part of found.parts) {
      shown = `${shown}${shown.endsWith(sep) ? '' : sep}${part}`;
      const next = await openDirAt(dir.fd, part, shown);
      await dir.close();
      dir = next;
    }
  } catch (err) {
    await dir.close().catch(() => {});
    throw err;
  }
  const held = dir;
  return {
    dir: held,
    name,
    at: (entry) => `${PROC_FD}/${held.fd}/${entry}`,
    close: () => held.close(),
  };
}

/**
 * Opens the final name of `parent` for reading, refusing a symlink (O_NOFOLLOW), anything but a
 * regular file, and a file with more than one hard link: a hard link needs no rights on the file it
 * names, so one inside the transfer directory could expose any file on the volume (/etc/shadow).
 */
export async function openRegularForRead(parent: HeldParent, shown: string): Promise<{ fh: FileHandle; st: Stats }> {
  let fh: FileHandle;
  try {
    fh = await open(parent.at(parent.name), constants.O_RDONLY | NO_FOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new MeshlinkError('ML_ERR_OPS_NOT_FOUND', `${shown} does not exist`);
    if (code === 'ELOOP') throw forbidden(`${shown} is a symbolic link`);
    throw new MeshlinkError('ML_ERR_OPS_IO', `opening ${shown}: ${(err as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw forbidden(`${shown} is not a regular file`);
    if (st.nlink > 1) throw forbidden(`${shown} has ${st.nlink} hard links; pulls of hard-linked files are refused (one could name a file outside the transfer directory)`);
    return { fh, st };
  } catch (err) {
    await fh.close().catch(() => {});
    throw err;
  }
}
