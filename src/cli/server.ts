import { statSync, unlinkSync } from 'node:fs';
import { EXIT_CODES, MeshlinkError } from '../errors.js';
import { withFailureReport } from './failure.js';
import { dataDirOf, withOperator } from './operator.js';
import { resolve } from 'node:path';
import { restoreStore } from '../server/operator/backup.js';
import { registerServerExtensions } from './server-extensions.js';
import { Command, Option } from 'commander';
import { z } from 'zod';
import * as api from '../admin-api/routes.js';
import { parseServerConfig, type ServerConfig } from '../server/config.js';
import { startServer, type RunningServer } from '../server/server.js';
import { createLogger, LOG_LEVELS, type Logger } from '../util/logger.js';
import { parseDuration } from '../util/duration.js';
import { parseListenAddress, type ListenAddress } from '../util/listen-address.js';
import { printable, printTable } from './table.js';
import { applyConfigFile, collect } from './config-file.js';
import { DEFAULT_SERVER_CONFIG, SERVER_CONFIG_FILE, serverConfigPath } from './server-config-file.js';

/**
 * `meshlink server ...`: parse, validate, call into src/server. Exit codes (docs/SERVER.md) come from
 * the error's exit class (src/errors.ts): 0 ok, 1 unexpected error, 2 usage/invalid option, 3 node not
 * found or ambiguous, 4 store secrets do not decrypt or the key file is missing or unsafe, 5 data dir not initialized, 6 a server already runs on
 * this data dir.
 */
const action = withFailureReport;

/** `--listen HOST:PORT` / `[v6]:PORT` (usage error, exit 2, when malformed). */
export const parseListen = (text: string): ListenAddress => parseListenAddress(text, '--listen', 'ML_ERR_USAGE');

/**
 * `--stun-listen HOST:PORT` (the alternate port is the next one; port 0: both picked free) and
 * `--no-stun`, as the config's stunListen: absent for the default, null for off.
 */
function stunListenConfig(enabled: boolean, text: string | undefined): { stunListen?: { host: string; port: number; alternatePort: number } | null } {
  if (!enabled) {
    if (text !== undefined) throw new MeshlinkError('ML_ERR_USAGE', '--stun-listen and --no-stun exclude each other');
    return { stunListen: null };
  }
  if (text === undefined) return {};
  const { host, port } = parseListenAddress(text, '--stun-listen', 'ML_ERR_USAGE');
  if (port === 65_535) throw new MeshlinkError('ML_ERR_USAGE', '--stun-listen: the port after it is the alternate port; 65535 has none');
  return { stunListen: { host, port, alternatePort: port === 0 ? 0 : port + 1 } };
}
/**
 * `--relay-listen HOST[:LOW-HIGH]` (`[v6]:LOW-HIGH`; HOST alone: any free port) and `--no-relay`, as
 * the config's relayListen: absent for the default, null for off.
 */
export function relayListenConfig(enabled: boolean, text: string | undefined): { relayListen?: { host: string; ports: { low: number; high: number } | null } | null } {
  if (!enabled) {
    if (text !== undefined) throw new MeshlinkError('ML_ERR_USAGE', '--relay-listen and --no-relay exclude each other');
    return { relayListen: null };
  }
  if (text === undefined) return {};
  const m = /^\[([0-9A-Fa-f:.]+)\](?::(\d{1,5})-(\d{1,5}))?$/.exec(text) ?? /^([0-9.]+|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)$/.exec(text) ?? /^([0-9.]+):(\d{1,5})-(\d{1,5})$/.exec(text);
  if (!m) throw new MeshlinkError('ML_ERR_USAGE', `invalid --relay-listen "${text}": expected an IP address, optionally with a port range: 0.0.0.0, 0.0.0.0:40000-40999, [::]:40000-40999`);
  const ports = m[2] === undefined ? null : { low: Number(m[2]), high: Number(m[3]) };
  if (ports && (ports.low < 1 || ports.high > 65_535 || ports.high <= ports.low)) throw new MeshlinkError('ML_ERR_USAGE', `invalid --relay-listen "${text}": the port range must be LOW-HIGH with 1 <= LOW < HIGH <= 65535`);
  return { relayListen: { host: m[1]!, ports } };
}

