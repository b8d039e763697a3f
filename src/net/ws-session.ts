import type { WebSocket, RawData } from 'ws';
import { Session, type SessionOptions } from '../protocol/session.js';
import { ProtocolError } from '../protocol/errors.js';

/**
 * Binds a protocol Session to a `ws` WebSocket: binary messages in, coalesced messages out, with the
 * send callback as the backpressure signal (it fires when ws has written the message to the socket).
 */
export function attachSession(ws: WebSocket, options: Omit<SessionOptions, 'transport'>): Session {
  ws.binaryType = 'nodebuffer';
  let closed = false;
  const session = new Session({
    ...options,
    transport: {
      send(message, done) {
        if (ws.readyState !== ws.OPEN) {
          done(new ProtocolError('ML_ERR_SESSION_CLOSED', 'socket not open'));
          return;
        }
        ws.send(message, { binary: true }, done);
      },
      close(code, reason) {
        if (closed) return;
        closed = true;
        // 1005/1006/1015 are reserved and may not be sent in a close frame.
        const sendable = code === 1005 || code === 1006 || code === 1015 ? 1011 : code;
        if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(sendable, reason);
      },
    },
  });
  ws.on('message', (data: RawData, isBinary: boolean) => {
    if (!isBinary) {
      session.abort(new ProtocolError('ML_ERR_NOT_TEXT', 'text messages are not part of the protocol'));
      return;
    }
    session.receive(toBuffer(data));
  });
  ws.on('close', (code: number, reason: Buffer) => {
    closed = true;
    session.transportClosed(code, reason.toString('utf8'));
  });
  ws.on('error', () => {
    // 'close' follows every 'error' in ws; the session learns of the failure there.
  });
  return session;
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
