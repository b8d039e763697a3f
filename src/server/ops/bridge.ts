import type { Readable, Writable } from 'node:stream';
import type { WebSocket } from 'ws';

/**
 * Backpressure between the operator's WebSocket and an agent stream, in both directions, so that
 * neither the server nor the CLI ever holds more than about a window of an operation's bytes.
 */

/** Bytes queued on the WebSocket above which the source stream is paused. */
const WS_HIGH_WATER = 1024 * 1024;

/**
 * The operator's WebSocket as the destination of one agent stream: the stream's bytes (binary
 * messages) and the events made from its typed messages (exec.stderr, action.output, file.chunk:
 * text messages) go through `send`, under one rule: while the socket holds more than WS_HIGH_WATER
 * unsent, the stream is paused. A paused MuxStream hands over neither data nor typed messages, so it
 * returns no credit, and the agent stops sending (PROTOCOL.md §6.5): a slow or stopped operator
 * costs the server about a window plus WS_HIGH_WATER per operation, never the agent's whole output.
 */
export class PacedSocket {
  #waiting = false;
  constructor(
    private readonly ws: WebSocket,
    private readonly src: Readable,
  ) {}

  send(data: Buffer | string): void {
    const ws = this.ws;
    if (ws.readyState !== ws.OPEN) return;
    ws.send(data, { binary: typeof data !== 'string' }, () => {
      if (this.#waiting && ws.bufferedAmount < WS_HIGH_WATER / 2) {
        this.#waiting = false;
        this.src.resume();
      }
    });
    if (ws.bufferedAmount > WS_HIGH_WATER && !this.#waiting) {
      this.#waiting = true;
      this.src.pause();
    }
  }
}

/** Copies `src` into binary WebSocket messages; pauses `src` while the socket is backed up. */
export function pipeReadableToWs(src: Readable, ws: WebSocket): PacedSocket {
  const paced = new PacedSocket(ws, src);
  src.on('data', (chunk: Buffer) => paced.send(chunk));
  return paced;
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
