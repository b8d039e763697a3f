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
  /** The operator's `--public-url`, this start's or a stored one; null: derived from the listen address. */
  readonly configuredUrl: string | null;
  readonly sans: readonly string[];
  /** Extra names of the server certificate: the stored SANs and the configured URL's host. */
  readonly certNames: readonly string[];
}

/** Stores what the flags give, then answers from the store (so a restart without flags keeps them). Once per start. */
export async function resolvePublicAddress(store: Store, config: ServerConfig): Promise<PublicAddress> {
  if (config.sans.length > 0) await store.setMeta(META_SANS, JSON.stringify(config.sans));
  if (config.publicUrl !== null) await store.setMeta(META_PUBLIC_URL_CONFIGURED, config.publicUrl);
  const sans = await readSans(store);
  const configuredUrl = (await store.getMeta(META_PUBLIC_URL_CONFIGURED)) ?? null;
  const host = configuredUrl === null ? [] : [new URL(configuredUrl).hostname.replace(/^\[(.*)\]$/, '$1')];
  return { configuredUrl, sans, certNames: [...new Set([...sans, ...host])] };
}

/** The URL in enrollment commands: the configured one, else derived from the bound listen address. */
export function publicUrlOf(address: PublicAddress, listenHost: string, boundPort: number): string {
  return address.configuredUrl ?? derivedUrl(listenHost, boundPort, address.sans);
}

/** The stored SANs (a damaged value counts as none rather than stopping the server). */
export async function readSans(store: Store): Promise<string[]> {
  const text = await store.getMeta(META_SANS);
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

/**
 * The host part of the URL agents are told (the configured `--public-url`, else the derived one), for
 * other services of the server that agents reach at the same address (the mesh relay). IPv6 unbracketed.
 */
export async function publicHostOf(store: Store, config: ServerConfig): Promise<string> {
  const configured = config.publicUrl ?? (await store.getMeta(META_PUBLIC_URL_CONFIGURED)) ?? null;
  const url = configured ?? derivedUrl(config.listen.host, config.listen.port || 1, await readSans(store));
  return new URL(url).hostname.replace(/^\[(.*)\]$/, '$1');
}
