import { isIP } from 'node:net';
import { MeshlinkError } from '../errors.js';

/** A local address to listen on: `HOST:PORT` or `[IPv6]:PORT` (port 0 = any free port). */
export interface ListenAddress {
  host: string;
  port: number;
}

/**
 * The one parser of listen addresses (`server start --listen`, `--metrics-listen`, the agent's
 * `--metrics-listen`, MESHLINK_METRICS_LISTEN). An IPv6 host must be bracketed, so that the last colon
 * always separates the port; a bracketed host must be an IPv6 address. `what` names the setting in
 * the error; `code` is ML_ERR_USAGE for a flag, ML_ERR_CONFIG for the environment.
 */
export function parseListenAddress(text: string, what = 'listen address', code: 'ML_ERR_USAGE' | 'ML_ERR_CONFIG' = 'ML_ERR_CONFIG'): ListenAddress {
  const m = /^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]\s]+):(\d{1,5})$/.exec(text);
  if (!m) throw new MeshlinkError(code, `invalid ${what} "${text}": expected HOST:PORT or [IPv6]:PORT`);
  const port = Number(m[2]);
  if (port > 65_535) throw new MeshlinkError(code, `invalid ${what} "${text}": port ${port} is out of range`);
  const host = m[1]!;
  if (text.startsWith('[') && isIP(host) !== 6) throw new MeshlinkError(code, `invalid ${what} "${text}": ${host} is not an IPv6 address`);
  return { host, port };
}
