import { MeshlinkError } from '../../errors.js';

/**
 * Whether an error thrown by a store call means that the database did not answer (PostgreSQL down,
 * restarting, or a connection lost) rather than that the request was wrong: then the request is
 * refused with ML_ERR_STORE_UNAVAILABLE (503, retried by agents with backoff) instead of a 500.
 * Pure: it reads only the error's fields, so no driver is loaded here.
 */
export function isStoreUnavailable(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code === 'string') {
    // SQLSTATE class 08 (connection exception), 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now).
    if (/^08[0-9A-Z]{3}$/.test(code) || code === '57P01' || code === '57P02' || code === '57P03') return true;
    if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE'].includes(code)) return true;
  }
  // pg's own messages for a connection that ended or could not be had in time.
  return typeof message === 'string' && /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error)/.test(message);
}

/** The MeshlinkError to answer for `err`: itself, ML_ERR_STORE_UNAVAILABLE for a database that did not answer, else null. */
export function storeErrorOf(err: unknown): MeshlinkError | null {
  if (err instanceof MeshlinkError) return err;
  if (isStoreUnavailable(err)) return new MeshlinkError('ML_ERR_STORE_UNAVAILABLE', 'the store did not answer; retry later');
  return null;
}
