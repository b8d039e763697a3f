import type { Socket } from 'node:net';
import { MeshlinkError } from '../../errors.js';
import type { MuxStream } from '../../protocol/stream.js';

/**
 * Joins an accepted tunnel.open stream and the TCP connection to its target, both ways:
 * - bytes: pipe(), so each side pauses its source while the other's buffer is full. The stream stops
 *   returning credit while the socket is backed up, so the server's window bounds what the agent
 *   holds; the socket stops being read while the stream waits for credit.
 * - half-close: the target's FIN ends the stream (END_STREAM), the stream's END_STREAM ends the
 *   socket (FIN); the other direction keeps flowing (the socket allows half-open).
 * - reset: a socket error (a reset target) resets the stream with ML_ERR_TUNNEL_RESET; a reset or lost
 *   stream resets the socket (RST, not FIN, so the target sees the connection was cut, not finished).
 * Resolves when both are closed, with the bytes each way and how it ended.
 */
export interface SpliceResult {
  readonly toTarget: number;
  readonly fromTarget: number;
  /** 'ok', or the error code that ended it. */
  readonly result: string;
}

export function splice(stream: MuxStream, socket: Socket): Promise<SpliceResult> {
  let toTarget = 0;
  let fromTarget = 0;
  let result = 'ok';
  stream.on('data', (c: Buffer) => (toTarget += c.length));
  socket.on('data', (c: Buffer) => (fromTarget += c.length));
  stream.pipe(socket);
  socket.pipe(stream);
  socket.on('error', (err: NodeJS.ErrnoException) => {
    if (result === 'ok') result = 'ML_ERR_TUNNEL_RESET';
    stream.destroy(new MeshlinkError('ML_ERR_TUNNEL_RESET', `the target's connection failed: ${err.code ?? err.message}`));
  });
  stream.on('error', (err: Error) => {
    if (result === 'ok') result = err instanceof MeshlinkError ? ((err as { resetCode?: string }).resetCode ?? err.code) : 'ML_ERR_INTERNAL';
    if (!socket.destroyed) socket.resetAndDestroy();
  });
  const closed = (e: Socket | MuxStream): Promise<void> => new Promise((r) => (e.destroyed && e.closed ? r() : e.once('close', () => r())));
  // A stream that closes without an error after both ends finished is the clean case; one that
  // closed early (the session went away) must take the socket with it.
  stream.once('close', () => {
    if (!socket.destroyed && !(stream.readableEnded && stream.writableFinished)) socket.resetAndDestroy();
  });
  return Promise.all([closed(stream), closed(socket)]).then(() => ({ toTarget, fromTarget, result }));
}
