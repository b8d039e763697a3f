import { createHash } from 'node:crypto';
import type { EventType, MeshState, NatReport, PeerInfo, PeerPath } from '../../contract/mesh-events.js';
import { intToIp } from './addresses.js';
import { choosePath, peerEndpoints } from './path.js';

/**
 * Desired state, as a pure function of the mesh model: what each node should know (its address, and
 * every permitted peer that has a WireGuard key and a PSK), and the events that take a node from what
 * it was told to that. Nothing here reads the store, the clock or a session; model.ts holds the
 * inputs, service.ts decides when to compute.
 */

/** The facts about one node that its peers are told. */
export interface PeerFacts {
  readonly id: string;
  readonly meshIp: number;
  readonly publicKey: string | null;
  readonly endpoints: readonly string[];
  /** What its STUN probe learned; null: it reported none. */
  readonly nat?: NatReport | null;
}

/** Everything desired states are computed from. */
export interface MeshInputs {
  readonly cidr: string;
  readonly nodes: ReadonlyMap<string, PeerFacts>;
  /** For each node, the peers the policy permits (symmetric, never itself: policy.ts). */
  readonly permitted: ReadonlyMap<string, ReadonlySet<string>>;
  /** PSK of each pair, by `pairKey`. */
  readonly psks: ReadonlyMap<string, Buffer>;
}

/** What the events sent so far told a node about one peer; the PSK only as a fingerprint. */
export interface AnnouncedPeer {
  meshIp: string;
  publicKey: string;
  endpoints: string[];
  pskTag: string;
  /** The path it was told; null: told by a server from before paths (mesh migration 111). */
  path: PeerPath | null;
}

/** What the events sent so far told a node (persisted: mesh_nodes.announced + mesh_announced_peers). */
export interface Announced {
  meshIp: string;
  cidr: string;
  peers: Map<string, AnnouncedPeer>;
}

/** The events that bring a node's view in line with its desired state, and how its view changes. */
export interface ViewChange {
  events: Array<[EventType, unknown]>;
  /** A full state replaces the whole view (first contact, a new address or range). */
  snapshot: MeshState | null;
  upserts: PeerInfo[];
  removed: string[];
}

/** The policy_updated payload a full recompute after a policy or tag change sends along. */
export interface PolicyAnnouncement {
  policyId: string;
  rules: Array<{ from: string; to: string }> | null;
}

/** The one key of an unordered pair of node ids. */
export const pairKey = (a: string, b: string): string => (a < b ? `${a}\u0000${b}` : `${b}\u0000${a}`);

const pskTag = (psk: Buffer): string => createHash('sha256').update(psk).digest('hex').slice(0, 16);

/**
 * A recompute visits every (node, peer) pair, twice needing the PSK's tag and once its base64 form:
 * for 1,000 nodes that was millions of hashes and conversions per policy change. Both are derived
 * from the PSK alone, so they are computed once per PSK (the caches are bounded; PSKs are in memory
 * anyway). Memoising keeps these functions pure.
 */
const pskTagCache = new Map<string, string>();
export function pskTagOf(pskBase64: string): string {
  let tag = pskTagCache.get(pskBase64);
  if (tag === undefined) {
    if (pskTagCache.size >= 1_000_000) pskTagCache.clear();
    tag = pskTag(Buffer.from(pskBase64, 'base64'));
    pskTagCache.set(pskBase64, tag);
  }
  return tag;
}
const pskBase64Cache = new WeakMap<Buffer, string>();
function base64Of(psk: Buffer): string {
  let b64 = pskBase64Cache.get(psk);
  if (b64 === undefined) {
    b64 = psk.toString('base64');
    pskBase64Cache.set(psk, b64);
  }
  return b64;
}

const sameList = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
const byNodeId = (a: PeerInfo, b: PeerInfo): number => (a.nodeId < b.nodeId ? -1 : 1);

/** What `viewerId` should know about `peerId`: nothing unless permitted, keyed and with a PSK. */
export function peerEntry(inputs: MeshInputs, viewerId: string, peerId: string): PeerInfo | null {
  if (!inputs.permitted.get(viewerId)?.has(peerId)) return null;
  const peer = inputs.nodes.get(peerId);
  const psk = inputs.psks.get(pairKey(viewerId, peerId));
  if (!peer || !peer.publicKey || !psk) return null;
  // The pair's path (path.ts) decides which of the peer's endpoints the viewer is told.
  const viewerNat = inputs.nodes.get(viewerId)?.nat ?? null;
  // A pair held on the relay after its direct path failed (path-health.ts) is told its direct endpoints
  // still: the relay session overrides them on the agent, and without one the pair keeps trying direct.
  const path = choosePath(viewerNat, peer.nat);
  return { nodeId: peer.id, meshIp: intToIp(peer.meshIp), publicKey: peer.publicKey, endpoints: peerEndpoints(path, viewerNat, peer.nat, peer.endpoints), psk: base64Of(psk), path };
}

