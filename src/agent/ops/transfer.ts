import { createHash, type Hash } from 'node:crypto';
import { fsyncPath } from '../../util/atomic-file.js';
import { constants, createReadStream, createWriteStream } from 'node:fs';
import { lstat, open, realpath, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path';
import type { PayloadOf } from '../../protocol/registry.js';
import type { Session } from '../../protocol/session.js';
import type { MuxStream } from '../../protocol/stream.js';
import type { AuditReporter } from './audit.js';
import { errorMessage, wireCode } from './errors.js';
import type { OpsOptions } from './options.js';
import { MeshlinkError } from '../../errors.js';

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
 * pull (agent → server): the agent answers with the resume point it will start from (the requested
 * offset, or 0 if the file is now shorter), sends the bytes and then file.done with the size and the
 * SHA-256 of the whole file (the prefix the receiver already holds included).
 *
 * Only paths inside a --transfer-dir (after resolving symlinks of the directory) are allowed, and only
 * regular files; with no --transfer-dir every transfer is refused.
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

  /** The real path for `path` if it is inside an allowed directory. */
  async allowedPath(path: string): Promise<string> {
    if (this.opts.transferDirs.length === 0) {
      throw new MeshlinkError('ML_ERR_OPS_TRANSFER_DISABLED', 'file transfer is disabled on this agent; start it with --transfer-dir DIR');
    }
    if (!isAbsolute(path)) throw new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', `the path must be absolute: ${path}`);
    const wanted = resolve(path);
    let parent: string;
    try {
      parent = await realpath(dirname(wanted));
    } catch {
      throw new MeshlinkError('ML_ERR_OPS_NOT_FOUND', `directory ${dirname(wanted)} does not exist`);
    }
    const full = join(parent, basename(wanted));
    for (const dir of this.opts.transferDirs) {
      const real = await realpath(dir).catch(() => null);
      if (real !== null && (full.startsWith(real + sep) || (real === sep && full !== sep))) return full;
    }
    throw new MeshlinkError('ML_ERR_OPS_PATH_FORBIDDEN', `${path} is not inside an allowed transfer directory`);
  }

  async #push(stream: MuxStream, session: Session, req: PayloadOf<'file.open'>): Promise<number> {
    if (req.size === undefined || req.sha256 === undefined) throw new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', 'a push needs size and sha256');
    const { size, sha256 } = req;
    const target = await this.allowedPath(req.path);
    const existing = await lstat(target).catch(() => null);
    if (existing && !existing.isFile()) throw new MeshlinkError('ML_ERR_OPS_PATH_FORBIDDEN', `${req.path} exists and is not a regular file`);
    const part = join(dirname(target), `.${basename(target)}.${sha256.slice(0, 16)}${PART_SUFFIX}`);
    const held = await lstat(part).catch(() => null);
    let offset = held && held.isFile() && held.size <= size ? held.size : 0;
    if (held && offset === 0) await unlink(part).catch(() => {});
    if (stream.state !== 'opening') throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the stream went away');

    const hash = createHash('sha256');
    if (offset > 0) offset = await hashPrefix(part, offset, hash);
    session.accept(stream);
    stream.sendMessage('file.chunk', { offset, data: EMPTY });

    const out = createWriteStream(part, { flags: offset > 0 ? 'r+' : 'w', start: offset, mode: 0o600, highWaterMark: 1024 * 1024 });
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
        if (received > size) {
          stream.destroy(new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', `more than the announced ${size} bytes`));
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

    const digest = hash.digest('hex');
    const d = declared as PayloadOf<'file.done'> | null;
    if (received !== size || digest !== sha256 || !d || d.sha256 !== sha256 || d.size !== size) {
      await unlink(part).catch(() => {});
      throw new MeshlinkError('ML_ERR_OPS_CHECKSUM', `received ${received} of ${size} bytes with SHA-256 ${digest}; expected ${sha256}. Nothing was written`);
    }
    await fsyncPath(part);
    await rename(part, target);
    await fsyncPath(dirname(target));
    stream.sendMessage('file.done', { size, sha256 });
    stream.end();
    return size;
  }

  async #pull(stream: MuxStream, session: Session, req: PayloadOf<'file.open'>): Promise<number> {
    const path = await this.allowedPath(req.path);
    let fh: FileHandle;
    try {
      fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new MeshlinkError('ML_ERR_OPS_NOT_FOUND', `${req.path} does not exist`);
      if (code === 'ELOOP') throw new MeshlinkError('ML_ERR_OPS_PATH_FORBIDDEN', `${req.path} is a symbolic link`);
      throw err;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new MeshlinkError('ML_ERR_OPS_PATH_FORBIDDEN', `${req.path} is not a regular file`);
      const size = st.size;
      const start = (req.offset ?? 0) <= size ? (req.offset ?? 0) : 0;
      if (stream.state !== 'opening') throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the stream went away');
      session.accept(stream);
      stream.resume();
      stream.sendMessage('file.chunk', { offset: start, data: EMPTY });
      const hash = createHash('sha256');
      if (start > 0) await hashRange(fh, 0, start, hash);
      if (size > start) {
        const src = createReadStream('', { fd: fh, start, end: size - 1, autoClose: false, highWaterMark: 256 * 1024 });
        await new Promise<void>((resolveDone, reject) => {
          src.on('data', (chunk) => {
            hash.update(chunk as Buffer);
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
      stream.sendMessage('file.done', { size, sha256: hash.digest('hex') });
      stream.end();
      return size - start;
    } finally {
      await fh.close();
    }
  }
}

/** Hashes the first `length` bytes of `path` into `hash`; returns how many it really had. */
async function hashPrefix(path: string, length: number, hash: Hash): Promise<number> {
  const fh = await open(path, 'r');
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