/** `--relay-bandwidth 100mbit` (kbit, mbit, gbit: bits per second) as bytes per second. */
export function relayBandwidth(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(kbit|mbit|gbit)$/i.exec(text.trim());
  if (!m) throw new MeshlinkError('ML_ERR_USAGE', `invalid --relay-bandwidth "${text}": expected a rate such as 100mbit, 1gbit or 500kbit`);
  const bits = Number(m[1]) * { kbit: 1e3, mbit: 1e6, gbit: 1e9 }[m[2]!.toLowerCase() as 'kbit' | 'mbit' | 'gbit'];
  return Math.round(bits / 8);
}

/** `--relay-max-allocations N`. */
function positiveInteger(flag: string, text: string): number {
  if (!/^\d{1,6}$/.test(text)) throw new MeshlinkError('ML_ERR_USAGE', `invalid ${flag} "${text}": expected a whole number`);
  return Number(text);
}
const dataDirOption = () => new Option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR, /var/lib/meshlink/server as root, else ~/.local/share/meshlink/server)');

const tokenCreateOptions = z.object({ dataDir: z.string().optional(), ttl: z.string().default('1h'), node: z.string().min(1).max(128).optional(), json: z.boolean().default(false), tag: z.array(z.string()).default([]) });
const listOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });
const removeOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });

