import { MeshlinkError } from '../errors.js';
import type { ConnectionRegistry } from './connections.js';
import type { RevocationList } from './revocation.js';
import type { NodeRow, Store } from './store/store.js';
import { createToken } from './tokens.js';
import { enrollCommand } from '../contract/enroll-command.js';
import type { NodeListing, RemovalResult, TokenCreation } from '../admin-api/routes.js';
import type { PresenceView } from './presence.js';

/**
 * The core's operator actions on nodes and tokens, served by operator/core-routes.ts both by the
 * running server and with none running (then without the live parts).
 */

export const META_PUBLIC_URL = 'public_url';
export const META_CA_PIN = 'ca_pin';

export interface LiveParts {
  registry: ConnectionRegistry;
  revocations: RevocationList;
  /** Online (an open session) and last_seen: flush it before reading last_seen from the store. */
  presence: PresenceView;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

/**
 * Every live node. Without `live` (server stopped) every node is offline. `extraFields` adds the
 * columns features answer for (the mesh's address, key, tags and endpoints).
 */
export async function listNodes(
  store: Store,
  live?: Pick<LiveParts, 'presence'>,
  extraFields?: () => Promise<(nodeId: string) => Partial<NodeListing>>,
): Promise<NodeListing[]> {
  await live?.presence.flush();
  const extra = await extraFields?.();
  return (await store.listLiveNodes()).map((n) => ({
    id: n.id,
    hostname: n.hostname,
    online: live?.presence.isOnline(n.id) ?? false,
    lastSeen: iso(n.lastSeen),
    certSerial: n.certSerial,
    certNotAfter: iso(n.certNotAfter),
    agentVersion: n.agentVersion,
    ...extra?.(n.id),
  }));
}

/** An exact node id, else a unique live hostname. */
export async function resolveNode(store: Store, idOrHostname: string): Promise<NodeRow> {
  const byId = await store.getNode(idOrHostname);
  if (byId && byId.removedAt === null) return byId;
  const byName = await store.liveNodesByHostname(idOrHostname);
  if (byName.length === 1) return byName[0]!;
  if (byName.length > 1) {
    throw new MeshlinkError('ML_ERR_NODE_AMBIGUOUS', `${byName.length} nodes are named ${idOrHostname}: ${byName.map((n) => n.id).join(', ')}; use the id`);
  }
  throw new MeshlinkError('ML_ERR_NODE_NOT_FOUND', `no live node with id or hostname ${idOrHostname}`);
}

/** Removes a node and revokes its certificates; with live parts, its sockets are closed with 4401 at once. */
export async function removeNode(store: Store, idOrHostname: string, live?: LiveParts): Promise<RemovalResult> {
  const node = await resolveNode(store, idOrHostname);
  const { revokedSerials } = await store.removeNode(node.id, Date.now());
  let closedConnections = 0;
  if (live) {
    live.revocations.add(revokedSerials);
    closedConnections = live.registry.closeRevokedNode(node.id);
  }
  return { id: node.id, hostname: node.hostname, revokedSerials, closedConnections };
}

export async function createEnrollmentToken(store: Store, options: { ttlMs: number; nodeId?: string | null }): Promise<TokenCreation> {
  const url = await store.getMeta(META_PUBLIC_URL);
  const caPin = await store.getMeta(META_CA_PIN);
  if (!url || !caPin) throw new MeshlinkError('ML_ERR_NOT_INITIALIZED', 'this data dir has no CA yet: run `meshlink server start` once');
  const created = await createToken(store, { ttlMs: options.ttlMs, nodeId: options.nodeId ?? null });
  return {
    token: created.token,
    id: created.id,
    expiresAt: new Date(created.expiresAt).toISOString(),
    caPin,
    enrollCommand: enrollCommand({ server: url, token: created.token, caPin, force: created.nodeId !== null }),
    nodeId: created.nodeId,
  };
}
