import { isIP } from 'node:net';
import { MeshlinkError } from '../../errors.js';

/**
 * The agent's tunnel allowlist (`agent run --allow-tunnel 127.0.0.1:8080,[::1]:22`): exact
 * host:port pairs, compared as the operator wrote the host (lower-cased, IPv6 without brackets).
 * There is no wildcard on purpose: a tunnel reaches past the agent into its network, so each target
 * is named. The host is compared as text, before any name lookup: `localhost:22` allows only
 * requests that say `localhost`.
 */

export interface TunnelTarget {
  readonly host: string;
  readonly port: number;
}

/** `HOST:PORT` or `[IPV6]:PORT` → target; throws ML_ERR_CONFIG naming the entry. */
export function parseTunnelTarget(spec: string): TunnelTarget {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(spec.trim());
  const port = m ? Number(m[3]) : 0;
  const host = m ? (m[1] ?? m[2]!).toLowerCase() : '';
  if (!m || port < 1 || port > 65535 || (m[1] !== undefined && isIP(host) !== 6) || host.length > 253) {
    throw new MeshlinkError('ML_ERR_CONFIG', `invalid tunnel target ${JSON.stringify(spec)}: expected HOST:PORT or [IPv6]:PORT`);
  }
  return Object.freeze({ host, port });
}

/** Comma-separated targets (the flag may also repeat); empty entries are ignored. */
export function parseTunnelAllowlist(specs: readonly string[]): readonly TunnelTarget[] {
  return Object.freeze(specs.flatMap((s) => s.split(',')).filter((s) => s.trim() !== '').map(parseTunnelTarget));
}

/** The host as the allowlist compares it: lower-case, IPv6 without brackets. */
export function normalHost(host: string): string {
  const h = host.toLowerCase();
  return h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
}

export function isAllowed(list: readonly TunnelTarget[], host: string, port: number): boolean {
  const h = normalHost(host);
  return list.some((t) => t.host === h && t.port === port);
}

export function formatTarget(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
