import { z } from 'zod';

/**
 * `HOST:PORT` and `[v6]:PORT` listen addresses of local listeners (the server's and the agent's
 * --metrics-listen). The host is kept as written (brackets removed); port 0 asks for any free port.
 */
export interface ListenAddress {
  host: string;
  port: number;
}

export const listenAddressSchema = z
  .string()
  .regex(/^(\[[0-9A-Fa-f:.]+\]|[^:[\]\s]+):\d{1,5}$/, 'expected HOST:PORT')
  .transform((s): ListenAddress => {
    const i = s.lastIndexOf(':');
    return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) };
  })
  .refine((a) => a.port <= 65_535, 'port out of range');

/** A listen address that does not parse; callers name the flag or variable it came from. */
export class ListenAddressError extends Error {
  readonly code = 'ML_ERR_CONFIG';
}

/** Parses `HOST:PORT` / `[v6]:PORT`; the error message is the reason alone (e.g. "expected HOST:PORT"). */
export function parseListenAddress(text: string): ListenAddress {
  const r = listenAddressSchema.safeParse(text);
  if (!r.success) throw new ListenAddressError(r.error.issues[0]?.message ?? 'invalid');
  return r.data;
}
