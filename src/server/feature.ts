import type { Logger } from '../util/logger.js';
import type { AdminRoutes } from './admin-routes.js';
import type { ServerConfig } from './config.js';
import type { LiveParts } from './nodes.js';
import type { SessionHost } from './session-host.js';
import type { Store } from './store/store.js';

/**
 * A server feature (mesh coordination, operations, ...) plugs into the running server through this
 * context: the store, the session layer (agent sessions, message and stream handlers, welcome fields)
 * and the admin channel. Features are started by startServer before the gateway accepts agents.
 */
export interface ServerFeatureContext {
  readonly config: ServerConfig;
  readonly store: Store;
  readonly sessions: SessionHost;
  readonly admin: AdminRoutes;
  readonly live: LiveParts;
  readonly logger: Logger;
  /** The CA passphrase this server was started with (MESHLINK_CA_PASSPHRASE or the caller's), for sealing feature secrets. */
  readonly passphrase: string;
}

export interface ServerFeatureHandle {
  close?(): void | Promise<void>;
}

export type ServerFeature = (ctx: ServerFeatureContext) => ServerFeatureHandle | void | Promise<ServerFeatureHandle | void>;
