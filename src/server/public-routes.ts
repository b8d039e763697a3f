import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * Routes that features add to the agent-facing gateway (gateway.ts serves its own first: enroll,
 * renew, ca, connect, healthz). A route is a path prefix; the handler gets the rest of the path.
 * `clientCertificate: true` routes are served only to a valid, unrevoked client certificate of this
 * CA (the gateway checks it before the handler runs).
 */
export interface PublicRoute {
  readonly method: 'GET' | 'POST';
  /** Starts and ends with "/", e.g. "/v1/agent/bundle/". */
  readonly prefix: string;
  readonly clientCertificate: boolean;
}

export type PublicRouteHandler = (req: IncomingMessage, res: ServerResponse, rest: string) => Promise<void>;

export class PublicRoutes {
  readonly #routes: Array<{ route: PublicRoute; handler: PublicRouteHandler }> = [];

  add(route: PublicRoute, handler: PublicRouteHandler): void {
    if (!/^\/v1\/[\w./-]*\/$/.test(route.prefix)) throw new Error(`public route prefix must look like "/v1/…/": ${route.prefix}`);
    if (this.#routes.some((r) => r.route.prefix.startsWith(route.prefix) || route.prefix.startsWith(r.route.prefix))) {
      throw new Error(`public route ${route.prefix} overlaps one already registered`);
    }
    this.#routes.push({ route: Object.freeze({ ...route }), handler });
  }

  /** The route whose prefix starts `path` (prefixes never overlap, so at most one). */
  match(path: string): { route: PublicRoute; handler: PublicRouteHandler; rest: string } | undefined {
    for (const r of this.#routes) if (path.startsWith(r.route.prefix)) return { ...r, rest: path.slice(r.route.prefix.length) };
    return undefined;
  }
}
