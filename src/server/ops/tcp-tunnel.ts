import { MeshlinkError } from '../../errors.js';
import type { MuxStream } from '../../protocol/stream.js';
import { pipeReadableToWs } from './bridge.js';
import { describeError, type Tunnel } from './tunnel.js';

/**
 * The server's relay of one tunnelled TCP connection (`op: 'tunnel'`): the operator's WebSocket on
 * one side, the agent's accepted tunnel.open stream on the other.
 * - Bytes toward the client: bridge.ts, which stops reading the stream (so returns no credit to the
 *   agent) while the WebSocket is backed up.
 * - Bytes toward the agent: credit (`credit` events), not a paused WebSocket. The client may have
 *   CLIENT_CREDIT bytes in the server at once; a chunk's credit comes back once the stream has handed
 *   it to the session, which it does only within the agent's window. Pausing the socket, as the
 *   other operations do, would also stop the server reading the close of a client that leaves while
 *   the target reads nothing: the agent's connection would then stay open until the target read again.
 * - Half-close: the client's `eof` ends the stream (END_STREAM, the agent sends FIN to the target);
 *   the agent's END_STREAM (the target's FIN) becomes `eof` to the client. Unlike exec, the first
 *   END_STREAM does not end the operation: it ends when both directions have.
 * - Reset: the operator leaving early resets the stream; a reset stream (the target reset, the agent
 *   gone) fails the operation with its code, and the client resets its connection.
 */

export interface TunnelOutcome {
  readonly result: string;
  readonly details: { toTarget: number; fromTarget: number; durationMs: number };
}

/** What the client may have sent that the stream has not yet handed on (one window's worth). */
const CLIENT_CREDIT = 1024 * 1024;

export function relayTcp(t: Tunnel, stream: MuxStream, startedAt: number): Promise<TunnelOutcome> {
  return new Promise((resolve) => {
    let toTarget = 0;
    let fromTarget = 0;
    let settled = false;
    const settle = (result: string): void => {
      if (settled) return;
      settled = true;
      resolve({ result, details: { toTarget, fromTarget, durationMs: Date.now() - startedAt } });
    };
    t.onCancel(() => {
      stream.destroy(new MeshlinkError('ML_ERR_CANCELLED', 'the operator closed the tunnel connection'));
      settle('cancelled');
    });
    let credit = CLIENT_CREDIT;
    let returned = 0;
    t.onData((chunk) => {
      if (stream.destroyed || stream.writableEnded) return;
      if (chunk.length > credit) {
        stream.destroy(new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', 'the client sent beyond its credit'));
        return;
      }
      credit -= chunk.length;
      toTarget += chunk.length;
      stream.write(chunk, (err?: Error | null) => {
        if (err || t.ended) return;
        // Returned in quarters of the credit: one event per 256 KiB, not one per chunk.
        returned += chunk.length;
        if (returned >= CLIENT_CREDIT / 4 || stream.writableLength === 0) {
          credit += returned;
          t.event({ type: 'credit', bytes: returned });
          returned = 0;
        }
      });
    });
    t.onClientEvent((e) => {
      if (e.type === 'eof' && !stream.destroyed && !stream.writableEnded) stream.end();
    });
    stream.on('message', () => {}); // the conversation has no typed messages: drop any
    stream.on('data', (c: Buffer) => (fromTarget += c.length));
    pipeReadableToWs(stream, t.ws);
    stream.on('end', () => t.event({ type: 'eof' }));
    stream.on('error', (err) => {
      if (settled) return;
      t.fail(err);
      settle(`error:${describeError(err).code}`);
    });
    // 'close' without an error comes once both directions ended (the stream's autoDestroy).
    stream.on('close', () => {
      if (settled) return;
      t.event({ type: 'closed', toTarget, fromTarget, durationMs: Date.now() - startedAt });
      t.finish();
      settle('ok');
    });
    // The connection is up on the agent: the client may send from now on, within its credit.
    t.event({ type: 'ack', startedAt, queued: false });
    t.event({ type: 'credit', bytes: CLIENT_CREDIT });
  });
}
