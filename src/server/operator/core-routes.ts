import * as api from '../../admin-api/routes.js';
import type { Logger } from '../../util/logger.js';
import type { AdminRoutes } from '../admin-routes.js';
import type { FeatureQuestions } from '../feature.js';
import { VERSION } from '../../version.js';
import { createEnrollmentToken, listNodes, META_CA_PIN, META_PUBLIC_URL, removeNode, type LiveParts } from '../nodes.js';
import { META_PUBLIC_URL_CONFIGURED, readSans } from '../public-address.js';
import { backupStore } from './backup.js';
import type { Store } from '../store/store.js';

/**
 * The core's routes of the operator API: enrollment tokens and the node list. Served by the running
 * server (with its live parts: presence, and the registry that closes a removed node's sockets at
 * once) and, with no server running, by the offline operator (live null: every node offline, and a
 * removal revokes in the store, which the next start loads).
 */
/** What the running server adds to `server status`. */
export interface RunningInfo {
  readonly startedAt: number;
  /** The bound listen address, HOST:PORT (known once the gateway listens). */
  listen(): string;
}

export function registerCoreAdminRoutes(
  routes: AdminRoutes,
  deps: { store: Store; live: LiveParts | null; running: RunningInfo | null; questions: FeatureQuestions; logger: Logger },
): void {
  const { store, live, logger } = deps;
  const log = logger.child({ component: 'admin' });

  routes.handle(api.serverStatus, () => {
    const publicUrl = store.getMeta(META_PUBLIC_URL) ?? null;
    return {
      version: VERSION,
      publicUrl,
      publicUrlSource: publicUrl === null ? null : store.getMeta(META_PUBLIC_URL_CONFIGURED) !== undefined ? ('configured' as const) : ('derived' as const),
      sans: readSans(store),
      caPin: store.getMeta(META_CA_PIN) ?? null,
      nodes: store.listLiveNodes().length,
      running: deps.running && live ? { pid: process.pid, listen: deps.running.listen(), startedAt: new Date(deps.running.startedAt).toISOString(), onlineNodes: live.presence.onlineCount } : null,
    };
  });

  // The backup is written by this process (the server's, or the offline CLI's) to the path asked for.
  routes.handle(api.backupStore, async ({ path }) => {
    const written = await backupStore(store, path);
    log.info({ path: written.path, bytes: written.bytes }, 'store backed up');
    return written;
  }, { audit: (answer) => ({ target: answer.path }) });

  routes.handle(
    api.createToken,
    ({ ttlMs, nodeId }) => {
      const created = createEnrollmentToken(store, { ttlMs, nodeId: nodeId ?? null });
      log.info({ expiresAt: created.expiresAt, nodeId: created.nodeId }, 'enrollment token created');
      return created;
    },
    // The token itself is a secret: the record names its expiry only.
    { audit: (answer) => ({ nodeId: answer.nodeId, target: `expires ${answer.expiresAt}` }) },
  );

  routes.handle(api.listNodes, () => listNodes(store, live ?? undefined, deps.questions.ask('nodeListingFields')));

  routes.handle(
    api.removeNode,
    ({ node }) => {
      const result = removeNode(store, node, live ?? undefined);
      log.info({ nodeId: result.id, hostname: result.hostname, revoked: result.revokedSerials.length, closed: result.closedConnections }, 'node removed');
      return result;
    },
    { audit: (answer) => ({ nodeId: answer.id, target: answer.hostname }) },
  );
}
