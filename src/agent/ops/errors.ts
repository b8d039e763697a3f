import { MeshlinkError } from '../../errors.js';

/**
 * Error codes of remote operations. The agent puts them in stream.reject / stream.reset / results,
 * the server's admin API answers them, and the CLI prints them (`error CODE: message`).
 * docs/OPERATIONS.md lists them; a test keeps the two in agreement.
 */
export const OPS_ERROR_CODES = {
  ML_ERR_OPS_BAD_REQUEST: 'The operation request is malformed (named field in the message).',
  ML_ERR_OPS_NODE_OFFLINE: 'The node has no open session to the server right now.',
  ML_ERR_OPS_UNKNOWN_ACTION: 'No built-in action and no executable hook has this name on the agent.',
  ML_ERR_OPS_BUSY: 'The agent runs its maximum of concurrent actions and its queue is full.',
  ML_ERR_OPS_TIMEOUT: 'The operation ran past its timeout; its whole process group was killed.',
  ML_ERR_OPS_EXEC_DISABLED: 'Exec is off on this agent (start it with --allow-exec).',
  ML_ERR_OPS_TRANSFER_DISABLED: 'File transfer is off on this agent (start it with --transfer-dir DIR).',
  ML_ERR_OPS_PATH_FORBIDDEN: 'The path is not inside a directory the agent allows (--transfer-dir), or is not a regular file.',
  ML_ERR_OPS_NOT_FOUND: 'The file (or bundle) does not exist.',
  ML_ERR_OPS_IO: 'Reading or writing the file failed (message names the cause).',
  ML_ERR_OPS_CHECKSUM: 'The SHA-256 of the received bytes does not match the sender’s; nothing was committed.',
  ML_ERR_OPS_NO_LOG: 'The agent keeps no log file to tail (it was not started by `meshlink agent run`).',
  ML_ERR_OPS_SPAWN: 'The command or hook could not be started (message names the cause).',
  ML_ERR_OPS_UPGRADE: 'An agent upgrade could not be set or applied (message names the cause).',
  ML_ERR_OPS_INTERRUPTED: 'The operation was cut off (the connection dropped or the peer went away).',
} as const;

export type ErrorCode = keyof typeof OPS_ERROR_CODES;

export class OpsError extends MeshlinkError {
  override readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'OpsError';
    this.code = code;
  }
}

/** The code to send for any error (our own codes pass through; anything else is IO or internal). */
export function wireCode(err: unknown): string {
  if (err instanceof MeshlinkError) return err.code;
  const sys = (err as NodeJS.ErrnoException | null)?.code;
  if (sys === 'ENOENT') return 'ML_ERR_OPS_NOT_FOUND';
  if (typeof sys === 'string') return 'ML_ERR_OPS_IO';
  return 'ML_ERR_INTERNAL';
}

export function errorMessage(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).slice(0, 1000);
}
