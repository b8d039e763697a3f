import { MeshStore } from './store.js';
import type { Store } from '../store/store.js';
import { intToIp } from './addresses.js';
import type { MeshNodeDetails } from '../../admin-api/routes.js';
import { natReportSchema } from '../../contract/mesh-events.js';
import { heldRelaySchema, SETTING_RELAY_SESSIONS_KEY } from './service.js';
import type { PeerLinkReport } from './path-health.js';

export interface MeshListingFields {
  meshIp: string | null;
  wgPublicKey: string | null;
  tags: string[];
  endpoints: string[];
  observedAddress: string | null;
}

/** Mesh fields of every live node by id, for `server nodes list` (works with the server stopped too). */
export async function meshListingFields(store: Store): Promise<Map<string, MeshListingFields>> {
  const out = new Map<string, MeshListingFields>();
  for (const [id, r] of await new MeshStore(store.database).listing()) {
    out.set(id, { meshIp: r.meshIp === null ? null : intToIp(r.meshIp), wgPublicKey: r.wgPublicKey, tags: r.tags, endpoints: r.endpoints, observedAddress: r.observedAddr });
  }
  return out;
}

/** The lookup the mesh answers the core's `nodeListingFields` question with (a node without mesh state shows empty fields). */
export async function meshListingLookup(store: Store): Promise<(nodeId: string) => MeshListingFields> {
  const fields = await meshListingFields(store);
  return (nodeId) => fields.get(nodeId) ?? { meshIp: null, wgPublicKey: null, tags: [], endpoints: [], observedAddress: null };
}

/**
 * The lookup the mesh answers the core's `tokenListingFields` question with: a token's tags. The
 * lookup is synchronous, so every tagged token's tags are read at once (one query per listing).
 */
export async function tokenTagsLookup(store: Store): Promise<(tokenHash: string) => { tags: string[] }> {
  const tags = await new MeshStore(store.database).allTokenTags();
  return (tokenHash) => ({ tags: tags.get(tokenHash) ?? [] });
}

/**
 * The mesh part of `server nodes show` (works with the server stopped too): the node's NAT report, the
 * address its control connection came from, and its peers as the events sent so far told it, with
 * each pair's path and the endpoint WireGuard uses (the first, or the relay's while a relay session is
 * in force). With the server running, `live` adds what the node last reported of each peer
 * (`peer.status`: its link state and last handshake); the store keeps no such reports.
 */
export async function meshNodeDetails(store: Store, nodeId: string, live?: (peerId: string) => PeerLinkReport | undefined): Promise<MeshNodeDetails | null> {
  const db = new MeshStore(store.database);
  const row = (await db.listing(nodeId)).get(nodeId);
  if (!row || row.meshIp === null) return null;
  const relayed = await relayEndpointsOf(db, nodeId);
  const announced = await db.announcedPeersOf(nodeId);
  const hostnames = await hostnamesOf(store, announced.map((p) => p.peerId));
  const peers = announced.map((p) => {
    const link = live?.(p.peerId);
    return {
      nodeId: p.peerId,
      hostname: hostnames.get(p.peerId) ?? null,
      meshIp: p.meshIp,
      // The path in force: a relay session means the relay, whatever the NAT classes chose.
      path: relayed.has(p.peerId) ? 'relay' : p.path,
      // While a relay session is in force, WireGuard sends to the relay (the agent applies it over the peer's own).
      endpoint: relayed.get(p.peerId) ?? p.endpoints[0] ?? null,
      link: link?.state ?? null,
      lastHandshake: link?.handshakeAt == null ? null : new Date(link.handshakeAt).toISOString(),
    };
  });
  return { meshIp: intToIp(row.meshIp), nat: natReportSchema.safeParse(row.nat).data ?? null, observedAddress: row.observedAddr, peers };
}

/** The hostnames of nodes by id (a node row that is gone has none). */
export async function hostnamesOf(store: Store, ids: readonly string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const id of ids) {
    const node = await store.getNode(id);
    if (node) out.set(id, node.hostname);
  }
  return out;
}

/** The relay endpoint `nodeId` sends to, by peer, for the relay sessions in force (the mesh setting). */
async function relayEndpointsOf(db: MeshStore, nodeId: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const text = await db.getSetting(SETTING_RELAY_SESSIONS_KEY);
  if (text === undefined) return out;
  let parsed;
  try {
    parsed = heldRelaySchema.safeParse(JSON.parse(text));
  } catch {
    return out;
  }
  if (!parsed.success) return out;
  for (const h of parsed.data) {
    if (!h.endpoints) continue;
    if (h.a === nodeId) out.set(h.b, h.endpoints[0]);
    else if (h.b === nodeId) out.set(h.a, h.endpoints[1]);
  }
  return out;
}
