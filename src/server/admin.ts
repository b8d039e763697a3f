import { chmod, unlink } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { ACTOR_RE } from '../admin-api/actor.js';
import { DEFAULT_MAX_BODY, type AdminRoute } from '../admin-api/route.js';
import { health } from '../admin-api/routes.js';
import { MeshlinkError } from '../errors.js';
import type { Logger } from '../util/logger.js';
import type { AdminRoutes } from './admin-routes.js';
import { readBody, sendError, sendJson } from './http-json.js';

/**
 * The local admin channel: HTTP on the unix socket `<dataDir>/admin.sock`, mode 0600 inside the 0700
 * data dir. Authentication is the file permission: whoever can open the socket (the server's user
 * and root) is the operator. Never exposed on TCP. This module is only the transport: the routes, their
 * schemas and their handlers are the operator API's (src/admin-api/routes.ts, admin-routes.ts).
 */

export async function startAdminServer(socketPath: string, deps: { routes: AdminRoutes; logger: Logger }): Promise<Server> {
  const log = deps.logger.child({ component: 'admin' });
  if (!deps.routes.lookup(`GET ${health.path}`)) deps.routes.handle(health, () => ({ ok: true as const, pid: process.pid }));

  const server = createServer({ headersTimeout: 5_000, requestTimeout: 10_000 }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!(err instanceof MeshlinkError) || err.status >= 500) log.error({ err, path: req.url }, 'admin request failed');
      sendError(res, err);
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const route = deps.routes.lookup(`${req.method ?? 'GET'} ${url.pathname}`);
    if (!route) throw new MeshlinkError('ML_ERR_NOT_FOUND', `no admin endpoint ${req.method ?? 'GET'} ${url.pathname}`);
    const { input, body } = await readInput(route, req, url);
    sendJson(res, 200, await deps.routes.run(route, input, { actor: actorOf(req), ...(body ? { body } : {}) }));
  }

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const handler = deps.routes.lookupUpgrade((req.url ?? '/').split('?')[0] ?? '/');
    if (!handler) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    handler(req, socket, head);
  });

  await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await chmod(socketPath, 0o600);
  return server;
}

/**
 * A GET's input is its query string; a POST's its JSON body, or for an upload the query string with the
 * raw body beside it. The web console's API (console/http.ts) reads its requests with it too.
 */
export async function readInput(route: AdminRoute, req: IncomingMessage, url: URL): Promise<{ input: unknown; body?: Buffer }> {
  const query = Object.fromEntries(url.searchParams);
  if (route.method === 'GET') return { input: query };
  if (route.upload !== undefined) return { input: query, body: await readBody(req, route.upload) };
  const raw = await readBody(req, route.maxBody ?? DEFAULT_MAX_BODY);
  if (raw.length === 0) return { input: {} };
  try {
    return { input: JSON.parse(raw.toString('utf8')) as unknown };
  } catch {
    throw new MeshlinkError('ML_ERR_BAD_REQUEST', 'request body is not valid JSON');
  }
}

/** The operator the client names (`x-meshlink-actor`), or "unknown". */
function actorOf(req: IncomingMessage): string {
  const raw = req.headers['x-meshlink-actor'];
  const value = Array.isArray(raw) ? raw[0] : raw;
  return value && ACTOR_RE.test(value) ? value : 'unknown';
}
