import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { MeshlinkError } from '../errors.js';
import { routeKey, type AdminRoute, type RouteParsedInput, type RouteResult } from '../admin-api/route.js';
import { zodErrorText } from '../util/zod-error.js';
import type { AuditLog } from './audit-log.js';

/**
 * The handlers of the operator API (src/admin-api/routes.ts), one per route, registered by the core and
 * by the features. Both ways an operator's request arrives run through `run` here: the admin socket
 * (admin.ts) and, with no server running, the offline operator (operator/offline.ts). So a request is
 * validated by the same schema, served by the same handler and audited the same way either way.
 *
 * Every state-changing route (not GET) is audited: who (the operator the client names; the socket's
 * file permission is the authentication), what (the route's path below /v1/), which node and target
 * (from the handler's answer), when, and the result. A route whose result is known only later audits
 * itself (`audit: 'self'`: the ops upgrade, which records the build it stored).
 */

export interface AdminCall {
  /** The operator, as the client named it ("unknown" when it did not). */
  readonly actor: string;
  /** The raw request body of an `upload` route. */
  readonly body?: Buffer;
}

export type RouteHandler<R extends AdminRoute> = (input: RouteParsedInput<R>, call: AdminCall) => RouteResult<R> | Promise<RouteResult<R>>;

/** What the audit record names besides the operation: the node and a short target (never a secret). */
export interface AuditSubject {
  nodeId?: string | null;
  target?: string | null;
}

export interface HandleOptions<R extends AdminRoute> {
  audit?: 'self' | ((answer: RouteResult<R>) => AuditSubject);
}

export type AdminUpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

interface Entry {
  route: AdminRoute;
  handler: RouteHandler<AdminRoute>;
  audit: HandleOptions<AdminRoute>['audit'];
}

export class AdminRoutes {
  readonly #audit: AuditLog;
  readonly #byKey = new Map<string, Entry>();
  readonly #upgrades = new Map<string, AdminUpgradeHandler>();

  constructor(audit: AuditLog) {
    this.#audit = audit;
  }

  /** Serves `route` with `handler`. A route is served once: a second registration is a programming error. */
  handle<R extends AdminRoute>(route: R, handler: RouteHandler<R>, options: HandleOptions<R> = {}): void {
    const key = routeKey(route);
    if (this.#byKey.has(key)) throw new Error(`admin route ${key} is already served`);
    this.#byKey.set(key, { route, handler: handler as unknown as RouteHandler<AdminRoute>, audit: options.audit as HandleOptions<AdminRoute>['audit'] });
  }

  /** The route served for `METHOD /path`, if any. */
  lookup(key: string): AdminRoute | undefined {
    return this.#byKey.get(key)?.route;
  }

  /** Runs the route's handler on `raw` (a JSON body, or the query string's fields): validated, then audited. */
  async run(route: AdminRoute, raw: unknown, call: AdminCall): Promise<unknown> {
    const entry = this.#byKey.get(routeKey(route));
    if (!entry) throw new MeshlinkError('ML_ERR_NOT_FOUND', `no admin endpoint ${routeKey(route)}`);
    const parsed = entry.route.input.safeParse(raw);
    if (!parsed.success) throw new MeshlinkError('ML_ERR_BAD_REQUEST', `invalid request: ${zodErrorText(parsed.error)}`);
    if (entry.route.method === 'GET' || entry.audit === 'self') return entry.handler(parsed.data, call);

    const record = { source: 'admin' as const, actor: call.actor, operation: entry.route.path.replace(/^\/v1\//, '') };
    try {
      const answer = await entry.handler(parsed.data, call);
      const subject = entry.audit ? entry.audit(answer) : {};
      await this.#audit.record({ ...record, nodeId: subject.nodeId ?? null, target: subject.target ?? null, result: 'ok' });
      return answer;
    } catch (err) {
      // The operation's own error is the answer, also when its record cannot be written (a store that
      // stopped answering fails both).
      await this.#audit.record({ ...record, nodeId: null, target: null, result: `error:${err instanceof MeshlinkError ? err.code : 'ML_ERR_SERVER_INTERNAL'}` }).catch(() => {});
      throw err;
    }
  }

  /** A WebSocket endpoint on the admin socket (the ops tunnel: exec, logs, cp, actions). */
  addUpgrade(path: string, handler: AdminUpgradeHandler): void {
    if (this.#upgrades.has(path)) throw new Error(`admin upgrade path ${path} is already registered`);
    this.#upgrades.set(path, handler);
  }

  lookupUpgrade(path: string): AdminUpgradeHandler | undefined {
    return this.#upgrades.get(path);
  }
}
