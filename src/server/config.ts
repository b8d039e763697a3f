import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { plainOrigin, serverOrigin } from '../contract/server-url.js';
import { releaseKeySchema } from '../contract/release.js';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { LOG_LEVELS } from '../util/logger.js';
import { isPostgresUrl } from './store/location.js';
import { MeshlinkError } from '../errors.js';
import { zodErrorText } from '../util/zod-error.js';
import { parseCidr } from './client-address.js';

/**
 * Server configuration: validated once at the edge (CLI or a test), then frozen. Every field has a
 * default so `parseServerConfig({})` is a working configuration.
 */

/** `MESHLINK_DATA_DIR`, else `/var/lib/meshlink/server` as root, else `$HOME/.local/share/meshlink/server`. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MESHLINK_DATA_DIR) return resolve(env.MESHLINK_DATA_DIR);
  if (typeof process.getuid === 'function' && process.getuid() === 0) return '/var/lib/meshlink/server';
  return join(env.HOME ?? homedir(), '.local', 'share', 'meshlink', 'server');
}

const DAY_MS = 86_400_000;

export const serverConfigSchema = z
  .object({
    dataDir: z.string().min(1).optional(),
    /**
     * The server key file (`--key-file`, else MESHLINK_KEY_FILE): what seals the store's secrets, kept
     * outside the data dir. null: the default place (key-file.ts), created at first start.
     */
    keyFile: z.string().min(1).max(4096).nullable().optional(),
    /**
     * The store (`--store`, else MESHLINK_STORE): a postgres:// URL for replicas sharing one
     * PostgreSQL database; absent, the SQLite file in the data dir. A URL's password may be given in
     * it or, better, through PostgreSQL's own PGPASSWORD / ~/.pgpass, which pg reads.
     */
    store: z
      .string()
      .max(4096)
      .refine((s) => isPostgresUrl(s), { message: 'the store must be a postgres:// (or postgresql://) URL; leave it out for the SQLite file in the data dir' })
      .nullable()
      .optional(),
    listen: z
      .object({
        host: z.string().min(1).default('0.0.0.0'),
        port: z.number().int().min(0).max(65_535).default(8443),
      })
      .strict()
      .default({ host: '0.0.0.0', port: 8443 }),
    /** Extra names/IPs for the server certificate (and the first one for the public URL when listening on a wildcard). */
    sans: z.array(z.string().min(1).max(253).regex(/^[A-Za-z0-9.:*-]+$/, 'a DNS name or IP address')).max(64).default([]),
    caKeyType: z.enum(['rsa2048', 'rsa4096']).default('rsa4096'),
    certLifetimeMs: z.number().int().min(60_000).max(825 * DAY_MS).default(30 * DAY_MS),
    renewGraceMs: z.number().int().min(0).max(365 * DAY_MS).default(7 * DAY_MS),
    tokenTtlMs: z.number().int().min(1_000).max(30 * DAY_MS).default(3_600_000),
    heartbeatIntervalMs: z.number().int().min(100).default(15_000),
    offlineAfterMs: z.number().int().min(100).default(45_000),
    /** Failed enroll/renew requests allowed per source address per minute (token bucket, burst = rate). */
    enrollFailuresPerMinute: z.number().int().min(1).max(100_000).default(10),
    logLevel: z.enum(LOG_LEVELS).default('info'),
    /**
     * A TCP connection must send its first byte (a TLS ClientHello) within this, before it takes a
     * handshake slot (`--client-hello-timeout`, src/server/client-hello.ts); a silent one is closed.
     */
    clientHelloTimeoutMs: z.number().int().min(100).max(60_000).default(3_000),
    /**
     * The PROXY protocol v2 on the public port (`--proxy-protocol`, `--proxy-protocol-from`;
     * src/server/proxy-protocol.ts): every connection must start with a header from a load balancer
     * in `from` (empty: any peer), and the header's client address is the one limits, logs and the
     * mesh see. null: off (connections start with their ClientHello).
     */
    proxyProtocol: z
      .object({
        from: z.array(z.string().max(64).refine((text) => parseCidr(text) !== null, 'an IPv4 or IPv6 address or network, e.g. 10.0.0.0/8')).max(256).default([]),
      })
      .strict()
      .nullable()
      .default(null),
    /**
     * The URL agents reach this server at (`--public-url`), when it is not the listen address: behind
     * NAT, a load balancer or a port mapping. https, a host and an optional port, nothing else.
     */
    publicUrl: z
      .string()
      .max(2048)
      .refine((text) => serverOrigin(text) !== null, 'an https URL with a host and an optional port, e.g. https://mesh.example.com')
      .transform((text) => serverOrigin(text)!)
      .nullable()
      .default(null),
    /**
     * Release public keys (`--release-key ed25519:…`, repeatable): `upgrade set` offers only bundles
     * signed by one of them (docs/OPERATIONS.md, "Agent upgrade"). None: no bundle can be set.
     */
    releaseKeys: z.array(releaseKeySchema).max(16).default([]),
    /** Where to serve Prometheus /metrics (`--metrics-listen`); null: MESHLINK_METRICS_LISTEN, else off. */
    metricsListen: z.object({ host: z.string().min(1), port: z.number().int().min(0).max(65_535) }).strict().nullable().default(null),
    /**
     * The STUN responder of NAT traversal (`--stun-listen`, docs/MESH.md): a UDP address and the
     * alternate port its mapping test needs. Absent: 0.0.0.0:3478 and 3479 if they are free (a warning
     * when not); an explicit address must bind or the start fails; null (`--no-stun`): off.
     */
    stunListen: z
      .object({ host: z.string().min(1), port: z.number().int().min(0).max(65_535), alternatePort: z.number().int().min(0).max(65_535) })
      .strict()
      .refine((s) => s.port === 0 || s.port !== s.alternatePort, { message: 'the alternate STUN port must differ from the primary', path: ['alternatePort'] })
      .nullable()
      .optional(),
    /**
     * The UDP relay of NAT traversal (`--relay-listen HOST[:LOW-HIGH]`, docs/MESH.md "Relay"): the IP
     * its allocations' ports are bound on, and the range they are taken from (null: any free port the
     * OS gives). Absent: 0.0.0.0, any port, if a port there binds (a warning when not); an explicit
     * address must bind or the start fails; null (`--no-relay`): off.
     */
    relayListen: z
      .object({ host: z.string().refine((h) => isIP(h) !== 0, 'an IP address'), ports: z.object({ low: z.number().int().min(1).max(65_535), high: z.number().int().min(1).max(65_535) }).strict().nullable() })
      .strict()
      .refine((r) => r.ports === null || r.ports.high - r.ports.low >= 1, { message: 'the relay port range must hold at least two ports (one allocation)', path: ['ports'] })
      .nullable()
      .optional(),
    /** The host agents send relayed packets to (`--relay-public-host`); null: the host of the public URL. */
    relayPublicHost: z
      .string()
      .max(253)
      .regex(/^(?:[A-Za-z0-9.-]+|[0-9A-Fa-f:.]+)$/, 'a DNS name or an IP address')
      .nullable()
      .default(null),
    /** Bandwidth cap per relay allocation and direction, bytes per second (`--relay-bandwidth`, default 100 Mbit/s). */
    relayBytesPerSecond: z.number().int().min(1_000).max(125_000_000_000).default(12_500_000),
    /** A relay allocation without traffic for this long is closed and revoked (`--relay-idle-timeout`; above WireGuard's 25 s keepalive). */
    relayIdleMs: z.number().int().min(30_000).max(DAY_MS).default(120_000),
    /**
     * How long a pair whose direct path was reported down stays on the relay before it tries direct
     * again (`--mesh-direct-retry`, docs/MESH.md "Switching"); doubled after each failure in a row, up
     * to an hour or this, whichever is longer.
     */
    meshDirectRetryMs: z.number().int().min(10_000).max(DAY_MS).default(300_000),
    /** Relay allocations at most (`--relay-max-allocations`; two UDP ports each). */
    relayMaxAllocations: z.number().int().min(1).max(30_000).default(1_000),
    /** Where to serve the web console (`--console-listen`, plain HTTP, docs/CONSOLE.md); null: off. */
    consoleListen: z.object({ host: z.string().min(1), port: z.number().int().min(0).max(65_535) }).strict().nullable().default(null),
    /**
     * The origin browsers reach the console at (`--console-origin`), when it is not `http://` + the Host
     * they send: behind a TLS reverse proxy, `https://console.example.com`. Login links name it, and
     * every state-changing request must carry exactly it as its Origin.
     */
    consoleOrigin: z
      .string()
      .max(2048)
      .refine((text) => plainOrigin(text, ['http:', 'https:']) !== null, 'an http or https origin, e.g. https://console.example.com')
      .transform((text) => plainOrigin(text, ['http:', 'https:'])!)
      .nullable()
      .default(null),
  })
  .strict()
  .refine((c) => c.offlineAfterMs > c.heartbeatIntervalMs, {
    message: 'offlineAfterMs must be greater than heartbeatIntervalMs',
    path: ['offlineAfterMs'],
  })
  .refine((c) => !c.relayListen?.ports || c.relayListen.ports.high - c.relayListen.ports.low + 1 >= 2 * c.relayMaxAllocations, {
    message: 'the relay port range must hold two ports per allocation (relayMaxAllocations)',
    path: ['relayListen', 'ports'],
  });

