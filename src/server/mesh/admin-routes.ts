import * as api from '../../admin-api/routes.js';
import type { Logger } from '../../util/logger.js';
import type { AdminRoutes } from '../admin-routes.js';
import { resolveNode } from '../nodes.js';
import type { Store } from '../store/store.js';
import { MeshFeed } from './feed.js';
import { hostnamesOf } from './listing.js';
import { createTaggedToken, storedPolicy, storePolicy, tagNode } from './operator.js';
import { policyId } from './policy.js';
import type { MeshService } from './service.js';
import { MeshStore } from './store.js';

/**
 * The mesh's routes of the operator API (src/admin-api/routes.ts, docs/MESH.md). With the running
 * service (`mesh`) a change is recomputed and sent to the affected nodes at once; without one (the CLI
 * with no server running) policy and tags are only stored, and the next start sends the events.
 */
export function registerMeshAdminRoutes(routes: AdminRoutes, deps: { store: Store; mesh: MeshService | null; logger: Logger }): void {
  const { store, mesh, logger } = deps;
  // Offline, the feed is read from the store; nothing arrives while the operator waits.
  const feed = mesh ?? offlineFeed(store);

  routes.handle(api.showPolicy, () => (mesh ? { policy: mesh.policy, policyId: policyId(mesh.policy) } : storedPolicy(store)));
  routes.handle(api.setPolicy, async ({ policy }) => (mesh ? mesh.setPolicy(policy ?? null) : { ...(await storePolicy(store, policy ?? null)), affectedNodes: [] }), {
    audit: (answer) => ({ target: answer.policyId }),
  });
  routes.handle(
    api.tagNode,
    async ({ node, tags, mode }) => {
      const tagged = await tagNode(store, node, tags, mode);
      const affectedNodes = mesh ? await mesh.tagsChanged(tagged.id, tagged.tags) : [];
      logger.info({ nodeId: tagged.id, tags: tagged.tags, affected: affectedNodes.length }, 'node tags changed');
      return { ...tagged, affectedNodes };
    },
    { audit: (answer) => ({ nodeId: answer.id, target: answer.tags.join(',') }) },
  );
  routes.handle(
    api.createTaggedToken,
    async ({ ttlMs, nodeId, tags }) => {
      const created = await createTaggedToken(store, { ttlMs, nodeId: nodeId ?? null, tags });
      logger.info({ expiresAt: created.expiresAt, nodeId: created.nodeId, tags: created.tags }, 'enrollment token created');
      return created;
    },
    { audit: (answer) => ({ nodeId: answer.nodeId, target: `${answer.id ? `token ${answer.id}, ` : ''}expires ${answer.expiresAt}` }) },
  );
  // What the node was told, as persisted by the event log's sends (the same with the server stopped).
  routes.handle(api.showPeers, async ({ node }) => {
    const resolved = await resolveNode(store, node);
    const announced = await new MeshStore(store.database).announcedPeersOf(resolved.id);
    const hostnames = await hostnamesOf(store, announced.map((p) => p.peerId));
    const peers = announced.map((p) => ({ nodeId: p.peerId, hostname: hostnames.get(p.peerId) ?? null, meshIp: p.meshIp, endpoints: p.endpoints, path: p.path }));
    return { nodeId: resolved.id, peers };
  });
  routes.handle(api.meshFeed, async ({ after, last, node, waitMs }) => {
    const nodeId = node ? (await resolveNode(store, node)).id : null;
    // last=N: start N entries before the newest (of all nodes; the node filter applies after).
    const from = last !== undefined ? Math.max(0, (await feed.lastFeedId()) - last) : after;
    let entries = await feed.feed(from, nodeId);
    if (entries.length === 0 && waitMs > 0 && mesh) {
      await mesh.waitForFeed(waitMs);
      entries = await feed.feed(from, nodeId);
    }
    const lastId = entries.length > 0 ? entries[entries.length - 1]!.id : Math.max(from, await feed.lastFeedId());
    return { entries, last: lastId };
  });
  if (!mesh) return;

  routes.handle(
    api.rotateNodeKey,
    async ({ node }) => {
      const resolved = await resolveNode(store, node);
      return { nodeId: resolved.id, seq: await mesh.requestKeyRotation(resolved.id) };
    },
    { audit: (answer) => ({ nodeId: answer.nodeId }) },
  );
  // One signed event to one node, or to every node without `node` (each under its own seq: nodes that
  // are offline get it by replay).
  routes.handle(
    api.notify,
    async (body) => {
      if (body.node !== undefined) {
        const resolved = await resolveNode(store, body.node);
        return { type: body.type, nodes: 1, nodeId: resolved.id, seq: await mesh.publish(resolved.id, body.type, body.payload) };
      }
      return { type: body.type, nodes: await mesh.publishAll(body.type, body.payload) };
    },
    { audit: (answer) => ({ nodeId: answer.nodeId ?? null, target: answer.type }) },
  );
  routes.handle(api.rotateSigningKey, () => mesh.rotateSigningKey(), { audit: (answer) => ({ target: answer.keyId }) });
}

/** The feed as the store holds it, for the operator with no server running. */
function offlineFeed(store: Store): Pick<MeshService, 'feed' | 'lastFeedId'> {
  const feed = new MeshFeed(new MeshStore(store.database), Number.MAX_SAFE_INTEGER);
  return { feed: (after, nodeId, limit) => feed.entries(after, nodeId, limit), lastFeedId: () => feed.lastId() };
}
