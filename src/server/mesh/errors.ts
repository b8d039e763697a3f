import { MeshlinkError } from '../../protocol/errors.js';

/** Errors of the mesh control plane (docs/MESH.md lists them). */
export const MESH_ERROR_CODES = {
  ML_ERR_MESH_POLICY: 'The policy file is invalid; the message names the fault. The policy in force is kept.',
  ML_ERR_MESH_CIDR: 'The mesh range (MESHLINK_MESH_CIDR) is not an IPv4 CIDR of /8 to /30, or does not hold the addresses already assigned.',
  ML_ERR_MESH_EXHAUSTED: 'No free address is left in the mesh range.',
  ML_ERR_MESH_TAG: 'A tag is not valid (letters, digits, . _ -; at most 64).',
  ML_ERR_MESH_CLOSED: 'The server is shutting down; mesh changes are no longer computed (the next start recomputes).',
} as const;
export type MeshErrorCode = keyof typeof MESH_ERROR_CODES;

export class MeshError extends MeshlinkError {
  override readonly code: MeshErrorCode;
  constructor(code: MeshErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MeshError';
    this.code = code;
  }
}