/** The full desired state of a node (peers sorted by id), or null for a node not in the model. */
export function desiredState(inputs: MeshInputs, nodeId: string): MeshState | null {
  const node = inputs.nodes.get(nodeId);
  if (!node) return null;
  const peers: PeerInfo[] = [];
  for (const pid of inputs.permitted.get(nodeId) ?? []) {
    const entry = peerEntry(inputs, nodeId, pid);
    if (entry) peers.push(entry);
  }
  peers.sort(byNodeId);
  return { nodeId, meshIp: intToIp(node.meshIp), cidr: inputs.cidr, peers };
}

/**
 * The events that bring a node's view (`before`) in line with its desired state: for all of its peers
 * (about = null), or only for the peers in `about`, whose own facts changed (nothing else in the view
 * can have: that check costs O(|about|) instead of building the node's whole desired state). Null
 * when the node already knows everything. `policy` is set on a recompute after a policy or tag
 * change: a node whose peers changed is told the new policy first.
 */
export function viewChange(inputs: MeshInputs, nodeId: string, before: Announced | null, about: ReadonlySet<string> | null, policy: PolicyAnnouncement | null): ViewChange | null {
  const node = inputs.nodes.get(nodeId);
  if (!node) return null;
  if (before === null || before.meshIp !== intToIp(node.meshIp) || before.cidr !== inputs.cidr) {
    const state = desiredState(inputs, nodeId)!;
    return { events: [['node_state_updated', { state }]], snapshot: state, upserts: [], removed: [] };
  }
  let desired: PeerInfo[];
  if (about === null) desired = desiredState(inputs, nodeId)!.peers;
  else {
    desired = [];
    for (const id of about) {
      const entry = peerEntry(inputs, nodeId, id);
      if (entry) desired.push(entry);
    }
    desired.sort(byNodeId);
  }
  return diffPeers(before, desired, about, policy);
}

/**
 * The diff between the peers a node was told (`before`) and the peers it should have (`desired`,
 * sorted by id), limited to the peers in `about` when given. Event order is the one agents apply:
 * policy, removals, additions, key changes, endpoint changes.
 */
export function diffPeers(before: Announced, desired: readonly PeerInfo[], about: ReadonlySet<string> | null, policy: PolicyAnnouncement | null): ViewChange | null {
  const added: PeerInfo[] = [];
  const keys: Array<{ nodeId: string; publicKey: string }> = [];
  const endpoints: Array<{ nodeId: string; endpoints: string[]; path?: PeerPath }> = [];
  const upserts: PeerInfo[] = [];
  const seen = new Set<string>();
  for (const p of desired) {
    seen.add(p.nodeId);
    const was = before.peers.get(p.nodeId);
    if (!was || was.meshIp !== p.meshIp || was.pskTag !== pskTagOf(p.psk)) {
      added.push(p);
      upserts.push(p);
      continue;
    }
    const keyChanged = was.publicKey !== p.publicKey;
    // A path change travels with the endpoints: they are chosen by it (path.ts).
    const endpointsChanged = !sameList(was.endpoints, p.endpoints) || was.path !== (p.path ?? null);
    if (keyChanged) keys.push({ nodeId: p.nodeId, publicKey: p.publicKey });
    if (endpointsChanged) endpoints.push(p.path === undefined ? { nodeId: p.nodeId, endpoints: p.endpoints } : { nodeId: p.nodeId, endpoints: p.endpoints, path: p.path });
    if (keyChanged || endpointsChanged) upserts.push(p);
  }
  const removed = [...(about ?? before.peers.keys())].filter((id) => before.peers.has(id) && !seen.has(id));
  const events: Array<[EventType, unknown]> = [];
  if (policy !== null && (added.length > 0 || removed.length > 0)) events.push(['policy_updated', { policyId: policy.policyId, rules: policy.rules }]);
  if (removed.length > 0) events.push(['peer_removed', { nodeIds: removed }]);
  if (added.length > 0) events.push(['peer_added', { peers: added }]);
  if (keys.length > 0) events.push(['peer_key_rotated', { peers: keys }]);
  if (endpoints.length > 0) events.push(['peer_endpoint_changed', { peers: endpoints }]);
  return events.length === 0 ? null : { events, snapshot: null, upserts, removed };
}

/** What a node knows about a peer after being told `p`. */
export function announcedPeerOf(p: PeerInfo): AnnouncedPeer {
  return { meshIp: p.meshIp, publicKey: p.publicKey, endpoints: p.endpoints, pskTag: pskTagOf(p.psk), path: p.path ?? null };
}
