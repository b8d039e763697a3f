import { createServer, type Server, type Socket } from 'node:net';
import { printable } from './table.js';
import { Option, type Command } from 'commander';
import { z } from 'zod';
import { localActor } from '../admin-api/actor.js';
import { AdminClient } from '../admin-api/client.js';
import { carryConnection, type TcpTunnelRequest } from '../admin-api/tcp-tunnel-client.js';
import { MeshlinkError } from '../errors.js';
import { parseListenAddress } from '../util/listen-address.js';
import { reportFailure, withFailureReport } from './failure.js';
import { adminSocketOf } from './operator.js';

/**
 * `meshlink server tunnel NODE:PORT` (docs/OPERATIONS.md, "Tunnels"): local TCP connections (or,
 * with --stdio, standard input and output) carried to 127.0.0.1:PORT on the node (--host: another
 * host), each over its own agent stream, through the running server's admin socket. The agent
 * connects only to targets on its --allow-tunnel list.
 */

/** `NODE:PORT` → node and port; the node is an id or a hostname (no colon in either). */
export function parseTunnelSpec(spec: string): { node: string; port: number } {
  const m = /^([^:\s]+):(\d{1,5})$/.exec(spec);
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) throw new MeshlinkError('ML_ERR_USAGE', `expected NODE:PORT (port 1-65535), got ${JSON.stringify(spec)}`);
  return { node: m[1]!, port };
}

const optionsSchema = z.object({
  host: z.string().min(1).max(253).default('127.0.0.1'),
  listen: z.string().optional(),
  stdio: z.boolean().default(false),
  json: z.boolean().default(false),
  dataDir: z.string().optional(),
});

export function registerTunnelCommand(server: Command): void {
  server
    .command('tunnel')
    .description('forward local TCP connections to PORT on a node, through its agent (agent needs --allow-tunnel); runs until interrupted')
    .argument('<node:port>', 'node id or hostname, and the port to reach on the node')
    .option('--host <host>', 'connect to this host from the node instead of 127.0.0.1')
    .option('--listen <host:port>', 'local address to accept connections on (default 127.0.0.1:0, any free port)')
    .option('--stdio', 'carry one connection over standard input and output (e.g. ssh -o ProxyCommand), then exit')
    .option('--json', 'print the listening address as one JSON line')
    .addOption(new Option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR or the documented default)'))
    .action(
      withFailureReport(async (spec: string, raw: unknown) => {
        const o = optionsSchema.parse(raw);
        const { node, port } = parseTunnelSpec(spec);
        if (o.stdio && o.listen) throw new MeshlinkError('ML_ERR_USAGE', '--stdio and --listen exclude each other');
        const socket = adminSocketOf(o.dataDir);
        const req: TcpTunnelRequest = { node, actor: localActor(), host: o.host, port };
        if (o.stdio) {
          await carryStdio(socket, req);
          return;
        }
        // Say so at once, not at the first connection: a listener with no server behind it is useless.
        if (!(await new AdminClient(socket).reachable())) throw new MeshlinkError('ML_ERR_SERVER_NOT_RUNNING', `no server answers on ${socket}`);
        await listen(socket, req, parseListenAddress(o.listen ?? '127.0.0.1:0', '--listen', 'ML_ERR_USAGE'), o.json);
      }),
    );
}

/** One connection over stdin/stdout; failures exit with their class's number, like every ops command. */
async function carryStdio(socket: string, req: TcpTunnelRequest): Promise<void> {
  let code = 0;
  try {
    await carryConnection(socket, req, { input: process.stdin, output: process.stdout });
  } catch (err) {
    reportFailure(err);
    code = typeof process.exitCode === 'number' ? process.exitCode : 1;
  }
  // stdin may be a terminal or a pipe its writer keeps open (ssh does, after a failure too), which
  // would keep the process alive: leave once stdout and stderr are flushed.
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}

async function listen(adminSocket: string, req: TcpTunnelRequest, at: { host: string; port: number }, json: boolean): Promise<void> {
  const open = new Set<Socket>();
  const server: Server = createServer({ allowHalfOpen: true, noDelay: true }, (conn) => {
    open.add(conn);
    conn.once('close', () => open.delete(conn));
    const peer = `${conn.remoteAddress}:${conn.remotePort}`;
    carryConnection(adminSocket, req, { input: conn, output: conn }).then(
      (closed) => {
        if (!closed) conn.destroy(); // the local side reset: the agent's end was reset too
      },
      (err: unknown) => {
        // One connection's failure (refused target, reset) ends that connection only.
        const e = err instanceof MeshlinkError ? err : new MeshlinkError('ML_ERR_INTERNAL', String((err as Error)?.message ?? err));
        process.stderr.write(`tunnel connection from ${peer}: error ${e.code}: ${printable(e.message)}\n`);
        if (!conn.destroyed) conn.resetAndDestroy();
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new MeshlinkError('ML_ERR_USAGE', `cannot listen on ${at.host}:${at.port}: ${err.code ?? err.message}`)));
    server.listen(at.port, at.host, () => resolve());
  });
  const addr = server.address() as { address: string; port: number };
  const local = addr.address.includes(':') ? `[${addr.address}]:${addr.port}` : `${addr.address}:${addr.port}`;
  const target = req.host.includes(':') ? `[${req.host}]:${req.port}` : `${req.host}:${req.port}`;
  process.stdout.write(json ? JSON.stringify({ listen: local, host: addr.address, port: addr.port, node: req.node, target }) + '\n' : `listening on ${local}, forwarding to ${target} on ${req.node} (Ctrl-C to stop)\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      server.close();
      // Open connections are cut, as a closed port-forward does: the agent's ends are reset with them.
      for (const c of open) c.resetAndDestroy();
      resolve();
      // The cancelled operations' WebSockets need not finish their closing handshakes: the server
      // treats a vanished client as a cancel too.
      process.stdout.write('', () => process.exit(0));
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
