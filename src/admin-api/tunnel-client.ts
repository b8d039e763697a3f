import { createHash } from 'node:crypto';
import { fsyncPath } from '../util/atomic-file.js';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { WebSocket } from 'ws';
import { OPS_STREAM_PATH, tunnelEventSchema, type ClientEvent, type OpsRequest, type TunnelEvent } from './tunnel.js';
import { zeroMaskingKey } from '../net/ws-mask.js';
import { MeshlinkError } from '../errors.js';

/**
 * The operator's client for streaming operations (the CLI and tests use it): one WebSocket per
 * operation on the admin unix socket. Backpressure both ways: uploads wait while the socket is
 * backed up; downloads stop reading the socket while the local writer is full.
 */

const WS_HIGH_WATER = 1024 * 1024;


export interface TunnelClient {
  readonly ws: WebSocket;
  /** Sends bytes; resolves when the socket can take more (backpressure). */
  send(chunk: Buffer): Promise<void>;
  event(e: ClientEvent): void;
  /** Cancels the operation (the agent stops its work). */
  cancel(): void;
}

export interface TunnelHandlers {
  onOpen?(t: TunnelClient): void;
  onEvent?(e: TunnelEvent, t: TunnelClient): void;
  /** Bytes from the operation; return a promise to hold further reading until it settles. */
  onData?(chunk: Buffer): void | Promise<void>;
}

/**
 * Runs one operation; resolves with the final event (result, exit, done or closed; null for a log tail that
 * ended cleanly, or an operation the client cancelled), rejects with MeshlinkError for an error event or a cut connection.
 */
export function runTunnel(socketPath: string, request: OpsRequest, handlers: TunnelHandlers = {}): Promise<TunnelEvent | null> {
  return new Promise((resolvePromise, reject) => {
    const ws = new WebSocket(`ws+unix://${socketPath}:${OPS_STREAM_PATH}`, { perMessageDeflate: false, maxPayload: 16 * 1024 * 1024, generateMask: zeroMaskingKey });
    let final: TunnelEvent | null = null;
    let failure: MeshlinkError | null = null;
    let cancelled = false;
    const waiters: Array<() => void> = [];
    const client: TunnelClient = {
      ws,
      send(chunk) {
        if (ws.readyState !== ws.OPEN) return Promise.reject(new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the connection to the server closed'));
        ws.send(chunk, { binary: true }, () => {
          if (ws.bufferedAmount < WS_HIGH_WATER) for (const w of waiters.splice(0)) w();
        });
        if (ws.bufferedAmount < WS_HIGH_WATER) return Promise.resolve();
        return new Promise((r) => waiters.push(r));
      },
      event(e) {
        if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(e));
      },
      cancel() {
        cancelled = true;
        if (ws.isPaused) ws.resume();
        ws.close(1000);
      },
    };
    ws.on('open', () => {
      ws.send(JSON.stringify(request));
      handlers.onOpen?.(client);
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        // After a cancel nothing is delivered, and nothing may pause the socket again: it must read
        // the server's close frame, or the close would wait for ws's 30 s timeout.
        if (cancelled) return;
        const p = handlers.onData?.(data);
        if (p) {
          ws.pause();
          p.then(
            () => ws.resume(),
            (err: unknown) => {
              failure = new MeshlinkError('ML_ERR_OPS_IO', (err as Error).message);
              ws.terminate();
            },
          );
        }
        return;
      }
      const parsed = tunnelEventSchema.safeParse(JSON.parse(data.toString('utf8')));
      if (!parsed.success) return;
      const e = parsed.data;
      // The server relays the agent's code: rebuild it from the wire.
      if (e.type === 'error') failure = MeshlinkError.fromWire(e.code, e.message);
      else if (e.type === 'result' || e.type === 'exit' || e.type === 'done' || e.type === 'closed') final = e;
      handlers.onEvent?.(e, client);
    });
    ws.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') failure ??= new MeshlinkError('ML_ERR_SERVER_NOT_RUNNING', `no server answers on ${socketPath}`);
      else failure ??= new MeshlinkError('ML_ERR_OPS_INTERRUPTED', err.message);
    });
    ws.on('close', (code) => {
      for (const w of waiters.splice(0)) w();
      if (failure) reject(failure);
      else if (cancelled) resolvePromise(null);
      else if (code === 1000) resolvePromise(final);
      else reject(new MeshlinkError('ML_ERR_OPS_INTERRUPTED', `the server closed the operation (${code})`));
    });
  });
}

/** Writes to `w`, resolving once it accepts more. */
export function writeTo(w: Writable, chunk: Buffer): Promise<void> | void {
  if (!w.write(chunk)) return new Promise((r) => w.once('drain', () => r()));
}

