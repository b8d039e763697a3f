import { MeshlinkError } from '../../errors.js';
import type { MuxStream } from '../../protocol/stream.js';
import { pipeReadableToWs, writeFromWs } from './bridge.js';
import { describeError, type Tunnel } from './tunnel.js';

/**
 * The server's relay of one tunnelled TCP connection (`op: 'tunnel'`): the operator's WebSocket on
 * one side, the agent's accepted tunnel.open stream on the other.
 * - Bytes: bridge.ts both ways, so the server holds at most about a window each way: it stops reading
 *   the WebSocket while the stream's send window is used up, and stops reading the stream (so
 *   returns no credit to the agent) while the WebSocket is backed up.
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
    t.onData((chunk) => {
      if (stream.destroyed || stream.writableEnded) return;
      toTarget += chunk.length;
      writeFromWs(t.ws, stream, chunk);
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
    // The connection is up on the agent: the client may send from now on.
    t.event({ type: 'ack', startedAt, queued: false });
  });
}
