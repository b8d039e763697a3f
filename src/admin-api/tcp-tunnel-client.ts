import type { Readable, Writable } from 'node:stream';
import { MeshlinkError } from '../errors.js';
import { runTunnel, writeTo, type TunnelClient } from './tunnel-client.js';
import type { TunnelEvent } from './tunnel.js';

/**
 * The operator's end of one tunnelled TCP connection (`meshlink server tunnel`, its tests and bench):
 * carries the bytes of `input`/`output` (a local TCP socket, or stdin/stdout for --stdio) over one
 * `op: 'tunnel'` operation on the admin socket.
 * - Nothing is read from `input` until the agent has connected to the target (`ack`).
 * - Backpressure: `input` is sent only within the server's credit (and paused while the WebSocket is
 *   backed up); the WebSocket is not read while `output` is full, which stops the server reading the
 *   agent's stream, so the agent's window, not memory, absorbs a slow local reader.
 * - FIN both ways: the end of `input` is sent as `eof`; the target's `eof` ends `output`.
 * - Reset: an error on either end, or `input` closing before its end (a local connection reset),
 *   cancels the operation, and the server
 *   resets the agent's stream; an error from the server (refused, target reset) rejects, and the
 *   caller resets its local connection.
 */

export interface TcpTunnelRequest {
  node: string;
  actor: string;
  host: string;
  port: number;
}

export interface TcpTunnelEnds {
  input: Readable;
  output: Writable;
}

export type TunnelClosed = Extract<TunnelEvent, { type: 'closed' }>;

/** Resolves with the byte counts once both directions finished; null if the local side reset (cancel). */
export async function carryConnection(socketPath: string, req: TcpTunnelRequest, ends: TcpTunnelEnds): Promise<TunnelClosed | null> {
  const { input, output } = ends;
  input.pause();
  const credit = new Credit();
  let local: Error | null = null;
  let tunnel: TunnelClient | null = null;
  const cut = (err: Error): void => {
    local ??= err;
    tunnel?.cancel();
  };
  input.on('error', cut);
  if ((output as unknown) !== input) output.on('error', cut);
  // Destroyed before its end (a local reset, the caller cutting it): as good as an error.
  input.once('close', () => {
    if (!input.readableEnded) cut(new Error('the local connection closed'));
  });
  const final = await runTunnel(socketPath, { op: 'tunnel', ...req }, {
    onOpen(t) {
      tunnel = t;
      if (local) t.cancel();
    },
    onEvent(e, t) {
      if (e.type === 'ack') pump(input, t, credit);
      else if (e.type === 'credit') credit.grant(e.bytes);
      else if (e.type === 'eof') output.end();
    },
    onData: (c) => (output.destroyed ? undefined : writeTo(output, c)),
  });
  if (local) return null;
  if (!final || final.type !== 'closed') throw new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the tunnel ended without closing both ways');
  return final;
}

/** What the server lets us send (its `credit` events); `take` waits for some. */
class Credit {
  #bytes = 0;
  #waiter: (() => void) | null = null;

  grant(bytes: number): void {
    this.#bytes += bytes;
    this.#waiter?.();
    this.#waiter = null;
  }

  /** Up to `want` bytes of credit, once there is any. */
  async take(want: number): Promise<number> {
    while (this.#bytes === 0) await new Promise<void>((r) => (this.#waiter = r));
    const n = Math.min(want, this.#bytes);
    this.#bytes -= n;
    return n;
  }
}

function pump(input: Readable, t: TunnelClient, credit: Credit): void {
  const sendAll = async (chunk: Buffer): Promise<void> => {
    for (let off = 0; off < chunk.length; ) {
      const n = await credit.take(chunk.length - off);
      await t.send(chunk.subarray(off, off + n));
      off += n;
    }
  };
  // 'end' may come while the last chunk still waits for credit: the eof goes after it.
  let sending: Promise<void> = Promise.resolve();
  input.on('data', (chunk: Buffer) => {
    input.pause();
    sending = sendAll(chunk).then(
      () => void input.resume(),
      () => void input.destroy(),
    );
  });
  input.once('end', () => void sending.then(() => t.event({ type: 'eof' })));
  input.resume();
}
