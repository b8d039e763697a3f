import { createHash, type Hash } from 'node:crypto';
import { constants, createReadStream, createWriteStream, type Stats } from 'node:fs';
import { lstat, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import type { PayloadOf } from '../../protocol/registry.js';
import type { Session } from '../../protocol/session.js';
import type { MuxStream } from '../../protocol/stream.js';
import type { AuditReporter } from './audit.js';
import { errorMessage, wireCode } from './errors.js';
import type { OpsOptions } from './options.js';
import { MeshlinkError } from '../../errors.js';
import { openParentBeneath, openRegularForRead, type HeldParent } from './beneath.js';

/**
 * file.open streams, agent side (docs/OPERATIONS.md, "File transfer").
 *
 * push (server → agent): the agent answers the open with a resume point, a file.chunk with no data
 * whose offset is how many bytes of this exact content (named by its SHA-256) it already holds in
 * `.<name>.<sha256[0:16]>.meshlink-part` next to the target. The sender sends the rest as stream
 * bytes and file.done {size, sha256}. The agent hashes everything (held prefix included), and only
 * if size and SHA-256 match does it fsync, rename the part over the target and fsync the directory;
 * then it confirms with file.done. A dropped connection leaves the part for the next attempt.
 *
 * A push over an existing file keeps its owner, group and mode; a new file is 0600, the agent's.
 *
 * pull (agent → server): the agent answers with the resume point it will start from (the requested
 * offset, or 0 if the file is now shorter), sends the bytes and then file.done with the size and the
 * SHA-256 of the whole file (the prefix the receiver already holds included). It sends file.done only
 * if it sent exactly the size the file had at the open and still has: a file that shrinks or grows
 * during the pull fails with ML_ERR_OPS_FILE_CHANGED instead.
 *
 * Only paths beneath a --transfer-dir, resolved through held directory descriptors that follow no
 * link (beneath.ts), and only regular files (for a pull, with one hard link); with no --transfer-dir
 * every transfer is refused.
 */

const PART_SUFFIX = '.meshlink-part';
const EMPTY = new Uint8Array(0);

export class TransferService {
  #active = 0;
  constructor(
    private readonly opts: OpsOptions,
    private readonly audit: AuditReporter,
  ) {}

  get active(): number {
    return this.#active;
  }

  handle(stream: MuxStream, session: Session): void {
    const req = stream.metaOf('file.open');
    const work = req.direction === 'push' ? this.#push(stream, session, req) : this.#pull(stream, session, req);
    this.#active++;
    work
      .then(
        (size) => this.audit.record({ action: `file.${req.direction}`, target: req.path, result: 'ok', details: { size } }),
        (err: unknown) => {
          const code = wireCode(err);
          this.audit.record({ action: `file.${req.direction}`, target: req.path, result: code, details: { message: errorMessage(err) } });
          if (stream.state === 'opening') session.reject(stream, code, errorMessage(err));
          else if (!stream.destroyed) stream.destroy(err instanceof MeshlinkError ? err : new MeshlinkError(code as 'ML_ERR_OPS_IO', errorMessage(err)));
        },
      )
      .finally(() => this.#active--);
  }

  async #push(stream: MuxStream, session: Session, req: PayloadOf<'file.open'>): Promise<number> {
    if (req.size === undefined || req.sha256 === undefined) throw new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', 'a push needs size and sha256');
    const parent = await openParentBeneath(this.opts.transferDirs, req.path);
    try {
      return await this.#pushInto(parent, stream, session, req as PayloadOf<'file.open'> & { size: number; sha256: string });
    } finally {
      await parent.close();
    }
  }

  async #pushInto(parent: HeldParent, stream: MuxStream, session: Session, req: PayloadOf<'file.open'> & { size: number; sha256: string }): Promise<number> {
    const { size, sha256 } = req;
    // Every name below is looked up in the held directory, never by path (beneath.ts).
    const target = parent.at(parent.name);
    const existing = await lstat(target).catch(() => null);
    if (existing && !existing.isFile()) throw new MeshlinkError('ML_ERR_OPS_PATH_FORBIDDEN', `${req.path} exists and is not a regular file`);
    const part = parent.at(`.${parent.name}.${sha256.slice(0, 16)}${PART_SUFFIX}`);
    const held = await lstat(part).catch(() => null);
    let offset = held && held.isFile() && held.size <= size ? held.size : 0;
    if (held && offset === 0) await unlink(part).catch(() => {});
    if (stream.state !== 'opening') throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the stream went away');

    const hash = createHash('sha256');
    // O_NOFOLLOW: a symlink planted under the part's name is refused, not written through.
    const fh = await open(part, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW | (offset > 0 ? 0 : constants.O_TRUNC), 0o600).catch((err: NodeJS.ErrnoException) => {
      throw new MeshlinkError(err.code === 'ELOOP' ? 'ML_ERR_OPS_PATH_FORBIDDEN' : 'ML_ERR_OPS_IO', `opening the part file of ${req.path}: ${err.message}`);
    });
    try {
      if (offset > 0) offset = await hashPrefix(part, offset, hash);
      session.accept(stream);
      stream.sendMessage('file.chunk', { offset, data: EMPTY });
      const received = await receiveInto(fh, offset, stream, hash, req);
      const digest = hash.digest('hex');
      const d = received.declared;
      if (received.bytes !== size || digest !== sha256 || !d || d.sha256 !== sha256 || d.size !== size) {
        await unlink(part).catch(() => {});
        throw new MeshlinkError('ML_ERR_OPS_CHECKSUM', `received ${received.bytes} of ${size} bytes with SHA-256 ${digest}; expected ${sha256}. Nothing was written`);
      }
      if (existing) await keepOwnerAndMode(fh, existing, req.path, () => unlink(part).catch(() => {}));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(part, target);
    await parent.dir.sync();
    stream.sendMessage('file.done', { size, sha256 });
    stream.end();
    return size;
  }

  async #pull(stream: MuxStream, session: Session, req: PayloadOf<'file.open'>): Promise<number> {
    const parent = await openParentBeneath(this.opts.transferDirs, req.path);
    let opened: { fh: FileHandle; st: Stats };
    try {
      opened = await openRegularForRead(parent, req.path);
    } finally {
      await parent.close();
    }
    const { fh, st } = opened;
    try {
      const size = st.size;
      const start = (req.offset ?? 0) <= size ? (req.offset ?? 0) : 0;
      if (stream.state !== 'opening') throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the stream went away');
      session.accept(stream);
      stream.resume();
      stream.sendMessage('file.chunk', { offset: start, data: EMPTY });
      const hash = createHash('sha256');
      if (start > 0 && (await hashRange(fh, 0, start, hash)) !== start) throw changed(req.path, size);
      let sent = 0;
      if (size > start) {
        const src = createReadStream('', { fd: fh, start, end: size - 1, autoClose: false, highWaterMark: 256 * 1024 });
        await new Promise<void>((resolveDone, reject) => {
          src.on('data', (chunk) => {
            hash.update(chunk as Buffer);
            sent += (chunk as Buffer).length;
            stream.write(chunk);
            // Pause past ~1 MiB queued, not after every 64 KiB chunk (write() is false past 64 KiB).
            if (stream.writableLength > 1024 * 1024) {
              src.pause();
              stream.once('drain', () => src.resume());
            }
          });
          src.once('end', resolveDone);
          src.once('error', reject);
          stream.once('close', () => {
            src.destroy();
            reject(new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the stream closed during the transfer'));
          });
        });
      }
      if (stream.destroyed || stream.writableEnded) throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the stream closed during the transfer');
      // Bytes sent = declared size, or no file.done: a file that shrank ends the read early, one that
      // grew has more than we declared (we read only up to the size we announced).
      if (start + sent !== size || (await fh.stat()).size !== size) throw changed(req.path, size);
      stream.sendMessage('file.done', { size, sha256: hash.digest('hex') });
      stream.end();
      return size - start;
    } finally {
      await fh.close();
    }
  }
}

function changed(path: string, size: number): MeshlinkError {
  return new MeshlinkError('ML_ERR_OPS_FILE_CHANGED', `${path} changed size while it was read (it had ${size} bytes when the pull started); nothing was committed, pull again`);
}

/** Writes the stream's bytes at `offset` into `fh` until END_STREAM; returns the total and the sender's file.done. */
async function receiveInto(
  fh: FileHandle,
  offset: number,
  stream: MuxStream,
  hash: Hash,
  req: { path: string; size: number },
): Promise<{ bytes: number; declared: PayloadOf<'file.done'> | null }> {
  // The numeric fd, not the FileHandle: a WriteStream on a FileHandle keeps a reference on it that makes
  // a later fh.close() wait forever (Node 20), and the caller still syncs, chmods and closes it.
  const out = createWriteStream('', { fd: fh.fd, start: offset, autoClose: false, highWaterMark: 1024 * 1024 });
  let received = offset;
  let declared: PayloadOf<'file.done'> | null = null;
  stream.on('message', (m) => {
    if (m.name === 'file.done') declared = m.payload;
  });
  await new Promise<void>((resolveDone, reject) => {
    out.once('error', (err) => {
      stream.destroy(new MeshlinkError('ML_ERR_OPS_IO', `writing ${req.path}: ${err.message}`));
      reject(new MeshlinkError('ML_ERR_OPS_IO', `writing ${req.path}: ${err.message}`));
    });
    stream.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received > req.size) {
        stream.destroy(new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', `more than the announced ${req.size} bytes`));
        return;
      }
      hash.update(chunk);
      if (!out.write(chunk)) {
        stream.pause();
        out.once('drain', () => stream.resume());
      }
    });
    stream.once('error', (err) => {
      out.end(); // keep what arrived: the next attempt resumes from it
      reject(err);
    });
    stream.once('end', () => out.end(() => resolveDone()));
  });
  return { bytes: received, declared };
}

