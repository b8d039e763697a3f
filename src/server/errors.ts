import { MeshlinkError } from '../protocol/errors.js';

/**
 * Errors of the control-plane server. Each code maps to one HTTP status so handlers can answer
 * `{code, message}` without a second table; docs/SERVER.md lists them and a test keeps the two in agreement.
 */
export const SERVER_ERROR_CODES = {
  ML_ERR_CONFIG: { status: 500, description: 'The server configuration is invalid (named field in the message).' },
  ML_ERR_CA_PASSPHRASE: {
    status: 500,
    description: 'The CA key could not be decrypted: wrong MESHLINK_CA_PASSPHRASE, or the store file was moved (its absolute path is part of the key).',
  },
  ML_ERR_NOT_INITIALIZED: { status: 500, description: 'The data dir has no CA yet; run `meshlink server start` once.' },
  ML_ERR_SERVER_RUNNING: { status: 500, description: 'Another server already answers on this data dir’s admin socket.' },
  ML_ERR_STORE_SCHEMA: { status: 500, description: 'The store was written by a newer meshlink (unknown migration).' },
  ML_ERR_BAD_REQUEST: { status: 400, description: 'The request body is not valid JSON or fails its schema.' },
  ML_ERR_BODY_TOO_LARGE: { status: 413, description: 'The request body exceeds the endpoint’s cap (64 KiB).' },
  ML_ERR_CSR_INVALID: { status: 400, description: 'The CSR cannot be parsed or its self-signature does not verify.' },
  ML_ERR_CSR_KEY: { status: 400, description: 'The CSR key is not acceptable (RSA shorter than 2048 bits, or an unsupported key type/curve).' },
  ML_ERR_TOKEN_INVALID: { status: 401, description: 'The enrollment token is unknown, already used, or expired.' },
  ML_ERR_RATE_LIMITED: { status: 429, description: 'Too many failed requests from this address; retry after the Retry-After seconds.' },
  ML_ERR_CLIENT_CERT: { status: 401, description: 'No client certificate, or one this CA did not issue.' },
  // The same codes as the protocol's close codes 4401/4402, so an agent reads one vocabulary whether it
  // is refused before the upgrade (403 body) or disconnected after it (close code).
  ML_ERR_CERT_REVOKED: { status: 403, description: 'The client certificate is revoked (its node was removed).' },
  ML_ERR_CERT_EXPIRED: { status: 403, description: 'The client certificate has expired (for /v1/renew: longer ago than the renewal grace).' },
  ML_ERR_CERT_FORBIDDEN: { status: 403, description: 'The client certificate may not be used here (not yet valid, or it does not match the request).' },
  ML_ERR_NODE_NOT_FOUND: { status: 404, description: 'No live node has this id or hostname.' },
  ML_ERR_NODE_AMBIGUOUS: { status: 409, description: 'Several live nodes share this hostname; use the node id.' },
  ML_ERR_NOT_FOUND: { status: 404, description: 'No such endpoint.' },
  ML_ERR_METHOD: { status: 405, description: 'Method not allowed on this endpoint.' },
  ML_ERR_SERVER_INTERNAL: { status: 500, description: 'An unexpected server error (details in the server log).' },
} as const satisfies Record<string, { status: number; description: string }>;

export type ServerErrorCode = keyof typeof SERVER_ERROR_CODES;

export class ServerError extends MeshlinkError {
  override readonly code: ServerErrorCode;
  readonly status: number;
  /** Seconds for a Retry-After header (429 only). */
  readonly retryAfterSec: number | undefined;
  constructor(code: ServerErrorCode, message: string, options?: { cause?: unknown; retryAfterSec?: number }) {
    super(code, message, options);
    this.name = 'ServerError';
    this.code = code;
    this.status = SERVER_ERROR_CODES[code].status;
    this.retryAfterSec = options?.retryAfterSec;
  }
}
