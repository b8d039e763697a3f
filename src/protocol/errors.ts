/**
 * Every error meshlink raises on purpose is a MeshlinkError with a stable string `code`. Callers
 * match on `err.code` (or `instanceof` of these classes), never on message text.
 *
 * Protocol errors additionally carry the WebSocket close code the session uses when the error ends
 * the connection. The table below is the single source of truth; docs/PROTOCOL.md repeats it and a
 * test keeps the two in agreement.
 */

export interface ErrorSpec {
  /** WebSocket close code sent when this error terminates a session, or null if it never does. */
  readonly closeCode: number | null;
  readonly description: string;
}

export const ERROR_CODES = {
  // --- framing (decoder) ---
  ML_ERR_FRAME_TOO_LARGE: { closeCode: 1009, description: 'A frame header announces a payload longer than the receiver’s maximum frame size.' },
  ML_ERR_FRAME_TRUNCATED: { closeCode: 4001, description: 'A WebSocket message ended inside a frame; messages carry whole frames only.' },
  ML_ERR_RESERVED_FLAG: { closeCode: 4002, description: 'A frame has a reserved flag bit set.' },
  ML_ERR_UNKNOWN_TYPE: { closeCode: 4003, description: 'A frame carries a type code that is not in the registry.' },
  ML_ERR_BAD_PAYLOAD: { closeCode: 4004, description: 'A payload is not valid MessagePack, fails to inflate, or fails its schema.' },
  ML_ERR_WRONG_DIRECTION: { closeCode: 4005, description: 'A message kind arrived from a role that may not send it.' },
  ML_ERR_WRONG_STREAM: { closeCode: 4006, description: 'A control-only kind arrived on a stream, or a stream kind on stream 0.' },
  ML_ERR_NOT_TEXT: { closeCode: 4007, description: 'A text WebSocket message arrived; meshlink uses binary messages only.' },
  // --- handshake ---
  ML_ERR_NO_COMMON_VERSION: { closeCode: 4010, description: 'The agent and server share no protocol version.' },
  ML_ERR_HANDSHAKE: { closeCode: 4011, description: 'A message other than hello/welcome arrived before the handshake completed, or the handshake timed out.' },
  // --- streams and flow control ---
  ML_ERR_FLOW_CONTROL: { closeCode: 4020, description: 'A peer sent stream data beyond the credit it was granted.' },
  ML_ERR_STREAM_ID: { closeCode: 4021, description: 'A stream id has the wrong parity, is reused, or names no open stream where one is required.' },
  ML_ERR_TOO_MANY_STREAMS: { closeCode: 4022, description: 'A peer kept opening streams after being refused for exceeding the concurrent stream cap.' },
  ML_ERR_QUEUE_OVERFLOW: { closeCode: 4023, description: 'A bounded queue overflowed because a peer ignored backpressure.' },
  ML_ERR_STREAM_REJECTED: { closeCode: null, description: 'The peer refused to open a stream (stream.reject).' },
  ML_ERR_STREAM_RESET: { closeCode: null, description: 'The stream was reset by the peer or locally (stream.reset).' },
  ML_ERR_STREAM_CLOSED: { closeCode: null, description: 'A write or message on a stream that is already closed for writing.' },
  ML_ERR_CANCELLED: { closeCode: null, description: 'Reset code: the application abandoned the stream (e.g. the operator ended the command).' },
  ML_ERR_UNSUPPORTED: { closeCode: null, description: 'Reject or error code: no handler for this stream kind or request here.' },
  // --- session ---
  ML_ERR_HEARTBEAT_TIMEOUT: { closeCode: 4030, description: 'The peer sent nothing for longer than the liveness timeout.' },
  ML_ERR_REQUEST_TIMEOUT: { closeCode: null, description: 'A request got no response in time.' },
  ML_ERR_REMOTE: { closeCode: null, description: 'The peer answered a request with an error message.' },
  ML_ERR_SESSION_CLOSED: { closeCode: null, description: 'The session closed while an operation was pending.' },
  ML_ERR_GOAWAY: { closeCode: 1001, description: 'The peer is going away (goaway); no new streams or requests.' },
  // --- authentication (gateway; close codes used when a live session is ended) ---
  ML_ERR_CERT_REVOKED: { closeCode: 4401, description: 'The certificate was revoked (the node was removed).' },
  ML_ERR_CERT_EXPIRED: { closeCode: 4402, description: 'The certificate reached its NotAfter while connected.' },
  ML_ERR_INTERNAL: { closeCode: 1011, description: 'An unexpected internal error.' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Base class of every deliberate meshlink error. */
export class MeshlinkError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MeshlinkError';
    this.code = code;
  }
}

/** An error defined by the wire protocol; `closeCode` is what the session closes with. */
export class ProtocolError extends MeshlinkError {
  override readonly code: ErrorCode;
  readonly closeCode: number | null;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ProtocolError';
    this.code = code;
    this.closeCode = ERROR_CODES[code].closeCode;
  }
}

export function isProtocolError(err: unknown): err is ProtocolError {
  return err instanceof ProtocolError;
}