/**
 * A push replaces the file but keeps what the operator set on it: its owner and group, then its mode
 * (chown clears set-id bits, so chmod comes second). An agent that may not give the file its owner
 * (not root) refuses rather than silently changing who owns it. New files are 0600, the agent's.
 */
async function keepOwnerAndMode(fh: FileHandle, was: Stats, shown: string, discard: () => Promise<unknown>): Promise<void> {
  try {
    const mine = await fh.stat();
    if (mine.uid !== was.uid || mine.gid !== was.gid) await fh.chown(was.uid, was.gid);
    await fh.chmod(was.mode & 0o7777);
  } catch (err) {
    await discard();
    throw new MeshlinkError('ML_ERR_OPS_IO', `cannot keep the owner ${was.uid}:${was.gid} and mode ${(was.mode & 0o7777).toString(8)} of ${shown} (${(err as Error).message}); nothing was written`);
  }
}

/** Hashes the first `length` bytes of `path` into `hash`; returns how many it really had. */
async function hashPrefix(path: string, length: number, hash: Hash): Promise<number> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    return await hashRange(fh, 0, length, hash);
  } finally {
    await fh.close();
  }
}

async function hashRange(fh: FileHandle, start: number, end: number, hash: Hash): Promise<number> {
  const buf = Buffer.allocUnsafe(1024 * 1024);
  let pos = start;
  while (pos < end) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos);
    if (bytesRead === 0) break;
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return pos - start;
}
