import { MeshStore } from './store.js';
import type { Store } from '../store/store.js';
import { intToIp } from './addresses.js';
import type { MeshNodeDetails } from '../../admin-api/routes.js';
import { natReportSchema } from '../../contract/mesh-events.js';
import { heldRelaySchema, SETTING_RELAY_SESSIONS_KEY } from './service.js';

export interface MeshListingFields {
  meshIp: string | null;
  wgPublicKey: string | null;
  tags: string[];
  endpoints: string[];
  observedAddress: string | null;
}

/** Mesh fields of every live node by id, for `server nodes list` (works with the server stopped too). */
export function meshListingFields(store: Store): Map<string, MeshListingFields> {
  const out = new Map<string, MeshListingFields>();
  for (const [id, r] of new MeshStore(store.database).listing()) {
    out.set(id, { meshIp: r.meshIp === null ? null : intToIp(r.meshIp), wgPublicKey: r.wgPublicKey, tags: r.tags, endpoints: r.endpoints, observedAddress: r.observedAddr });
  }
  return out;
}

/** The lookup the mesh answers the core's `nodeListingFields` question with (a node without mesh state shows empty fields). */
export function meshListingLookup(store: Store): (nodeId: string) => MeshListingFields {
  const fields = meshListingFields(store);
  return (nodeId) => fields.get(nodeId) ?? { meshIp: null, wgPublicKey: null, tags: [], endpoints: [], observedAddress: null };
}

/** The lookup the mesh answers the core's `tokenListingFields` question with: a token's tags. */
export function tokenTagsLookup(store: Store): (tokenHash: string) => { tags: string[] } {
  const db = new MeshStore(store.database);
  return (tokenHash) => ({ tags: db.tokenTags(tokenHash) });
}

/**
 * The mesh part of `server nodes show` (works with the server stopped too): the node's NAT report, the
 * address its control connection came from, and its peers as the events sent so far told it, with
 * each pair's path and the endpoint WireGuard uses (the first, or the relay's while a relay session is
 * in force). No handshake ages are reported yet.
 */
export function meshNodeDetails(store: Store, nodeId: string): MeshNodeDetails | null {
  const db = new MeshStore(store.database);
  const row = db.listing().get(nodeId);
  if (!row || row.meshIp === null) return null;
  const relayed = relayEndpointsOf(db, nodeId);
  const peers = db.announcedPeersOf(nodeId).map((p) => ({
    nodeId: p.peerId,
    hostname: store.getNode(p.peerId)?.hostname ?? null,
    meshIp: p.meshIp,
    path: p.path,
    // While a relay session is in force, WireGuard sends to the relay (the agent applies it over the peer's own).
    endpoint: relayed.get(p.peerId) ?? p.endpoints[0] ?? null,
    lastHandshake: null,
  }));
  return { meshIp: intToIp(row.meshIp), nat: natReportSchema.safeParse(row.nat).data ?? null, observedAddress: row.observedAddr, peers };
}

/** The relay endpoint `nodeId` sends to, by peer, for the relay sessions in force (the mesh setting). */
function relayEndpointsOf(db: MeshStore, nodeId: string): Map<string, string> {
  const out = new Map<string, string>();
  const text = db.getSetting(SETTING_RELAY_SESSIONS_KEY);
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
