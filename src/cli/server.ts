import { EXIT_CODES } from '../errors.js';
import { withServerOrStore } from './server-access.js';
import { withFailureReport } from './failure.js';
import { registerServerExtensions } from './server-extensions.js';
import { createTaggedToken } from '../server/mesh/operator.js';
import { Command, Option } from 'commander';
import { z } from 'zod';
import { adminRequest } from '../server/admin.js';
import { parseServerConfig } from '../server/config.js';
import { createEnrollmentToken, listNodes, removeNode, type NodeListing, type RemovalResult, type TokenCreation } from '../server/nodes.js';
import { startServer } from '../server/server.js';
import { DEFAULT_TOKEN_TTL_MS } from '../server/tokens.js';
import { createLogger, LOG_LEVELS } from '../util/logger.js';
import { parseDuration } from '../util/duration.js';
import { parseListenAddress, type ListenAddress } from '../util/listen-address.js';
import { printTable } from './table.js';

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
const removeOptions = z.object({ dataDir: z.string().optional() });

/** Runs `viaAdmin` against a running server, else `direct` on the store file (server stopped). */

export function registerServerCommands(program: Command): void {
  const server = program.command('server').description('control-plane server: CA, enrollment, agent gateway');

  server
    .command('start')
    .description('run the server in the foreground (logs JSON to stdout)')
    .addOption(dataDirOption())
    .option('--listen <host:port>', 'address to listen on', '0.0.0.0:8443')
    .option('--san <name>', 'extra DNS name or IP for the server certificate (repeatable)', collect, [])
    .addOption(new Option('--ca-key <type>', 'CA key type when a new CA is created').choices(['rsa2048', 'rsa4096']).default('rsa4096'))
    .option('--cert-lifetime <duration>', 'client certificate lifetime, e.g. 30d', '30d')
    .option('--renew-grace <duration>', 'how long after expiry /v1/renew still accepts a certificate', '7d')
    .option('--heartbeat-interval <duration>', 'how often agents send a heartbeat (sent to them in welcome)', '15s')
    .option('--offline-after <duration>', 'silence after which a node is offline and its session closed', '45s')
    .addOption(new Option('--log-level <level>', 'log level (default: MESHLINK_LOG_LEVEL or info)').choices([...LOG_LEVELS]))
    .action(
      action(async (opts: { dataDir?: string; listen: string; san: string[]; caKey: string; certLifetime: string; renewGrace: string; heartbeatInterval: string; offlineAfter: string; logLevel?: string }) => {
        const config = parseServerConfig({
          ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
          listen: parseListen(opts.listen),
          sans: opts.san,
          caKeyType: opts.caKey,
          certLifetimeMs: parseDuration(opts.certLifetime),
          renewGraceMs: parseDuration(opts.renewGrace),
          heartbeatIntervalMs: parseDuration(opts.heartbeatInterval),
          offlineAfterMs: parseDuration(opts.offlineAfter),
          logLevel: opts.logLevel ?? process.env.MESHLINK_LOG_LEVEL ?? 'info',
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
        const ttlMs = opts.ttl ? parseDuration(opts.ttl) : DEFAULT_TOKEN_TTL_MS;
        const created = await withServerOrStore<TokenCreation>(
          opts.dataDir,
          (socket) => (opts.tag.length > 0 ? adminRequest(socket, 'POST', '/v1/mesh/tokens', { ttlMs, nodeId: opts.node ?? null, tags: opts.tag }) : adminRequest(socket, 'POST', '/v1/tokens', { ttlMs, nodeId: opts.node ?? null })),
          (store) => (opts.tag.length > 0 ? createTaggedToken(store, { ttlMs, nodeId: opts.node ?? null, tags: opts.tag }) : createEnrollmentToken(store, { ttlMs, nodeId: opts.node ?? null })),
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
        const list = await withServerOrStore<NodeListing[]>(
          opts.dataDir,
          (socket) => adminRequest(socket, 'GET', '/v1/nodes'),
          (store) => listNodes(store),
        );
        if (opts.json) {
          process.stdout.write(JSON.stringify(list) + '\n');
          return;
        }
        const rows = [['ID', 'HOSTNAME', 'ONLINE', 'LAST SEEN', 'CERT EXPIRES', 'AGENT'], ...list.map((n) => [n.id, n.hostname, n.online ? 'yes' : 'no', n.lastSeen ?? '-', n.certNotAfter ?? '-', n.agentVersion ?? '-'])];
        printTable(rows);
      }),
    );
  nodes
    .command('remove')
    .description('remove a node: revoke its certificates and close its connection at once')
    .argument('<idOrHostname>', 'node id, or a hostname that names exactly one live node')
    .addOption(dataDirOption())
    .action(
      action(async (idOrHostname: string, raw: unknown) => {
        const opts = removeOptions.parse(raw);
        const result = await withServerOrStore<RemovalResult>(
          opts.dataDir,
          (socket) => adminRequest(socket, 'POST', '/v1/nodes/remove', { node: idOrHostname }),
          (store) => removeNode(store, idOrHostname),
        );
        process.stdout.write(`removed ${result.id} (${result.hostname}): ${result.revokedSerials.length} certificate(s) revoked, ${result.closedConnections} connection(s) closed\n`);
      }),
    );

  // Feature subcommands last, so they can extend the groups above (e.g. `server nodes tag`).
  registerServerExtensions(server);
}

