import { MeshlinkError } from '../errors.js';
import { chmod, unlink } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { z } from 'zod';
import type { Logger } from '../util/logger.js';
import { readJson, sendError, sendJson } from './http-json.js';
import { createEnrollmentToken, listNodes, removeNode, type LiveParts } from './nodes.js';
import type { Store } from './store/store.js';
import type { AdminRoutes } from './admin-routes.js';
import { AuditLog } from './audit-log.js';

/**
 * The local admin channel: HTTP on the unix socket `<dataDir>/admin.sock`, mode 0600 inside the 0700
 * data dir. Authentication is the file permission: whoever can open the socket (the server's user
 * and root) is the operator. Never exposed on TCP.
 *
 *   GET  /v1/health                      → {ok: true, pid}
 *   POST /v1/tokens {ttlMs, nodeId?}     → {token, expiresAt, caPin, enrollCommand, nodeId}
 *   GET  /v1/nodes                       → NodeListing[]
 *   POST /v1/nodes/remove {node}         → {id, hostname, revokedSerials, closedConnections}
 */

const ADMIN_BODY_CAP = 16 * 1024;
const tokenBody = z.object({ ttlMs: z.number().int().min(1_000).max(30 * 86_400_000), nodeId: z.string().min(1).max(128).nullish() }).strict();
const removeBody = z.object({ node: z.string().min(1).max(253) }).strict();

export interface AdminDeps {
  store: Store;
  live: LiveParts;
  logger: Logger;
  /** Routes added by features, served after the built-ins. */
  routes?: AdminRoutes;
}

export async function startAdminServer(socketPath: string, deps: AdminDeps): Promise<Server> {
  const log = deps.logger.child({ component: 'admin' });
  const auditLog = AuditLog.of(deps.store);
  const server = createServer({ headersTimeout: 5_000, requestTimeout: 10_000 }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!(err instanceof MeshlinkError) || err.status >= 500) log.error({ err, path: req.url }, 'admin request failed');
      sendError(res, err);
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const route = `${req.method ?? 'GET'} ${(req.url ?? '/').split('?')[0]}`;
    if (req.method === 'GET' || deps.routes?.auditsItself(route)) {
      await dispatch(route, req, res);
      return;
    }
    // Every state-changing admin operation is audited: who (the CLI's OS user, sent as a header; the
    // socket's file permission is the authentication), what, which node, when, and the result.
    const audit = { actor: actorOf(req), operation: route.replace(/^\S+ \/v1\//, ''), nodeId: null as string | null, target: null as string | null };
    try {
      const outcome = await dispatch(route, req, res);
      auditLog.record({ ...audit, source: 'admin', nodeId: outcome?.nodeId ?? null, target: outcome?.target ?? null, result: 'ok' });
    } catch (err) {
      auditLog.record({ ...audit, source: 'admin', result: `error:${err instanceof MeshlinkError ? err.code : 'ML_ERR_SERVER_INTERNAL'}` });
      throw err;
    }
  }

  /** Serves one route; returns what the audit log should name (node, target) for built-ins. */
  async function dispatch(route: string, req: IncomingMessage, res: ServerResponse): Promise<{ nodeId?: string | null; target?: string } | void> {
    switch (route) {
      case 'GET /v1/health':
        sendJson(res, 200, { ok: true, pid: process.pid });
        return;
      case 'POST /v1/tokens': {
        const body = await readJson(req, ADMIN_BODY_CAP, tokenBody);
        const created = createEnrollmentToken(deps.store, { ttlMs: body.ttlMs, nodeId: body.nodeId ?? null });
        log.info({ expiresAt: created.expiresAt, nodeId: created.nodeId }, 'enrollment token created');
        sendJson(res, 200, created);
        return { nodeId: created.nodeId, target: `expires ${created.expiresAt}` };
      }
      case 'GET /v1/nodes':
        sendJson(res, 200, listNodes(deps.store, deps.live));
        return;
      case 'POST /v1/nodes/remove': {
        const body = await readJson(req, ADMIN_BODY_CAP, removeBody);
        const result = removeNode(deps.store, body.node, deps.live);
        log.info({ nodeId: result.id, hostname: result.hostname, revoked: result.revokedSerials.length, closed: result.closedConnections }, 'node removed');
        sendJson(res, 200, result);
        return { nodeId: result.id, target: result.hostname };
      }
      default: {
        const handler = deps.routes?.lookup(route);
        if (!handler) throw new MeshlinkError('ML_ERR_NOT_FOUND', `no admin endpoint ${route}`);
        await handler(req, res);
      }
    }
  }

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const handler = deps.routes?.lookupUpgrade((req.url ?? '/').split('?')[0] ?? '/');
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

/** The operator named by the CLI (`x-meshlink-actor`), or "unknown"; printable ASCII, at most 64 characters. */
function actorOf(req: IncomingMessage): string {
  const raw = req.headers['x-meshlink-actor'];
  const value = Array.isArray(raw) ? raw[0] : raw;
  return value && /^[\x21-\x7e]{1,64}$/.test(value) ? value : 'unknown';
}

/** The local OS user running this CLI, sent as the audit actor. */
function localActor(): string {
  try {
    return userInfo().username.replace(/[^\x21-\x7e]/g, '?').slice(0, 64) || 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Admin socket unreachable (no server running): the CLI falls back to the store. */
export class AdminUnavailable extends Error {}

/** One request to the admin socket. Errors from the server are rethrown as MeshlinkError with its code. */
export function adminRequest<T>(socketPath: string, method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: {
          'x-meshlink-actor': localActor(),
          ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
        },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > 16 * 1024 * 1024) req.destroy(new Error('admin response too large'));
          else chunks.push(c);
        });
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            reject(new Error(`admin socket answered ${res.statusCode} with a non-JSON body`));
            return;
          }
          if (res.statusCode === 200) resolve(parsed as T);
          else {
            // Any code may come back (an ops or mesh code, one from a newer server): rebuild, never cast.
            const e = (parsed ?? {}) as { code?: unknown; message?: unknown };
            reject(MeshlinkError.fromWire(e.code, e.message, { fallback: `admin request failed (${res.statusCode})` }));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('admin request timed out')));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') reject(new AdminUnavailable(`no server answers on ${socketPath}`));
      else reject(err);
    });
    req.end(payload);
  });
}