export type ServerConfigInput = z.input<typeof serverConfigSchema>;
export type ServerConfig = Readonly<Omit<z.output<typeof serverConfigSchema>, 'dataDir' | 'listen' | 'sans' | 'keyFile' | 'store'>> & {
  readonly dataDir: string;
  readonly keyFile: string | null;
  /** A postgres:// URL, or null for the SQLite file in the data dir (storeLocation). */
  readonly store: string | null;
  readonly listen: Readonly<{ host: string; port: number }>;
  readonly sans: readonly string[];
};

export function parseServerConfig(input: unknown, env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const result = serverConfigSchema.safeParse(input);
  if (!result.success) {
    throw new MeshlinkError('ML_ERR_CONFIG', `invalid server config: ${zodErrorText(result.error)}`);
  }
  const c = result.data;
  const store = c.store ?? storeFromEnv(env);
  return Object.freeze({
    ...c,
    dataDir: resolve(c.dataDir ?? defaultDataDir(env)),
    keyFile: c.keyFile ? resolve(c.keyFile) : env.MESHLINK_KEY_FILE ? resolve(env.MESHLINK_KEY_FILE) : null,
    store,
    listen: Object.freeze({ ...c.listen }),
    sans: Object.freeze([...c.sans]),
  });
}

/** Store and socket paths inside the data dir. */
export function storePath(dataDir: string): string {
  return join(dataDir, 'meshlink.db');
}
/** MESHLINK_STORE: a postgres:// URL, or null (unset or empty) for the SQLite file in the data dir. */
export function storeFromEnv(env: NodeJS.ProcessEnv): string | null {
  const store = env.MESHLINK_STORE;
  if (store === undefined || store === '') return null;
  if (!isPostgresUrl(store)) throw new MeshlinkError('ML_ERR_CONFIG', 'MESHLINK_STORE must be a postgres:// (or postgresql://) URL; unset it for the SQLite file in the data dir');
  return store;
}
/** Where the server's store is: the configured PostgreSQL URL, else the data dir's SQLite file. */
export function storeLocation(config: Pick<ServerConfig, 'dataDir' | 'store'>): string {
  return config.store ?? storePath(config.dataDir);
}
export function adminSocketPath(dataDir: string): string {
  return join(dataDir, 'admin.sock');
}
