import type { WebSocket, RawData } from 'ws';
import { Session, type SessionOptions } from '../protocol/session.js';
import type { Role } from '../protocol/registry.js';
import { MeshlinkError } from '../errors.js';

/**
 * Optional wire observers (metrics, src/server/metrics.ts and src/agent/metrics.ts): called with
 * every whole WebSocket message a session of `role` sends or receives. Unset, the cost is one Set
 * size check per message. Observers must not throw or keep the buffer.
 */
export type WireObserver = (direction: 'in' | 'out', message: Uint8Array) => void;
const wireObservers: Record<Role, Set<WireObserver>> = { agent: new Set(), server: new Set() };

/** Registers an observer for every session of `role` in this process; returns its removal. */
export function addWireObserver(role: Role, observer: WireObserver): () => void {
  wireObservers[role].add(observer);
  return () => wireObservers[role].delete(observer);
}

/** How long a local close waits for the peer's close frame before the socket is destroyed. */
const CLOSE_HANDSHAKE_MS = 1_000;

/**
 * Binds a protocol Session to a `ws` WebSocket: binary messages in, coalesced messages out, with the
 * send callback as the backpressure signal (it fires when ws has written the message to the socket).
 */
export function attachSession(ws: WebSocket, options: Omit<SessionOptions, 'transport'>): Session {
  ws.binaryType = 'nodebuffer';
  let closed = false;
  const observers = wireObservers[options.role];
  const session = new Session({
    ...options,
    transport: {
      send(message, done) {
        if (ws.readyState !== ws.OPEN) {
          done(new MeshlinkError('ML_ERR_SESSION_CLOSED', 'socket not open'));
          return;
        }
        if (observers.size > 0) for (const observe of observers) observe('out', message);
        ws.send(message, { binary: true }, done);
      },
      close(code, reason) {
        if (closed) return;
        closed = true;
        // 1005/1006/1015 are reserved and may not be sent in a close frame.
        const sendable = code === 1005 || code === 1006 || code === 1015 ? 1011 : code;
        if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(sendable, reason);
        // A peer that does not answer the close handshake (hung, or the reason we are closing) is
        // cut off after a second rather than ws's 30 s close timeout: until then the socket counts as live.
        const force = setTimeout(() => ws.terminate(), CLOSE_HANDSHAKE_MS);
        force.unref();
        ws.once('close', () => clearTimeout(force));
      },
    },
  });
  ws.on('message', (data: RawData, isBinary: boolean) => {
    if (!isBinary) {
      session.abort(new MeshlinkError('ML_ERR_NOT_TEXT', 'text messages are not part of the protocol'));
      return;
    }
    const message = toBuffer(data);
    if (observers.size > 0) for (const observe of observers) observe('in', message);
    // The session yields between costly frames (PROTOCOL.md §3.4): stop reading the socket until
    // it has worked through what it holds, so a peer cannot queue messages behind it without bound.
    if (!session.receive(message) && !ws.isPaused) {
      ws.pause();
      session.once('receiveDrain', () => ws.resume());
    }
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