// ---------------------------------------------------------------- actions, exec, logs

export async function runAction(
  socketPath: string,
  req: Extract<OpsRequest, { op: 'action' }>,
  io: { stdout: Writable; stderr: Writable; onAck?(queued: boolean): void },
): Promise<Extract<TunnelEvent, { type: 'result' }>> {
  const final = await runTunnel(socketPath, req, {
    onData: (c) => writeTo(io.stdout, c),
    onEvent(e) {
      if (e.type === 'stderr') io.stderr.write(Buffer.from(e.data, 'base64'));
      else if (e.type === 'ack') io.onAck?.(e.queued);
    },
  });
  if (!final || final.type !== 'result') throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'no result');
  return final;
}

export async function runExec(
  socketPath: string,
  req: Extract<OpsRequest, { op: 'exec' }>,
  io: { stdin: Readable | null; stdout: Writable; stderr: Writable },
): Promise<Extract<TunnelEvent, { type: 'exit' }>> {
  const final = await runTunnel(socketPath, req, {
    onData: (c) => writeTo(io.stdout, c),
    onEvent(e, t) {
      if (e.type === 'stderr') io.stderr.write(Buffer.from(e.data, 'base64'));
      else if (e.type === 'ack') pumpStdin(io.stdin, t);
    },
  });
  if (!final || final.type !== 'exit') throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'no exit status');
  return final;
}

function pumpStdin(stdin: Readable | null, t: TunnelClient): void {
  if (!stdin) {
    t.event({ type: 'eof' });
    return;
  }
  stdin.on('data', (chunk: Buffer) => {
    stdin.pause();
    t.send(chunk).then(
      () => stdin.resume(),
      () => stdin.destroy(),
    );
  });
  stdin.once('end', () => t.event({ type: 'eof' }));
  stdin.once('error', () => t.event({ type: 'eof' }));
}

/** Tails the agent's log into `out` until it ends or `signal` aborts (which closes the agent's stream). */
export async function tailLogs(socketPath: string, req: Extract<OpsRequest, { op: 'logs' }>, out: Writable, signal?: AbortSignal): Promise<void> {
  await runTunnel(socketPath, req, {
    onOpen(t) {
      if (signal?.aborted) t.cancel();
      else signal?.addEventListener('abort', () => t.cancel(), { once: true });
    },
    onData: (c) => writeTo(out, c),
  });
}

// ---------------------------------------------------------------- file transfer

export interface TransferResult {
  size: number;
  sha256: string;
  /** Offset the last attempt started from (> 0 means it resumed). */
  resumedFrom: number;
  attempts: number;
}

/** Error codes after which another attempt can succeed (the connection or the agent went away). */
const RETRYABLE = new Set(['ML_ERR_OPS_INTERRUPTED', 'ML_ERR_OPS_NODE_OFFLINE', 'ML_ERR_SESSION_CLOSED', 'ML_ERR_HEARTBEAT_TIMEOUT', 'ML_ERR_GOAWAY', 'ML_ERR_CANCELLED', 'ML_ERR_STREAM_RESET']);

export interface RetryPolicy {
  retries: number;
  delayMs: number;
  onRetry?(err: MeshlinkError, attempt: number): void;
}

async function withRetries<T>(policy: RetryPolicy, attempt: (n: number) => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt(n);
    } catch (err) {
      if (!(err instanceof MeshlinkError) || !RETRYABLE.has(err.code) || n > policy.retries) throw err;
      policy.onRetry?.(err, n);
      await new Promise((r) => setTimeout(r, policy.delayMs * Math.min(n, 5)));
    }
  }
}

/**
 * How far a transfer is, for a progress display: the phase, bytes done, and the total when known
 * (a pull learns it only at the end). Called per chunk; the display throttles.
 */
export type TransferProgress = (phase: 'hashing' | 'sending' | 'receiving', done: number, total: number | null) => void;

export async function fileSha256(path: string, onProgress?: TransferProgress, total: number | null = null): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
    onProgress?.('hashing', size, total);
  }
  return { sha256: hash.digest('hex'), size };
}

