import type { Readable, Writable } from 'node:stream';
import type { WebSocket } from 'ws';

/**
 * Backpressure between the operator's WebSocket and an agent stream, in both directions, so that
 * neither the server nor the CLI ever holds more than about a window of an operation's bytes.
 */

/** Bytes queued on the WebSocket above which the source stream is paused. */
const WS_HIGH_WATER = 1024 * 1024;

/** Copies `src` into binary WebSocket messages; pauses `src` while the socket is backed up. */
export function pipeReadableToWs(src: Readable, ws: WebSocket): void {
  let waiting = false;
  src.on('data', (chunk: Buffer) => {
    if (ws.readyState !== ws.OPEN) return;
    ws.send(chunk, { binary: true }, () => {
      if (waiting && ws.bufferedAmount < WS_HIGH_WATER / 2) {
        waiting = false;
        src.resume();
      }
    });
    if (ws.bufferedAmount > WS_HIGH_WATER && !waiting) {
      waiting = true;
      src.pause();
    }
  });
}

/** Bytes buffered in the destination above which the socket stops being read (a few chunks, not one). */
const WRITE_HIGH_WATER = 1024 * 1024;

/** Writes one binary WebSocket message into `dst`; stops reading the socket until `dst` drains. */
export function writeFromWs(ws: WebSocket, dst: Writable, chunk: Buffer): void {
  if (dst.destroyed || dst.writableEnded) return;
  dst.write(chunk);
  // write() says false past the stream's high-water mark (256 KiB), i.e. after a few chunks: pausing
  // there would cost a round of socket pause/resume every few messages. Memory stays bounded by
  // WRITE_HIGH_WATER.
  if (dst.writableLength > WRITE_HIGH_WATER && !ws.isPaused) {
    ws.pause();
    dst.once('drain', () => ws.resume());
  }
}
