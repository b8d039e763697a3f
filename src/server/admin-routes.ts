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

  add(route: string, handler: AdminHandler): void {
    if (!/^(GET|POST|PUT|DELETE) \/v1\/\S+$/.test(route)) throw new Error(`admin route must look like "POST /v1/…": ${route}`);
    if (this.#routes.has(route)) throw new Error(`admin route ${route} is already registered`);
    this.#routes.set(route, handler);
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
