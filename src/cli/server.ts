import { statSync, unlinkSync } from 'node:fs';
import { EXIT_CODES } from '../errors.js';
import { withFailureReport } from './failure.js';
import { withOperator } from './operator.js';
import { registerServerExtensions } from './server-extensions.js';
import { Command, Option } from 'commander';
import { z } from 'zod';
import * as api from '../admin-api/routes.js';
import { parseServerConfig } from '../server/config.js';
import { startServer } from '../server/server.js';
import { createLogger, LOG_LEVELS } from '../util/logger.js';
import { parseDuration } from '../util/duration.js';
import { parseListenAddress, type ListenAddress } from '../util/listen-address.js';
import { printable, printTable } from './table.js';

/**
 * `meshlink server ...`: parse, validate, call into src/server. Exit codes (docs/SERVER.md) come from
 * the error's exit class (src/errors.ts): 0 ok, 1 unexpected error, 2 usage/invalid option, 3 node not
 * found or ambiguous, 4 CA passphrase wrong, 5 data dir not initialized, 6 a server already runs on
 * this data dir.
 */
const action = withFailureReport;

/** `--listen HOST:PORT` / `[v6]:PORT` (usage error, exit 2, when malformed). */
export const parseListen = (text: string): ListenAddress => parseListenAddress(text, '--listen', 'ML_ERR_USAGE');

const collect = (value: string, previous: string[]): string[] => [...previous, value];
const dataDirOption = () => new Option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR, /var/lib/meshlink/server as root, else ~/.local/share/meshlink/server)');

const tokenCreateOptions = z.object({ dataDir: z.string().optional(), ttl: z.string().default('1h'), node: z.string().min(1).max(128).optional(), json: z.boolean().default(false), tag: z.array(z.string()).default([]) });
const listOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });
const removeOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });

export function registerServerCommands(program: Command): void {
  const server = program.command('server').description('control-plane server: CA, enrollment, agent gateway');

  server
    .command('start')
    .description('run the server in the foreground (logs JSON to stdout)')
    .addOption(dataDirOption())
    .option('--listen <host:port>', 'address to listen on', '0.0.0.0:8443')
    .option('--public-url <url>', 'the URL agents reach this server at, e.g. https://mesh.example.com (behind NAT, a load balancer or a port mapping); stored: later starts keep it')
    .option('--san <name>', 'extra DNS name or IP for the server certificate (repeatable; stored: later starts keep the last list given)', collect, [])
    .addOption(new Option('--ca-key <type>', 'CA key type when a new CA is created').choices(['rsa2048', 'rsa4096']).default('rsa4096'))
    .option('--cert-lifetime <duration>', 'client certificate lifetime, e.g. 30d', '30d')
    .option('--renew-grace <duration>', 'how long after expiry /v1/renew still accepts a certificate', '7d')
    .option('--heartbeat-interval <duration>', 'how often agents send a heartbeat (sent to them in welcome)', '15s')
    .option('--offline-after <duration>', 'silence after which a node is offline and its session closed', '45s')
    .addOption(new Option('--log-level <level>', 'log level (default: MESHLINK_LOG_LEVEL or info)').choices([...LOG_LEVELS]))
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics (GET /metrics) on this local address, e.g. 127.0.0.1:9464 (default: MESHLINK_METRICS_LISTEN, else off)')
    .option('--console-listen <host:port>', 'serve the web console (plain HTTP) on this address, e.g. 127.0.0.1:8444; reach it remotely through an SSH tunnel or a TLS reverse proxy (default: off)')
    .option('--console-origin <origin>', 'the origin browsers use for the console when it is not http://HOST:PORT of the request, e.g. https://console.example.com behind a reverse proxy')
    .action(
      action(async (opts: { dataDir?: string; listen: string; publicUrl?: string; san: string[]; caKey: string; certLifetime: string; renewGrace: string; heartbeatInterval: string; offlineAfter: string; logLevel?: string; metricsListen?: string; consoleListen?: string; consoleOrigin?: string }) => {
        const config = parseServerConfig({
          ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
          listen: parseListen(opts.listen),
          sans: opts.san,
          publicUrl: opts.publicUrl ?? null,
          caKeyType: opts.caKey,
          certLifetimeMs: parseDuration(opts.certLifetime),
          renewGraceMs: parseDuration(opts.renewGrace),
          heartbeatIntervalMs: parseDuration(opts.heartbeatInterval),
          offlineAfterMs: parseDuration(opts.offlineAfter),
          logLevel: opts.logLevel ?? process.env.MESHLINK_LOG_LEVEL ?? 'info',
          metricsListen: opts.metricsListen ? parseListenAddress(opts.metricsListen, '--metrics-listen', 'ML_ERR_USAGE') : null,
          consoleListen: opts.consoleListen ? parseListenAddress(opts.consoleListen, '--console-listen', 'ML_ERR_USAGE') : null,
          consoleOrigin: opts.consoleOrigin ?? null,
        });
        const logger = createLogger({ name: 'meshlink-server', level: config.logLevel });
        const running = await startServer(config, { logger });
        let stopping = false;
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
        // SIGHUP's default is to die without a word and leave the admin socket behind. The server has
        // no config file and logs to stdout (the service manager reopens that), so there is nothing to
        // reload: say so and keep running.
        process.on('SIGHUP', () => logger.warn({ signal: 'SIGHUP' }, 'nothing to reload: the server has no config file and logs to stdout; restart it to apply changed flags'));
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
