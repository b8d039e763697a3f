import type { ServerResponse } from 'node:http';
import { MeshlinkError } from '../../protocol/errors.js';
import { ServerError } from '../errors.js';
import { sendError, sendJson } from '../http-json.js';
import { OpsError, type OpsErrorCode } from '../../agent/ops/errors.js';

export { OpsError };

/** HTTP status of each ops code on the admin API. */
const STATUS: Record<OpsErrorCode, number> = {
  ML_ERR_OPS_BAD_REQUEST: 400,
  ML_ERR_OPS_NODE_OFFLINE: 409,
  ML_ERR_OPS_UNKNOWN_ACTION: 404,
  ML_ERR_OPS_BUSY: 429,
  ML_ERR_OPS_TIMEOUT: 504,
  ML_ERR_OPS_EXEC_DISABLED: 403,
  ML_ERR_OPS_TRANSFER_DISABLED: 403,
  ML_ERR_OPS_PATH_FORBIDDEN: 403,
  ML_ERR_OPS_NOT_FOUND: 404,
  ML_ERR_OPS_IO: 500,
  ML_ERR_OPS_CHECKSUM: 422,
  ML_ERR_OPS_NO_LOG: 404,
  ML_ERR_OPS_SPAWN: 500,
  ML_ERR_OPS_UPGRADE: 400,
  ML_ERR_OPS_INTERRUPTED: 502,
};

/** Answers `{code, message}` for ops errors; server errors go through the shared sendError. */
export function sendOpsError(res: ServerResponse, err: unknown): void {
  if (err instanceof OpsError) {
    if (res.headersSent) res.destroy();
    else sendJson(res, STATUS[err.code], { code: err.code, message: err.message });
    return;
  }
  if (err instanceof ServerError || !(err instanceof MeshlinkError)) {
    sendError(res, err);
    return;
  }
  // Another MeshlinkError (e.g. a remote error relayed): 502 with its code.
  if (res.headersSent) res.destroy();
  else sendJson(res, 502, { code: err.code, message: err.message });
}