/** A duration option of `server start`; a bad one names the option (as flag and as config-file key). */
function durationOption(key: string, text: string): number {
  try {
    return parseDuration(text);
  } catch (err) {
    const flag = `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    throw new MeshlinkError('ML_ERR_DURATION', `${flag} (${key}): ${(err as Error).message}`);
  }
}

type StartOptions = { dataDir?: string; store?: string; listen: string; publicUrl?: string; san: string[]; caKey: string; certLifetime: string; renewGrace: string; heartbeatInterval: string; offlineAfter: string; clientHelloTimeout: string; proxyProtocol?: boolean; proxyProtocolFrom?: string; logLevel?: string; metricsListen?: string; consoleListen?: string; consoleOrigin?: string; config?: string; keyFile?: string; stunListen?: string; stun: boolean; relayListen?: string; relay: boolean; relayPublicHost?: string; relayBandwidth: string; relayIdleTimeout: string; relayMaxAllocations: string; meshDirectRetry: string; releaseKey: string[] };

/** The options of `server start`, on a fresh command too (a reload parses the config file again with it). */
function defineStartOptions(cmd: Command): Command {
  return cmd
    .addOption(dataDirOption())
    .option('--listen <host:port>', 'address to listen on', '0.0.0.0:8443')
    .option('--public-url <url>', 'the URL agents reach this server at, e.g. https://mesh.example.com (behind NAT, a load balancer or a port mapping); stored: later starts keep it')
    .option('--san <name>', 'extra DNS name or IP for the server certificate (repeatable; stored: later starts keep the last list given)', collect, [])
    .addOption(new Option('--ca-key <type>', 'CA key type when a new CA is created').choices(['rsa2048', 'rsa4096']).default('rsa4096'))
    .option('--cert-lifetime <duration>', 'client certificate lifetime, e.g. 30d', '30d')
    .option('--renew-grace <duration>', 'how long after expiry /v1/renew still accepts a certificate', '7d')
    .option('--heartbeat-interval <duration>', 'how often agents send a heartbeat (sent to them in welcome)', '15s')
    .option('--offline-after <duration>', 'silence after which a node is offline and its session closed', '45s')
    .option('--client-hello-timeout <duration>', 'a TCP connection that sends no TLS ClientHello within this is closed before it takes a handshake slot (100ms..60s)', '3s')
    .option('--proxy-protocol', 'every connection to the public port must start with a PROXY protocol v2 header (from a TCP load balancer such as haproxy with send-proxy-v2); its client address is the one rate limits, logs and the mesh see (default: off)')
    .option('--proxy-protocol-from <cidrs>', 'with --proxy-protocol: accept the header only from these load balancers, comma-separated addresses or networks, e.g. 10.0.0.5,10.1.0.0/16; any other peer is closed (default: any peer)')
    .addOption(new Option('--log-level <level>', 'log level (default: MESHLINK_LOG_LEVEL or info)').choices([...LOG_LEVELS]))
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics (GET /metrics) on this local address, e.g. 127.0.0.1:9464 (default: MESHLINK_METRICS_LISTEN, else off)')
    .option('--console-listen <host:port>', 'serve the web console (plain HTTP) on this address, e.g. 127.0.0.1:8444; reach it remotely through an SSH tunnel or a TLS reverse proxy (default: off)')
    .option('--stun-listen <host:port>', 'UDP address of the STUN responder that lets agents behind NAT learn their public endpoint; the next port is its alternate (default 0.0.0.0:3478 when free)')
    .option('--no-stun', 'run no STUN responder (agents then report only the endpoints they know)')
    .option('--relay-listen <host[:low-high]>', 'IP address (and UDP port range) of the relay for pairs whose NATs allow no direct path; two ports per allocation (default :: dual-stack, else 0.0.0.0; ports the OS picks)')
    .option('--no-relay', 'run no relay (pairs behind hard NATs on both sides then have no path)')
    .option('--relay-public-host <host>', 'the address agents send relayed packets to (default: the host of the public URL)')
    .option('--relay-bandwidth <rate>', 'bandwidth cap per relay allocation and direction, e.g. 100mbit, 1gbit', '100mbit')
    .option('--relay-idle-timeout <duration>', 'a relay allocation without traffic for this long is closed and revoked (30s..1d)', '120s')
    .option('--relay-max-allocations <n>', 'relay allocations at most (two UDP ports each)', '1000')
    .option('--mesh-direct-retry <duration>', 'a pair whose direct path its agents report down goes to the relay for this long, then tries direct again; doubled after each failure in a row, up to 1h (10s..1d)', '5m')
    .option('--release-key <key>', 'release public key (ed25519:…, printed by `meshlink release keygen`) whose signature `upgrade set` requires on agent bundles (repeatable; not stored: give it on every start)', collect, [])
    .option('--console-origin <origin>', 'the origin browsers use for the console when it is not http://HOST:PORT of the request, e.g. https://console.example.com behind a reverse proxy')
    .option('--store <url>', 'a postgres:// URL: the PostgreSQL database that replicas share (default: MESHLINK_STORE, else the SQLite file in the data dir); needs --key-file; docs/CLUSTER.md')
    .option('--key-file <path>', 'the server key file that seals the CA key and mesh secrets, outside the data dir (default: MESHLINK_KEY_FILE, else /etc/meshlink/server.key for the system data dir, else <data dir>.key); created at first start')
    .option('--config <file>', `options of server start as one JSON object, e.g. {"listen": "0.0.0.0:8443", "consoleListen": "127.0.0.1:8444"}; flags win; SIGHUP reads it again (default: MESHLINK_SERVER_CONFIG, else ${DEFAULT_SERVER_CONFIG} if present)`);
}

/** `--proxy-protocol` and `--proxy-protocol-from` as the config's `proxyProtocol` (the list alone is a usage error). */
function proxyProtocolConfig(on: boolean, from: string | undefined): { from: string[] } | null {
  const list = from === undefined ? [] : from.split(',').map((p) => p.trim()).filter((p) => p !== '');
  if (!on) {
    if (from !== undefined) throw new MeshlinkError('ML_ERR_USAGE', '--proxy-protocol-from (proxyProtocolFrom) needs --proxy-protocol (proxyProtocol: true)');
    return null;
  }
  if (from !== undefined && list.length === 0) throw new MeshlinkError('ML_ERR_USAGE', '--proxy-protocol-from (proxyProtocolFrom): give at least one address or network');
  return { from: list };
}

/** `server start`'s options as the validated, frozen server config. */
function startConfig(opts: StartOptions): ServerConfig {
  return parseServerConfig({
    ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
    ...(opts.keyFile ? { keyFile: opts.keyFile } : {}),
    ...(opts.store ? { store: opts.store } : {}),
    listen: parseListen(opts.listen),
    sans: opts.san,
    publicUrl: opts.publicUrl ?? null,
    caKeyType: opts.caKey,
    certLifetimeMs: durationOption('certLifetime', opts.certLifetime),
    renewGraceMs: durationOption('renewGrace', opts.renewGrace),
    heartbeatIntervalMs: durationOption('heartbeatInterval', opts.heartbeatInterval),
    offlineAfterMs: durationOption('offlineAfter', opts.offlineAfter),
    clientHelloTimeoutMs: durationOption('clientHelloTimeout', opts.clientHelloTimeout),
    proxyProtocol: proxyProtocolConfig(opts.proxyProtocol === true, opts.proxyProtocolFrom),
    logLevel: opts.logLevel ?? process.env.MESHLINK_LOG_LEVEL ?? 'info',
    metricsListen: opts.metricsListen ? parseListenAddress(opts.metricsListen, '--metrics-listen', 'ML_ERR_USAGE') : null,
    consoleListen: opts.consoleListen ? parseListenAddress(opts.consoleListen, '--console-listen', 'ML_ERR_USAGE') : null,
    consoleOrigin: opts.consoleOrigin ?? null,
    ...stunListenConfig(opts.stun, opts.stunListen),
    ...relayListenConfig(opts.relay, opts.relayListen),
    relayPublicHost: opts.relayPublicHost ?? null,
    relayBytesPerSecond: relayBandwidth(opts.relayBandwidth),
    relayIdleMs: durationOption('relayIdleTimeout', opts.relayIdleTimeout),
    relayMaxAllocations: positiveInteger('--relay-max-allocations', opts.relayMaxAllocations),
    meshDirectRetryMs: durationOption('meshDirectRetry', opts.meshDirectRetry),
    releaseKeys: opts.releaseKey,
  });
}

/**
 * SIGHUP: the config file is read again, with the command line's flags still winning, and parsed into
 * a whole new config exactly as at start; the running server applies what it can live (reload.ts)
 * and each changed key is logged, applied or needing a restart. A file that is missing, unreadable
 * or invalid is logged as an error and changes nothing: the server keeps running as it was.
 */
function reloadConfig(started: Command, configFlag: string | undefined, running: RunningServer, logger: Logger): void {
  let next: ServerConfig;
  let configFile: string | null;
  try {
    configFile = serverConfigPath(configFlag);
    if (configFile === null) {
      logger.warn({ signal: 'SIGHUP' }, `nothing to reload: no config file (--config, MESHLINK_SERVER_CONFIG or ${DEFAULT_SERVER_CONFIG}); restart the server to apply changed flags`);
      return;
    }
    // A fresh command holds the defaults; the command line's values are carried over as typed.
    const fresh = defineStartOptions(new Command('start'));
    for (const option of started.options) {
      const key = option.attributeName();
      if (started.getOptionValueSource(key) === 'cli') fresh.setOptionValueWithSource(key, started.getOptionValue(key), 'cli');
    }
    applyConfigFile(fresh, configFile, SERVER_CONFIG_FILE);
    next = startConfig(fresh.opts<StartOptions>());
  } catch (err) {
    const e = err instanceof MeshlinkError ? err : new MeshlinkError('ML_ERR_CONFIG', (err as Error).message);
    logger.error({ signal: 'SIGHUP', code: e.code, reason: e.message }, 'config reload failed: nothing changed, the server keeps running');
    return;
  }
  const changes = running.reload(next);
  // Under `option`, not `key`: the logger redacts every `key` field (src/util/logger.ts).
  for (const c of changes) {
    if (c.applied) logger.info({ option: c.key, from: c.from, to: c.to }, 'config reload: applied');
    else logger.warn({ option: c.key, from: c.from, to: c.to }, 'config reload: changed, needs a restart (the running value stays)');
  }
  logger.info({ signal: 'SIGHUP', configFile, applied: changes.filter((c) => c.applied).length, needRestart: changes.filter((c) => !c.applied).length }, 'config reloaded');
}

export function registerServerCommands(program: Command): void {
  const server = program.command('server').description('control-plane server: CA, enrollment, agent gateway');

  const start = defineStartOptions(server.command('start').description('run the server in the foreground (logs JSON to stdout)'));
  start.action(
    action(async (flags: StartOptions, cmd: Command) => {
      // The config file fills what the command line left out; then everything is parsed as flags.
      const configFile = serverConfigPath(flags.config);
      if (configFile) applyConfigFile(cmd, configFile, SERVER_CONFIG_FILE);
      const config = startConfig(configFile ? cmd.opts<StartOptions>() : flags);
      const logger = createLogger({ name: 'meshlink-server', level: config.logLevel });
      let stopping = false;
      const running = await startServer(config, {
        logger,
        // Another server became the active one of the PostgreSQL store: stop, non-zero (systemd restarts it as a standby).
        onFatal: () => {
          process.exitCode = EXIT_CODES.serverUnavailable;
          stop('store');
        },
      });
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        logger.info({ signal }, 'shutting down');
        // Hard exit if a close hangs; unref so it never delays a clean exit.
        setTimeout(() => process.exit(EXIT_CODES.internal), 10_000).unref();
        running.close().catch((err: unknown) => {
          logger.error({ err }, 'error during shutdown');
          process.exitCode = EXIT_CODES.internal;
        });
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      // SIGHUP's default is to die without a word and leave the admin socket behind: reload instead.
      process.on('SIGHUP', () => {
        if (!stopping) reloadConfig(cmd, flags.config, running, logger);
      });
      removeAdminSocketOnExit(running.adminSocketPath);
    }),
  );

  server
    .command('status')
    .description('the public URL agents are told, the certificate names, the CA pin, and whether a server runs on the data dir')
    .addOption(dataDirOption())
    .option('--json', 'print one JSON object')
    .action(
      action(async (raw: unknown) => {
        const opts = listOptions.parse(raw);
        const s = await withOperator(opts.dataDir, (op) => op.call(api.serverStatus, {}));
        if (opts.json) {
          process.stdout.write(JSON.stringify(s) + '\n');
          return;
        }
        const lines = [
          `version      ${s.version}`,
          `running      ${s.running ? `yes, pid ${s.running.pid}, listening on ${s.running.listen} since ${s.running.startedAt}` : 'no'}`,
          `public URL   ${s.publicUrl ?? '- (start the server once)'}${s.publicUrlSource ? ` (${s.publicUrlSource})` : ''}`,
          `SANs         ${s.sans.length > 0 ? s.sans.join(', ') : '-'}`,
          `CA pin       ${s.caPin ?? '-'}`,
          `nodes        ${s.nodes}${s.running ? `, ${s.running.onlineNodes} online` : ''}`,
        ];
        process.stdout.write(lines.join('\n') + '\n');
      }),
    );

  server
    .command('backup')
    .description('write a consistent copy of the store to FILE (online through the running server, else from the store); its secrets stay sealed with the server key file, which you back up apart')
    .argument('<file>', 'where to write the backup (replaced atomically; mode 0600)')
    .addOption(dataDirOption())
    .option('--json', 'print {"path","bytes"}')
    .action(
      action(async (file: string, raw: unknown) => {
        const opts = listOptions.parse(raw);
        const written = await withOperator(opts.dataDir, (op) => op.call(api.backupStore, { path: resolve(file) }));
        if (opts.json) process.stdout.write(JSON.stringify(written) + '\n');
        else process.stdout.write(`backed up the store to ${written.path} (${written.bytes} bytes); keep the server key file apart from it\n`);
      }),
    );

  server
    .command('restore')
    .description('replace the data dir\'s store with the backup FILE (the server must be stopped); start it with the key file that sealed the backup')
    .argument('<file>', 'a file written by `meshlink server backup`')
    .addOption(dataDirOption())
    .option('--json', 'print {"path","bytes"}')
    .action(
      action(async (file: string, raw: unknown) => {
        const opts = listOptions.parse(raw);
        const restored = await restoreStore(file, dataDirOf(opts.dataDir));
        if (opts.json) process.stdout.write(JSON.stringify(restored) + '\n');
        else process.stdout.write(`restored ${resolve(file)} to ${restored.path}; start the server with the key file that sealed it (--key-file when it is not at its default place)\n`);
      }),
    );

  // CA rotation (docs/SERVER.md, "Rotating the CA"): the running server does the work; this only asks.
  const ca = server.command('ca').description('the CA: status and rotation (start, issue, retire) without disconnecting agents');
  const caRotateOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false), force: z.boolean().default(false) });
  const printCaStatus = (s: api.CaStatus): void => {
    const lines = [
      `phase        ${s.phase}${s.startedAt ? ` (started ${s.startedAt})` : ''}`,
      `CA           ${s.current.pin}  ${s.current.nodes} node(s)${s.phase === 'issuing' ? ' (old: being retired)' : s.phase === 'started' ? ' (issues)' : ''}`,
      `             SHA-256 ${s.current.fingerprint256}`,
      ...(s.next ? [`next CA      ${s.next.pin}  ${s.next.nodes} node(s)${s.phase === 'issuing' ? ' (issues)' : ' (trusted, not issuing yet)'}`, `             SHA-256 ${s.next.fingerprint256}`] : []),
      ...(s.otherNodes > 0 ? [`other        ${s.otherNodes} node(s) on a retired CA (re-enroll them)`] : []),
    ];
    process.stdout.write(lines.join('\n') + '\n');
  };
  ca.command('status')
    .description('rotation phase, the fingerprints of the CA (and of the next CA), and how many live nodes hold a certificate of each')
    .addOption(dataDirOption())
    .option('--json', 'print the status as JSON')
    .action(
      action(async (raw: unknown) => {
        const opts = listOptions.parse(raw);
        const status = await withOperator(opts.dataDir, (op) => op.call(api.caStatus, {}));
        if (opts.json) process.stdout.write(JSON.stringify(status) + '\n');
        else printCaStatus(status);
      }),
    );
  ca.command('rotate')
    .description('one phase of a CA rotation: start (a next CA, trusted and handed to every agent), issue (the next CA issues), retire (the old CA is dropped)')
    .argument('<phase>', 'start | issue | retire')
    .addOption(dataDirOption())
    .option('--force', 'retire even though live nodes still hold a certificate of the old CA (they must re-enroll)')
    .option('--json', 'print the status after the step as JSON')
    .action(
      action(async (phase: string, raw: unknown) => {
        const opts = caRotateOptions.parse(raw);
        const parsedPhase = z.enum(['start', 'add', 'issue', 'retire']).safeParse(phase);
        if (!parsedPhase.success) throw new MeshlinkError('ML_ERR_USAGE', `unknown phase "${printable(phase.slice(0, 40))}": expected start, issue or retire`);
        const step = parsedPhase.data === 'add' ? 'start' : parsedPhase.data;
        const status = await withOperator(opts.dataDir, (op) => op.call(api.caRotate, { phase: step, force: opts.force }));
        if (opts.json) {
          process.stdout.write(JSON.stringify(status) + '\n');
          return;
        }
        if (status.retiredPin) process.stdout.write(`retired CA ${status.retiredPin}${status.stranded && status.stranded.length > 0 ? `; ${status.stranded.length} node(s) on it must re-enroll` : ''}\n`);
        printCaStatus(status);
      }),
    );

  const token = server.command('token').description('enrollment tokens');
  token
    .command('create')
    .description('create a one-time enrollment token and print the agent command')
    .addOption(dataDirOption())
    .option('--ttl <duration>', 'token lifetime, e.g. 1h, 90m', '1h')
    .option('--node <id>', 're-enrollment token that keeps this node id (for an agent whose certificate expired)')
    .option('--json', 'print {"token","expiresAt","caPin","enrollCommand"}')
    .option('--tag <name>', 'tag for the node that enrolls with this token (repeatable; mesh policy)', collect, [])
    .action(
      action(async (raw: unknown) => {
        const opts = tokenCreateOptions.parse(raw);
        const ttlMs = parseDuration(opts.ttl);
        const nodeId = opts.node ?? null;
        const created = await withOperator(opts.dataDir, (op) =>
          opts.tag.length > 0 ? op.call(api.createTaggedToken, { ttlMs, nodeId, tags: opts.tag }) : op.call(api.createToken, { ttlMs, nodeId }),
        );
        if (opts.json) {
          const { token: t, expiresAt, caPin, enrollCommand } = created;
          process.stdout.write(JSON.stringify({ token: t, expiresAt, caPin, enrollCommand }) + '\n');
        } else {
          process.stdout.write(created.enrollCommand + '\n');
          process.stderr.write(`one-time token, expires ${created.expiresAt}${created.nodeId ? `, keeps node id ${created.nodeId}` : ''}\n`);
        }
      }),
    );

  const nodes = server.command('nodes').description('enrolled nodes');
  nodes
    .command('list')
    .description('list live nodes (online/lastSeen from the running server; offline when it is stopped)')
    .addOption(dataDirOption())
    .option('--json', 'print a JSON array')
    .action(
      action(async (raw: unknown) => {
        const opts = listOptions.parse(raw);
        const list = await withOperator(opts.dataDir, (op) => op.call(api.listNodes, {}));
        if (opts.json) {
          process.stdout.write(JSON.stringify(list) + '\n');
          return;
        }
        const rows = [
          ['ID', 'HOSTNAME', 'ONLINE', 'LAST SEEN', 'MESH IP', 'TAGS', 'CERT EXPIRES', 'AGENT'],
          ...list.map((n) => [n.id, n.hostname, n.online ? 'yes' : 'no', n.lastSeen ?? '-', n.meshIp ?? '-', n.tags && n.tags.length > 0 ? n.tags.join(',') : '-', n.certNotAfter ?? '-', n.agentVersion ?? '-']),
        ];
        printTable(rows);
      }),
    );
  nodes
    .command('remove')
    .description('remove a node: revoke its certificates and close its connection at once')
    .argument('<idOrHostname>', 'node id, or a hostname that names exactly one live node')
    .addOption(dataDirOption())
    .option('--json', 'print {"id","hostname","revokedSerials","closedConnections"}')
    .action(
      action(async (idOrHostname: string, raw: unknown) => {
        const opts = removeOptions.parse(raw);
        const result = await withOperator(opts.dataDir, (op) => op.call(api.removeNode, { node: idOrHostname }));
        if (opts.json) process.stdout.write(JSON.stringify(result) + '\n');
        else process.stdout.write(`removed ${result.id} (${printable(result.hostname)}): ${result.revokedSerials.length} certificate(s) revoked, ${result.closedConnections} connection(s) closed\n`);
      }),
    );

  // Feature subcommands last, so they can extend the groups above (e.g. `server nodes tag`).
  registerServerExtensions(server);
}

/**
 * A clean close removes the admin socket (net.Server unlinks it); every other way out (the hard-exit
 * timer, an uncaught error) runs 'exit' handlers too: remove it there, but only if it is still the
 * socket this process created (same inode), never one a later server made.
 */
function removeAdminSocketOnExit(socketPath: string): void {
  const ours = statSync(socketPath, { throwIfNoEntry: false })?.ino;
  process.once('exit', () => {
    try {
      const now = statSync(socketPath, { throwIfNoEntry: false });
      if (now !== undefined && now.isSocket() && now.ino === ours) unlinkSync(socketPath);
    } catch {
      /* exiting anyway */
    }
  });
}
