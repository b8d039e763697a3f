import { isIP } from 'node:net';
import { MeshlinkError } from '../errors.js';

/**
 * How the agent reaches its server: directly or through an HTTP CONNECT proxy (docs/AGENT.md,
 * "Proxies"). Pure decision logic, no I/O: `resolveProxyConfig` reads the `--proxy` flag and the
 * environment once; `proxyFor` answers per URL. Every request the agent sends to the server (GET
 * /v1/ca, POST /v1/enroll, POST /v1/renew, the WebSocket to /v1/connect, upgrade downloads) asks it;
 * proxy-dial.ts carries out the answer.
 *
 * The server URL is always https://, so only the HTTPS variables count (HTTP_PROXY never does).
 */

/** A proxy to tunnel through: http://HOST:PORT, with optional Basic credentials. */
export interface ProxyEndpoint {
  /** Host name or IP (IPv6 without brackets). */
  readonly host: string;
  readonly port: number;
  /** Decoded user name and password for Proxy-Authorization: Basic, when the URL carried them. */
  readonly auth: { readonly username: string; readonly password: string } | null;
  /** host:port (IPv6 in brackets): the only form that may be logged or shown. */
  readonly display: string;
  /** Where the setting came from: `--proxy` or the environment variable's name. */
  readonly source: string;
}

/** One NO_PROXY entry, parsed. */
export type NoProxyRule =
  | { readonly kind: 'all' }
  /** `example.com` matches it and its subdomains; `.example.com` (suffix) only subdomains. */
  | { readonly kind: 'domain'; readonly name: string; readonly subdomainsOnly: boolean; readonly port: number | null }
  | { readonly kind: 'ip'; readonly bytes: Uint8Array; readonly port: number | null }
  | { readonly kind: 'cidr'; readonly bytes: Uint8Array; readonly prefix: number };

export interface ProxyConfig {
  readonly proxy: ProxyEndpoint | null;
  readonly noProxy: readonly NoProxyRule[];
}

/** The variables read, in order of precedence: the first one set and not empty wins. */
export const PROXY_ENV_VARS = ['HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'] as const;
export const NO_PROXY_ENV_VARS = ['NO_PROXY', 'no_proxy'] as const;

export const DIRECT: ProxyConfig = Object.freeze({ proxy: null, noProxy: Object.freeze([]) });

/**
 * `flag` (from --proxy) wins over the environment; NO_PROXY applies to either, as with curl.
 * A value that is not an http:// proxy URL is a configuration error naming where it came from,
 * never a silent direct connection the operator did not ask for.
 */
export function resolveProxyConfig(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): ProxyConfig {
  let raw: string | undefined;
  let source = '--proxy';
  if (flag !== undefined && flag !== '') raw = flag;
  else {
    for (const name of PROXY_ENV_VARS) {
      const v = env[name];
      if (v !== undefined && v.trim() !== '') {
        raw = v.trim();
        source = name;
        break;
      }
    }
  }
  let noProxyRaw = '';
  for (const name of NO_PROXY_ENV_VARS) {
    const v = env[name];
    if (v !== undefined && v.trim() !== '') {
      noProxyRaw = v;
      break;
    }
  }
  return Object.freeze({
    proxy: raw === undefined ? null : parseProxyUrl(raw, source),
    noProxy: Object.freeze(parseNoProxy(noProxyRaw)),
  });
}

/**
 * `http://[user:pass@]host[:port]`; a bare `host:port` is taken as http:// (what most tools
 * accept in HTTPS_PROXY). Port defaults to 80 as for any http:// URL. Credentials are percent-decoded.
 */
export function parseProxyUrl(raw: string, source = '--proxy'): ProxyEndpoint {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    // Never echo the value: it may hold a password.
    throw new MeshlinkError('ML_ERR_CONFIG', `${source}: not a proxy URL (expected http://[user:password@]host:port)`);
  }
  if (url.protocol !== 'http:') {
    throw new MeshlinkError('ML_ERR_CONFIG', `${source}: only http:// proxies are supported (CONNECT tunnels), not ${url.protocol}//`);
  }
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '' || url.hostname === '') {
    throw new MeshlinkError('ML_ERR_CONFIG', `${source}: a proxy URL is http://[user:password@]host:port, without path or query`);
  }
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = url.port === '' ? 80 : Number(url.port);
  let auth: ProxyEndpoint['auth'] = null;
  if (url.username !== '' || url.password !== '') {
    try {
      auth = Object.freeze({ username: decodeURIComponent(url.username), password: decodeURIComponent(url.password) });
    } catch {
      throw new MeshlinkError('ML_ERR_CONFIG', `${source}: the proxy credentials are not valid percent-encoding`);
    }
  }
  return Object.freeze({ host, port, auth, display: hostPort(host, port), source });
}

