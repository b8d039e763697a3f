import { MeshlinkError } from '../../errors.js';

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
