import { existsSync } from 'node:fs';
import { localActor } from '../../admin-api/actor.js';
import type { CallOptions, Operator } from '../../admin-api/client.js';
import { parseAnswer, routeKey, type AdminRoute, type RouteInput, type RouteOutput } from '../../admin-api/route.js';
import { MeshlinkError } from '../../errors.js';
import { createLogger, type Logger } from '../../util/logger.js';
import { AdminRoutes } from '../admin-routes.js';
import { AuditLog } from '../audit-log.js';
import { storePath } from '../config.js';
import { createFeatureQuestions } from '../feature.js';
import { OFFLINE_FEATURES, openServerStore } from '../features.js';
import { registerCoreAdminRoutes } from './core-routes.js';

/**
 * The operator with no server running: the same route table, the same handlers and the same audit log
 * as the admin socket, run in the CLI's process on the store file. Only routes marked `offline` run
 * here (a change is stored, and the next start tells the agents); the others need the server's agents
 * and fail with ML_ERR_SERVER_NOT_RUNNING.
 */
export class OfflineOperator implements Operator {
  readonly live = false;
  readonly #routes: AdminRoutes;
  readonly #close: () => Promise<void>;
  readonly #actor: string;

  private constructor(routes: AdminRoutes, close: () => Promise<void>, actor: string) {
    this.#routes = routes;
    this.#close = close;
    this.#actor = actor;
  }

  /** Opens the data dir's store (ML_ERR_NOT_INITIALIZED when there is none) and registers every feature's offline routes. */
  static async open(dataDir: string, options: { logger?: Logger; actor?: string } = {}): Promise<OfflineOperator> {
    const path = storePath(dataDir);
    if (!existsSync(path)) throw new MeshlinkError('ML_ERR_NOT_INITIALIZED', `no store at ${path}: run \`meshlink server start\` once`);
    const store = await openServerStore(path);
    const logger = options.logger ?? createLogger({ name: 'meshlink-cli', level: 'silent' });
    const routes = new AdminRoutes(AuditLog.of(store));
    const questions = createFeatureQuestions();
    try {
      registerCoreAdminRoutes(routes, { store, live: null, running: null, questions, logger });
      for (const feature of OFFLINE_FEATURES) feature({ store, admin: routes, questions, logger });
    } catch (err) {
      await store.close();
      throw err;
    }
    return new OfflineOperator(routes, () => store.close(), options.actor ?? localActor());
  }

  async call<R extends AdminRoute>(route: R, input: RouteInput<R>, options: CallOptions = {}): Promise<RouteOutput<R>> {
    if (!route.offline || !this.#routes.lookup(routeKey(route))) {
      throw new MeshlinkError('ML_ERR_SERVER_NOT_RUNNING', `${route.name} needs a running server: start it with \`meshlink server start\``);
    }
    const answer = await this.#routes.run(route, input, { actor: this.#actor, ...(options.body ? { body: options.body } : {}) });
    // As the client does: what the CLI gets has passed the answer's schema either way.
    return parseAnswer(route, answer);
  }

  close(): Promise<void> {
    return this.#close();
  }
}
