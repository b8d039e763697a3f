import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * Routes that features add to the local admin channel (admin.ts serves them after its built-ins).
 * Keys are `METHOD /path` matched exactly (query strings are the handler's to parse). Upgrade
 * handlers take over the raw socket for bidirectional streams (exec, logs, cp).
 */
export type AdminHandler = (req: IncomingMessage, res: ServerResponse) => Promise<void>;
export type AdminUpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

export class AdminRoutes {
  readonly #routes = new Map<string, AdminHandler>();
  readonly #upgrades = new Map<string, AdminUpgradeHandler>();
  readonly #selfAudited = new Set<string>();

  /**
   * Adds a route. Every state-changing route (not GET) is audited by the admin server unless it
   * audits itself (`auditsItself`, e.g. an operation whose result is only known later).
   */
  add(route: string, handler: AdminHandler, options: { auditsItself?: boolean } = {}): void {
    if (!/^(GET|POST|PUT|DELETE) \/v1\/\S+$/.test(route)) throw new Error(`admin route must look like "POST /v1/…": ${route}`);
    if (this.#routes.has(route)) throw new Error(`admin route ${route} is already registered`);
    this.#routes.set(route, handler);
    if (options.auditsItself) this.#selfAudited.add(route);
  }

  auditsItself(route: string): boolean {
    return this.#selfAudited.has(route);
  }

  addUpgrade(path: string, handler: AdminUpgradeHandler): void {
    if (this.#upgrades.has(path)) throw new Error(`admin upgrade path ${path} is already registered`);
    this.#upgrades.set(path, handler);
  }

  lookup(route: string): AdminHandler | undefined {
    return this.#routes.get(route);
  }

  lookupUpgrade(path: string): AdminUpgradeHandler | undefined {
    return this.#upgrades.get(path);
  }
}
