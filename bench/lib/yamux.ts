/**
 * @chainsafe/libp2p-yamux 7 over a TLS socket, for bench/mux-compare.ts: the adapters libp2p would
 * otherwise bring (the socket as the muxer's source and sink), a silent logger, and a small async
 * queue to feed a stream's sink on demand. The muxer runs with its defaults (256 KiB initial stream
 * window, auto-tuned up to 16 MiB, 64 KiB messages).
 */
import { once } from 'node:events';
import type { TLSSocket } from 'node:tls';
import { yamux } from '@chainsafe/libp2p-yamux';
import type { ComponentLogger, Logger, Stream, StreamMuxer } from '@libp2p/interface';
import type { Uint8ArrayList } from 'uint8arraylist';

function silent(): Logger {
  const log = Object.assign(() => {}, { error: () => {}, trace: () => {}, enabled: false, newScope: () => log }) as Logger;
  return log;
}
const logger: ComponentLogger = { forComponent: () => silent() };

/** The first byte of every yamux stream the bench opens: what the receiver does with it. */
export const TAG_SINK = 0x53; // 'S': count the bytes, answer the count
export const TAG_ECHO = 0x45; // 'E': write every byte back

/** A muxer over `socket`; `onStream` receives the peer's streams. */
export function yamuxOver(socket: TLSSocket, direction: 'inbound' | 'outbound', onStream?: (stream: Stream) => void): StreamMuxer {
  socket.setNoDelay(true);
  const muxer = yamux()({ logger }).createStreamMuxer({ direction, ...(onStream ? { onIncomingStream: onStream } : {}) });
  const fromSocket = async function* (): AsyncGenerator<Uint8Array> {
    for await (const c of socket) yield c as Buffer;
  };
  void Promise.resolve(muxer.sink(fromSocket())).catch(() => {});
  void (async () => {
    for await (const chunk of muxer.source) {
      let ok = true;
      if (chunk instanceof Uint8Array) ok = socket.write(chunk);
      else for (const part of (chunk as Uint8ArrayList)) ok = socket.write(part);
      if (!ok && !socket.destroyed) await once(socket, 'drain');
    }
  })().catch(() => {});
  return muxer;
}

/** An async queue: `push` values, `end`, and hand `iterable` to a stream's sink. */
export class Queue<T> {
  #items: T[] = [];
  #ended = false;
  #wake: (() => void) | undefined;
  push(v: T): void {
    this.#items.push(v);
    this.#wake?.();
  }
  end(): void {
    this.#ended = true;
    this.#wake?.();
  }
  async *iterable(): AsyncGenerator<T> {
    for (;;) {
      while (this.#items.length > 0) yield this.#items.shift()!;
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}
