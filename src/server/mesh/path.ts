import type { NatReport, PeerPath } from '../../contract/mesh-events.js';

/**
 * Path choice per pair of peers (docs/MESH.md, "NAT traversal"), a pure function of what the two
 * nodes reported about their NATs:
 *
 * - `direct` when at least one side is reachable where it listens (mapping `none`: the other side's
 *   WireGuard reaches it, and its answers go back through the mapping the first packet opened), or
 *   both sides have endpoint-independent mapping (each learns the other's reflexive endpoint and
 *   WireGuard's keepalive punches the hole: the NAT gives every destination the same public port);
 * - `relay` otherwise: an endpoint-dependent mapping and an `unknown` one (the probe got no answer
 *   from the alternate port, or none at all) both mean "cannot be reached at a port it announced".
 *
 * A node that reported no NAT at all (`null`: the agent runs with --no-stun, or predates the probe)
 * keeps the assumption the mesh made before NAT traversal: it is reachable at the endpoints it
 * announces (the operator's --endpoint, or its own addresses), so it counts as `none`. An agent that
 * probes and fails reports `unknown`, never nothing.
 *
 * The TCP source address the server saw on the control connection is never an input: it names the
 * NAT's address for TCP, not the mapping (or port) WireGuard's UDP gets.
 */

export function choosePath(a: NatReport | null | undefined, b: NatReport | null | undefined): PeerPath {
  const ma = a?.mapping ?? 'none';
  const mb = b?.mapping ?? 'none';
  if (ma === 'none' || mb === 'none') return 'direct';
  if (ma === 'endpoint-independent' && mb === 'endpoint-independent') return 'direct';
  return 'relay';
}

/**
 * The endpoints a viewer is told for a peer on `path`: for a direct pair the peer's reflexive endpoint
 * first (WireGuard uses the first), then its local ones; when both sit behind the same public address
 * (one NAT: a LAN), the local ones first, since many routers do not hairpin. A peer without NAT
 * (`none`) is told as it announced itself. For a relay pair the
 * local endpoints, as before paths existed: the relay allocation replaces them when one is assigned.
 * Duplicates are dropped and the list capped at 32 (the peer entry's schema).
 */
export function peerEndpoints(path: PeerPath, viewer: NatReport | null | undefined, peer: NatReport | null | undefined, peerLocal: readonly string[]): string[] {
  const reflexive = path === 'direct' ? (peer?.reflexive ?? null) : null;
  if (reflexive === null) return dedupe(peerLocal);
  // Without NAT the reflexive endpoint is one of the node's own addresses with its listen port: its
  // announced endpoints (the operator's --endpoint, or all its addresses) say it better, and a STUN
  // responder on the node's own host would have answered with a loopback address.
  if (peer?.mapping === 'none') return dedupe(peerLocal.length > 0 ? peerLocal : [reflexive]);
  const sameNat = viewer?.reflexive != null && hostOf(viewer.reflexive) === hostOf(reflexive);
  return dedupe(sameNat ? [...peerLocal, reflexive] : [reflexive, ...peerLocal]);
}

/** One pair on the relay path, as the relay allocator takes it (node ids in order). */
export interface RelayPair {
  /** `a` and `b` joined by NUL (the pair's key everywhere in the mesh: desired-state.ts pairKey). */
  pairId: string;
  a: string;
  b: string;
}

/** Counts of permitted pairs by path (the metrics gauge), and the relay pairs (the relay's seam). */
export function pairsByPath(
  permitted: ReadonlyMap<string, ReadonlySet<string>>,
  natOf: (nodeId: string) => NatReport | null,
  /** Whether a node takes part in pairs at all (the mesh: it has reported a WireGuard key). */
  eligible: (nodeId: string) => boolean = () => true,
  /** Pairs held on the relay because their direct path failed (path-health.ts), by `a\0b` with a < b. */
  forced: ReadonlySet<string> = new Set(),
): { direct: number; relay: RelayPair[] } {
  let direct = 0;
  const relay: RelayPair[] = [];
  for (const [a, peers] of permitted) {
    if (!eligible(a)) continue;
    for (const b of peers) {
      if (!(a < b) || !eligible(b)) continue;
      const pairId = `${a}\u0000${b}`;
      if (!forced.has(pairId) && choosePath(natOf(a), natOf(b)) === 'direct') direct++;
      else relay.push({ pairId, a, b });
    }
  }
  relay.sort((x, y) => (x.pairId < y.pairId ? -1 : x.pairId > y.pairId ? 1 : 0));
  return { direct, relay };
}

function dedupe(list: readonly string[]): string[] {
  return [...new Set(list)].slice(0, 32);
}

/** The host part of `HOST:PORT` / `[v6]:PORT`. */
function hostOf(endpoint: string): string {
  return endpoint.slice(0, endpoint.lastIndexOf(':'));
}
