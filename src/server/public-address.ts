import { hostname as osHostname } from 'node:os';
import { z } from 'zod';
import type { ServerConfig } from './config.js';
import type { Store } from './store/store.js';

/**
 * The address agents are told to use, and the names the server certificate carries. Behind NAT, a
 * load balancer or a port mapping, the address the server listens on is not the one agents reach:
 * `--public-url https://mesh.example.com` says which it is. Both it and `--san` are stored, so a
 * restart without the flags keeps them; a later flag replaces the stored value.
 */

/** The operator's `--public-url`, once given (meta key). */
export const META_PUBLIC_URL_CONFIGURED = 'public_url_configured';
/** The last `--san` list given (meta key, a JSON array). */
export const META_SANS = 'server_sans';

const storedSans = z.array(z.string().min(1).max(253)).max(64);

export interface PublicAddress {
  /** The URL in enrollment commands: the configured one, else derived from the listen address. */
  readonly publicUrl: string;
  readonly source: 'configured' | 'derived';
  /** Extra names of the server certificate: the stored SANs and the public URL's host. */
  readonly certNames: readonly string[];
  readonly sans: readonly string[];
}

/** Stores what the flags give, then answers from the store (so a restart without flags keeps them). */
export function resolvePublicAddress(store: Store, config: ServerConfig, boundPort: number): PublicAddress {
  if (config.sans.length > 0) store.setMeta(META_SANS, JSON.stringify(config.sans));
  if (config.publicUrl !== null) store.setMeta(META_PUBLIC_URL_CONFIGURED, config.publicUrl);
  const sans = readSans(store);
  const configured = store.getMeta(META_PUBLIC_URL_CONFIGURED) ?? null;
  const publicUrl = configured ?? derivedUrl(config.listen.host, boundPort, sans);
  const host = new URL(publicUrl).hostname.replace(/^\[(.*)\]$/, '$1');
  return { publicUrl, source: configured ? 'configured' : 'derived', sans, certNames: [...new Set([...sans, host])] };
}

/** The stored SANs (a damaged value counts as none rather than stopping the server). */
export function readSans(store: Store): string[] {
  const text = store.getMeta(META_SANS);
  if (text === undefined) return [];
  try {
    const parsed = storedSans.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : [];
  } catch {
    return [];
  }
}

/** On a wildcard listen address: the first SAN, else the host name; else the listen host itself. */
function derivedUrl(listenHost: string, port: number, sans: readonly string[]): string {
  const wildcard = ['0.0.0.0', '::', '[::]'].includes(listenHost);
  let host = wildcard ? (sans[0] ?? osHostname()) : listenHost;
  if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
  return `https://${host}:${port}`;
}