/** Local file → agent path; resumes from what the agent already holds of this content. */
export async function pushFile(
  socketPath: string,
  req: { node: string; actor: string; local: string; remote: string },
  policy: RetryPolicy = { retries: 0, delayMs: 1000 },
  onProgress?: TransferProgress,
): Promise<TransferResult> {
  const st = await stat(req.local);
  if (!st.isFile()) throw new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', `${req.local} is not a regular file`);
  const { sha256, size } = await fileSha256(req.local, onProgress, st.size);
  let resumedFrom = 0;
  let attempts = 0;
  const final = await withRetries(policy, async () => {
    attempts++;
    return runTunnel(socketPath, { op: 'push', node: req.node, actor: req.actor, path: req.remote, size, sha256 }, {
      onEvent(e, t) {
        if (e.type !== 'resume') return;
        resumedFrom = e.offset;
        void (async () => {
          try {
            let sent = e.offset;
            onProgress?.('sending', sent, size);
            if (e.offset < size) {
              for await (const chunk of createReadStream(req.local, { start: e.offset, end: size - 1, highWaterMark: 256 * 1024 })) {
                await t.send(chunk as Buffer);
                sent += (chunk as Buffer).length;
                onProgress?.('sending', sent, size);
              }
            }
            t.event({ type: 'eof' });
          } catch {
            t.ws.terminate();
          }
        })();
      },
    });
  });
  if (!final || final.type !== 'done' || final.sha256 !== sha256 || final.size !== size) {
    throw new MeshlinkError('ML_ERR_OPS_CHECKSUM', 'the agent did not confirm the content we sent');
  }
  return { size, sha256, resumedFrom, attempts };
}

/**
 * Agent path → local file, written to `.<name>.meshlink-part` next to it and renamed into place only
 * after the SHA-256 matched (fsync before and after). A part left by an interrupted attempt is resumed.
 */
export async function pullFile(
  socketPath: string,
  req: { node: string; actor: string; remote: string; local: string },
  policy: RetryPolicy = { retries: 0, delayMs: 1000 },
  onProgress?: TransferProgress,
): Promise<TransferResult> {
  const target = resolve(req.local);
  const part = join(dirname(target), `.${basename(target)}.meshlink-part`);
  let resumedFrom = 0;
  let attempts = 0;
  const done = await withRetries(policy, async () => {
    attempts++;
    const held = await lstat(part).catch(() => null);
    const offset = held?.isFile() ? held.size : 0;
    const hash = createHash('sha256');
    let from = 0;
    let received = 0;
    let out: ReturnType<typeof createWriteStream> | null = null;
    // Assigned in onEvent; the cast keeps TypeScript from narrowing it to null after runTunnel.
    let starting = null as Promise<void> | null;
    try {
      const final = await runTunnel(socketPath, { op: 'pull', node: req.node, actor: req.actor, path: req.remote, offset }, {
        onEvent(e) {
          if (e.type !== 'resume') return;
          resumedFrom = e.offset;
          from = e.offset;
          starting = (async () => {
            if (e.offset > 0) await hashFile(part, e.offset, hash);
            // Offset 0 after a held part means starting over: 'w' truncates it.
            out = createWriteStream(part, { flags: e.offset > 0 ? 'r+' : 'w', start: e.offset, mode: 0o600, highWaterMark: 1024 * 1024 });
          })();
        },
        async onData(chunk) {
          if (starting) await starting;
          received += chunk.length;
          hash.update(chunk);
          onProgress?.('receiving', from + received, null);
          if (out && !out.write(chunk)) await new Promise<void>((r) => out!.once('drain', () => r()));
        },
      });
      if (starting) await starting;
      await closeWriter(out);
      if (!final || final.type !== 'done') throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the transfer ended without a checksum');
      // Bytes received = size the agent declared, or nothing is committed (whatever the hash says).
      if (from + received !== final.size) {
        await unlink(part).catch(() => {});
        throw new MeshlinkError('ML_ERR_OPS_FILE_CHANGED', `received ${from + received} bytes, the agent declared ${final.size}; nothing was written (run again)`);
      }
      const digest = hash.digest('hex');
      if (digest !== final.sha256) {
        await unlink(part).catch(() => {});
        throw new MeshlinkError('ML_ERR_OPS_CHECKSUM', `received content has SHA-256 ${digest}, the agent sent ${final.sha256}; nothing was written (run again to start over)`);
      }
      return final;
    } catch (err) {
      await closeWriter(out).catch(() => {});
      throw err;
    }
  });
  await fsyncPath(part);
  await rename(part, target);
  await fsyncPath(dirname(target));
  return { size: done.size, sha256: done.sha256, resumedFrom, attempts };
}

function closeWriter(out: ReturnType<typeof createWriteStream> | null): Promise<void> {
  if (!out || out.closed) return Promise.resolve();
  return new Promise((r, reject) => out.end((err?: Error | null) => (err ? reject(err) : r())));
}

async function hashFile(path: string, length: number, hash: ReturnType<typeof createHash>): Promise<void> {
  if (length === 0) return;
  for await (const chunk of createReadStream(path, { start: 0, end: length - 1, highWaterMark: 1024 * 1024 })) hash.update(chunk as Buffer);
}
