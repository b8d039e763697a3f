import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { RemoteError } from '../../protocol/session.js';
import { StreamResetError } from '../../protocol/stream.js';
import type { Logger } from '../../util/logger.js';
import { clientEventSchema, opsRequestSchema, type ClientEvent, type ParsedOpsRequest, type TunnelEvent } from '../../admin-api/tunnel.js';
import { MeshlinkError } from '../../errors.js';
import { zodErrorText } from '../../util/zod-error.js';

/**
 * Server side of the operator WebSocket (src/admin-api/tunnel.ts): accepts the upgrade on the admin
 * socket, reads and validates the request, and hands a Tunnel to the operation.
 */

/** Largest message from the operator (binary chunks are 64 KiB; the request is small). */
const MAX_CLIENT_MESSAGE = 1024 * 1024;
const REQUEST_TIMEOUT_MS = 10_000;

export interface Tunnel {
  readonly ws: WebSocket;
  readonly request: ParsedOpsRequest;
  /** Sends a text event. */
  event(e: TunnelEvent): void;
  /** Sends an error event and closes. */
  fail(err: unknown): void;
  /** Closes normally (after the final event). */
  finish(): void;
  /**
   * Ends the operation from the server's side (another operator ended it): the client gets `err` as
   * its error event, and the cancel handlers run as if the client had left (the agent stream is reset).
   */
  abort(err: unknown): void;
  /** True once finish/fail ran or the client went away. */
  readonly ended: boolean;
  /** Binary messages from the client. */
  onData(handler: (chunk: Buffer) => void): void;
  onClientEvent(handler: (e: ClientEvent) => void): void;
  /** The client closed before the operation ended (cancel). */
  onCancel(handler: () => void): void;
}

export type OperationHandler = (tunnel: Tunnel) => Promise<void>;

/** The error code and message an error becomes on the tunnel (remote codes pass through). */
export function describeError(err: unknown): { code: string; message: string } {
  if (err instanceof RemoteError) return { code: err.remoteCode, message: err.message.replace(/^[A-Z_]+: /, '') };
  if (err instanceof StreamResetError) return { code: err.resetCode, message: err.message };
  if (err instanceof MeshlinkError) return { code: err.code, message: err.message };
  return { code: 'ML_ERR_INTERNAL', message: 'internal error (see the server log)' };
}

export function createTunnelServer(log: Logger, run: OperationHandler): { handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void; close(): void } {
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_CLIENT_MESSAGE, perMessageDeflate: false });
  return {
    handleUpgrade(req, socket, head) {
      wss.handleUpgrade(req, socket, head, (ws) => accept(ws));
    },
    close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    },
  };

  function accept(ws: WebSocket): void {
    let ended = false;
    let started = false;
    const dataHandlers: Array<(c: Buffer) => void> = [];
    const eventHandlers: Array<(e: ClientEvent) => void> = [];
    const cancelHandlers: Array<() => void> = [];
    const timer = setTimeout(() => closeWith({ code: 'ML_ERR_OPS_BAD_REQUEST', message: 'no request within 10 s' }), REQUEST_TIMEOUT_MS);

    /** A socket paused for backpressure could not read the client's close frame: resume it first. */
    function closeNow(): void {
      if (ws.isPaused) ws.resume();
      ws.close(1000);
    }
    function send(e: TunnelEvent): void {
      if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(e));
    }
    function closeWith(e: { code: string; message: string }): void {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      send({ type: 'error', code: e.code, message: e.message });
      closeNow();
    }

    ws.on('error', () => {});
    ws.on('close', () => {
      clearTimeout(timer);
      if (!ended) {
        ended = true;
        for (const h of cancelHandlers) h();
      }
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!started) {
        if (isBinary) return closeWith({ code: 'ML_ERR_OPS_BAD_REQUEST', message: 'the first message must be the JSON request' });
        let parsed;
        try {
          parsed = opsRequestSchema.safeParse(JSON.parse(data.toString('utf8')));
        } catch {
          return closeWith({ code: 'ML_ERR_OPS_BAD_REQUEST', message: 'the request is not JSON' });
        }
        if (!parsed.success) {
          return closeWith({ code: 'ML_ERR_OPS_BAD_REQUEST', message: `invalid request: ${zodErrorText(parsed.error, { root: 'request' })}` });
        }
        started = true;
        clearTimeout(timer);
        const tunnel: Tunnel = {
          ws,
          request: parsed.data,
          event: send,
          fail(err) {
            const d = describeError(err);
            if (d.code === 'ML_ERR_INTERNAL') log.error({ err, op: parsed.data.op }, 'operation failed');
            closeWith(d);
          },
          finish() {
            if (ended) return;
            ended = true;
            closeNow();
          },
          abort(err) {
            if (ended) return;
            closeWith(describeError(err));
            for (const h of cancelHandlers) h();
          },
          get ended() {
            return ended;
          },
          onData: (h) => dataHandlers.push(h),
          onClientEvent: (h) => eventHandlers.push(h),
          onCancel: (h) => cancelHandlers.push(h),
        };
        run(tunnel).catch((err: unknown) => tunnel.fail(err));
        return;
      }
      if (isBinary) {
        for (const h of dataHandlers) h(data);
        return;
      }
      let e;
      try {
        e = clientEventSchema.safeParse(JSON.parse(data.toString('utf8')));
      } catch {
        return closeWith({ code: 'ML_ERR_OPS_BAD_REQUEST', message: 'client event is not JSON' });
      }
      if (!e.success) return closeWith({ code: 'ML_ERR_OPS_BAD_REQUEST', message: 'unknown client event' });
      for (const h of eventHandlers) h(e.data);
    });
  }
}
