import type { ServerResponse } from 'node:http';
import { meshFeed, type FeedEntry } from '../../admin-api/routes.js';
import { MeshlinkError } from '../../errors.js';
import type { Logger } from '../../util/logger.js';
import type { AdminRoutes } from '../admin-routes.js';
import type { AgentSessions } from '../agent-sessions.js';

/**
 * The console's live updates, as server-sent events on `GET /api/events`: `node` when an agent's
 * session opens or closes (`{nodeId, online}`), `feed` for each new mesh feed entry (the mesh.feed
 * route, long-polled through the operator API while a browser listens, so this feature reads no mesh
 * state). Bounded: at most MAX_CLIENTS streams, and a browser that falls MAX_BUFFERED bytes behind is
 * dropped (its EventSource reconnects and the page reloads what it shows).
 */

export const MAX_CLIENTS = 32;
export const MAX_BUFFERED = 256 * 1024;
const KEEPALIVE_MS = 20_000;
const FEED_WAIT_MS = 10_000;

export class ConsoleEvents {
  readonly #clients = new Set<ServerResponse>();
  readonly #routes: AdminRoutes;
  readonly #log: Logger;
  readonly #keepalive: NodeJS.Timeout;
  #polling = false;
  #closed = false;

  constructor(deps: { sessions: AgentSessions; routes: AdminRoutes; logger: Logger }) {
    this.#routes = deps.routes;
    this.#log = deps.logger;
    deps.sessions.on('agent-open', (agent) => this.#broadcast('node', { nodeId: agent.nodeId, online: true }));
    deps.sessions.on('agent-close', (agent) => this.#broadcast('node', { nodeId: agent.nodeId, online: false }));
    this.#keepalive = setInterval(() => {
      for (const res of this.#clients) this.#write(res, ': keepalive\n\n');
    }, KEEPALIVE_MS);
    this.#keepalive.unref();
  }

  /** Takes over `res` as an event stream until the browser goes away. */
  add(res: ServerResponse): void {
    if (this.#closed) throw new MeshlinkError('ML_ERR_CONSOLE_BUSY', 'the console is closing');
    if (this.#clients.size >= MAX_CLIENTS) throw new MeshlinkError('ML_ERR_CONSOLE_BUSY', `${MAX_CLIENTS} console event streams are open`);
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive' });
    this.#clients.add(res);
    res.on('close', () => this.#clients.delete(res));
    this.#write(res, 'retry: 2000\n\n');
    this.#startFeed();
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#keepalive);
    for (const res of this.#clients) res.end();
    this.#clients.clear();
  }

  #broadcast(event: string, data: unknown): void {
    const text = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const res of this.#clients) this.#write(res, text);
  }

  #write(res: ServerResponse, text: string): void {
    if (res.writableLength > MAX_BUFFERED) {
      // This browser does not keep up: drop it rather than buffer without bound.
      this.#clients.delete(res);
      res.destroy();
      return;
    }
    res.write(text);
  }

  /** One long-poll loop of mesh.feed while any browser listens (none when the mesh feature does not run). */
  #startFeed(): void {
    if (this.#polling || !this.#routes.lookup(`GET ${meshFeed.path}`)) return;
    this.#polling = true;
    const loop = async (): Promise<void> => {
      // Start at the newest entry: the Events page loads the recent ones itself.
      let after = ((await this.#routes.run(meshFeed, { last: '0' }, { actor: 'console' })) as { last: number }).last;
      while (!this.#closed && this.#clients.size > 0) {
        const page = (await this.#routes.run(meshFeed, { after: String(after), waitMs: String(FEED_WAIT_MS) }, { actor: 'console' })) as { entries: FeedEntry[]; last: number };
        for (const entry of page.entries) this.#broadcast('feed', entry);
        after = Math.max(after, page.last);
      }
    };
    loop()
      .catch((err: unknown) => {
        if (!this.#closed) this.#log.warn({ err }, 'console feed poll failed');
      })
      .finally(() => {
        this.#polling = false;
      });
  }
}