/** host:port for display, IPv6 in brackets. */
export function hostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The Proxy-Authorization header value for an endpoint with credentials, else null. */
export function proxyAuthorization(proxy: ProxyEndpoint): string | null {
  if (proxy.auth === null) return null;
  return `Basic ${Buffer.from(`${proxy.auth.username}:${proxy.auth.password}`, 'utf8').toString('base64')}`;
}

/** The proxy to use for `target`, or null to connect directly. */
export function proxyFor(target: URL | string, config: ProxyConfig): ProxyEndpoint | null {
  if (config.proxy === null) return null;
  const url = typeof target === 'string' ? new URL(target) : target;
  const host = normaliseHost(url.hostname);
  const port = url.port !== '' ? Number(url.port) : url.protocol === 'http:' || url.protocol === 'ws:' ? 80 : 443;
  return bypasses(host, port, config.noProxy) ? null : config.proxy;
}

/** Whether NO_PROXY rules send host:port direct. `host` is lower case, IPv6 without brackets. */
export function bypasses(host: string, port: number, rules: readonly NoProxyRule[]): boolean {
  const ip = ipBytes(host);
  for (const rule of rules) {
    switch (rule.kind) {
      case 'all':
        return true;
      case 'domain':
        if (rule.port !== null && rule.port !== port) break;
        if (ip !== null) break;
        if (host.endsWith(`.${rule.name}`) || (!rule.subdomainsOnly && host === rule.name)) return true;
        break;
      case 'ip':
        if (rule.port !== null && rule.port !== port) break;
        if (ip !== null && equalBytes(ip, rule.bytes)) return true;
        break;
      case 'cidr':
        if (ip !== null && ip.length === rule.bytes.length && inPrefix(ip, rule.bytes, rule.prefix)) return true;
        break;
    }
  }
  return false;
}

/**
 * NO_PROXY: entries separated by commas (and/or white space). `*` bypasses everything; `host`,
 * `.domain`, an IP, `CIDR` (v4 or v6), each optionally with `:port` (IPv6 with a port in brackets:
 * `[::1]:8443`). Entries that parse as none of these are ignored, as other tools do.
 */
export function parseNoProxy(raw: string): NoProxyRule[] {
  const rules: NoProxyRule[] = [];
  for (const entry of raw.split(/[\s,]+/)) {
    const rule = parseNoProxyEntry(entry.trim().toLowerCase());
    if (rule !== null) rules.push(rule);
  }
  return rules;
}

function parseNoProxyEntry(entry: string): NoProxyRule | null {
  if (entry === '') return null;
  if (entry === '*') return { kind: 'all' };
  const slash = entry.indexOf('/');
  if (slash >= 0) {
    const bytes = ipBytes(entry.slice(0, slash));
    const prefixText = entry.slice(slash + 1);
    if (bytes === null || !/^\d{1,3}$/.test(prefixText)) return null;
    const prefix = Number(prefixText);
    if (prefix > bytes.length * 8) return null;
    return { kind: 'cidr', bytes, prefix };
  }
  let hostPart = entry;
  let port: number | null = null;
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(entry);
  if (bracketed) {
    hostPart = bracketed[1]!;
    port = bracketed[2] === undefined ? null : Number(bracketed[2]);
  } else if (isIP(entry) !== 6) {
    const m = /^(.*):(\d{1,5})$/.exec(entry);
    if (m) {
      hostPart = m[1]!;
      port = Number(m[2]);
    }
  }
  if (port !== null && (port < 1 || port > 65535)) return null;
  const bytes = ipBytes(hostPart);
  if (bytes !== null) return { kind: 'ip', bytes, port };
  const subdomainsOnly = /^\*?\./.test(hostPart);
  const name = normaliseHost(hostPart.replace(/^\*?\./, ''));
  if (!/^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$/.test(name)) return null;
  return { kind: 'domain', name, subdomainsOnly, port };
}

/** Lower case, no trailing dot, IPv6 without brackets. */
function normaliseHost(host: string): string {
  return host.replace(/^\[|\]$/g, '').replace(/\.$/, '').toLowerCase();
}

/** The 4 or 16 bytes of an IP literal, else null. IPv4-mapped IPv6 stays IPv6. */
export function ipBytes(text: string): Uint8Array | null {
  const family = isIP(text);
  if (family === 4) return Uint8Array.from(text.split('.').map(Number));
  if (family !== 6) return null;
  let s = text;
  // A trailing dotted quad (::ffff:1.2.3.4) becomes two hex groups.
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (quad) {
    const b = quad[1]!.split('.').map(Number);
    s = `${s.slice(0, quad.index)}${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const h = head === '' || head === undefined ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  return out;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function inPrefix(ip: Uint8Array, net: Uint8Array, prefix: number): boolean {
  for (let bit = 0; bit < prefix; bit++) {
    const mask = 0x80 >> (bit % 8);
    if ((ip[bit >> 3]! & mask) !== (net[bit >> 3]! & mask)) return false;
  }
  return true;
}
