import * as api from '../../admin-api/routes.js';
import type { Logger } from '../../util/logger.js';
import type { AdminRoutes } from '../admin-routes.js';
import type { FeatureQuestions } from '../feature.js';
import { VERSION } from '../../version.js';
import { createEnrollmentToken, listNodes, META_CA_PIN, META_PUBLIC_URL, removeNode, type LiveParts } from '../nodes.js';
import { META_PUBLIC_URL_CONFIGURED, readSans } from '../public-address.js';
import { backupStore } from './backup.js';
import type { Store, TokenRow } from '../store/store.js';
import { revokeToken, tokenState } from '../tokens.js';

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

  routes.handle(api.serverStatus, async () => {
    const publicUrl = (await store.getMeta(META_PUBLIC_URL)) ?? null;
    const configured = (await store.getMeta(META_PUBLIC_URL_CONFIGURED)) !== undefined;
    return {
      version: VERSION,
      publicUrl,
      publicUrlSource: publicUrl === null ? null : configured ? ('configured' as const) : ('derived' as const),
      sans: await readSans(store),
      caPin: (await store.getMeta(META_CA_PIN)) ?? null,
      nodes: (await store.listLiveNodes()).length,
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
    async ({ ttlMs, nodeId }) => {
      const created = await createEnrollmentToken(store, { ttlMs, nodeId: nodeId ?? null });
      log.info({ expiresAt: created.expiresAt, nodeId: created.nodeId }, 'enrollment token created');
      return created;
    },
    // The token itself is a secret: the record names its public id and expiry only.
    { audit: (answer) => ({ nodeId: answer.nodeId, target: `${answer.id ? `token ${answer.id}, ` : ''}expires ${answer.expiresAt}` }) },
  );

  // Listings name a token by its public id, never the token or its hash (docs/SERVER.md).
  const tokenListing = (row: TokenRow, fields: ((tokenHash: string) => { tags?: string[] }) | undefined, now: number): api.TokenListing => ({
    id: row.id,
    createdAt: new Date(row.createdAt).toISOString(),
    expiresAt: new Date(row.expiresAt).toISOString(),
    state: tokenState(row, now),
    uses: row.consumedAt === null ? 0 : 1,
    usedAt: row.consumedAt === null ? null : new Date(row.consumedAt).toISOString(),
    revokedAt: row.revokedAt === null ? null : new Date(row.revokedAt).toISOString(),
    nodeId: row.nodeId,
    ...fields?.(row.hash),
  });
  routes.handle(api.listTokens, async ({ limit }) => {
    const fields = await deps.questions.ask('tokenListingFields')?.();
    const now = Date.now();
    return (await store.listTokens(limit)).map((row) => tokenListing(row, fields, now));
  });
  routes.handle(
    api.revokeToken,
    async ({ id }) => {
      const row = await revokeToken(store, id);
      log.info({ tokenId: id }, 'enrollment token revoked');
      return tokenListing(row, await deps.questions.ask('tokenListingFields')?.(), Date.now());
    },
    { audit: (answer) => ({ nodeId: answer.nodeId, target: `token ${answer.id}` }) },
  );

  routes.handle(api.listNodes, () => listNodes(store, live ?? undefined, deps.questions.ask('nodeListingFields')));

  routes.handle(
    api.removeNode,
    async ({ node }) => {
      const result = await removeNode(store, node, live ?? undefined);
      log.info({ nodeId: result.id, hostname: result.hostname, revoked: result.revokedSerials.length, closed: result.closedConnections }, 'node removed');
      return result;
    },
    { audit: (answer) => ({ nodeId: answer.id, target: answer.hostname }) },
  );
}
