import { PEER_DOWN_AFTER_MS, type PeerLink, type PeerLinkState, type PeerPath } from '../../contract/mesh-events.js';
import { pairKey } from './desired-state.js';

/**
 * Switching between a pair's direct path and the relay on what its members measure (docs/MESH.md,
 * "Switching"). The path choice (path.ts) reads NAT classes, which can be wrong: a firewall that
 * drops UDP between two sites, a NAT that maps one way for the STUN responder and another for peers.
 * So each agent reports, per peer, whether it receives anything on the endpoint in force
 * (`peer.status`, agent/mesh/peer-watch.ts), and this table turns reports into overrides:
 *
 * - a pair the NAT classes put on `direct` goes to the relay as soon as either member reports the
 *   other `down` on the direct endpoint the server announced to it, provided both members' agents ran
 *   throughout: each connected for PEER_DOWN_AFTER_MS without a break, and the peer heard from (a
 *   heartbeat) within two heartbeat intervals. Silence across the reporter's own outage, or from a
 *   peer that died without its connection closing yet, says nothing about the path. Either, not both: WireGuard's handshake is mutual, so a member
 *   that hears nothing is telling the truth about its side, and no member can keep a pair off the relay
 *   by claiming `up`. A member that claims `down` falsely only relays its own pairs, which it could do
 *   anyway by claiming a hard NAT; the relay's per-node cap bounds both.
 * - the override holds for a back-off (retryMs, doubling with each consecutive failure up to
 *   maxRetryMs), then lapses: the pair tries direct again. The failure count clears only when both
 *   members report `up` on the direct endpoint after the trial began: a path that works one way only
 *   makes one member say `up` and the other `down`, and must keep backing off, not flap every retryMs.
 * - a report about any other endpoint (the relay's, or one from before the server's last change)
 *   never counts: it says nothing of the direct path, and one sent just before a switch arrives after.
 * - an override changes only which pairs the relay serves (path.ts pairsByPath); what the members are
 *   told of each other stays the direct endpoints, which `relay_session_assigned` overrides on the
 *   agent. So a pair the relay cannot take (full, a member at its cap) keeps trying direct.
 *
 * Pairs the NAT classes already put on the relay are left there. Overrides live in memory: a server
 * restart gives every pair its direct trial again.
 */

export interface PeerLinkReport {
  state: PeerLinkState;
  endpoint: string | null;
  /** The last handshake in the server's clock (receipt time minus the reported age); null: none. */
  handshakeAt: number | null;
  receivedAt: number;
}

export interface PathHealthOptions {
  /** The first back-off after a direct path failed (`--mesh-direct-retry`). */
  retryMs: number;
  /** The longest back-off (doubling stops here). */
  maxRetryMs: number;
}

/** What the table needs to know about the mesh of the moment. */
export interface PathContext {
  /** Whether the pair may talk at all (reports about other nodes are ignored). */
  permitted(a: string, b: string): boolean;
  /** The pair's path by NAT class alone (path.ts choosePath), before any override. */
  naturalPath(a: string, b: string): PeerPath;
  /** The endpoint the server last announced to `viewer` for `peer` (its first), or null. */
  announcedEndpoint(viewer: string, peer: string): string | null;
  /** Since when the node has been connected without a break; null: offline (presence.ts). */
  onlineSince(nodeId: string): number | null;
  /** When anything (a heartbeat) last arrived from the node; null: offline (presence.ts). */
  lastHeard(nodeId: string): number | null;
  /** The server's heartbeat interval: a live agent is heard at least this often. */
  heartbeatIntervalMs: number;
}

interface Override {
  a: string;
  b: string;
  retryAt: number;
}

export class PathHealth {
  readonly #o: PathHealthOptions;
  /** The latest report per reporting node, by peer. */
  readonly #reports = new Map<string, Map<string, PeerLinkReport>>();
  /** Pairs held on the relay although their NAT classes say direct, by pair key. */
  readonly #overrides = new Map<string, Override>();
  /** Consecutive direct failures per pair (kept across the trials between them). */
  readonly #failures = new Map<string, number>();
  /** The members that reported `up` on the direct endpoint since the pair's current trial began. */
  readonly #upSince = new Map<string, Set<string>>();
  /** Counts for the metrics: switches to the relay, and trials of direct after a back-off. */
  readonly counters = { toRelay: 0, retries: 0 };

  constructor(options: PathHealthOptions) {
    this.#o = options;
  }

  /** Whether the pair is held on the relay by a failed direct path. */
  forcedRelay(a: string, b: string): boolean {
    return this.#overrides.has(pairKey(a, b));
  }

  /** The pair keys held on the relay (copied into MeshModel.forcedRelay, which path.ts pairsByPath reads). */
  get forced(): ReadonlySet<string> {
    return this.#forcedKeys;
  }
  readonly #forcedKeys = new Set<string>();

  /** The latest report `nodeId` sent about `peerId`. */
  report(nodeId: string, peerId: string): PeerLinkReport | undefined {
    return this.#reports.get(nodeId)?.get(peerId);
  }

  /**
   * Records a `peer.status` from `nodeId` (entries already checked with peerLinkSchema). Returns the
   * pairs that went to the relay because of it, as [a, b].
   */
  record(nodeId: string, links: readonly PeerLink[], receivedAt: number, ctx: PathContext): Array<[string, string]> {
    const moved: Array<[string, string]> = [];
    let mine = this.#reports.get(nodeId);
    for (const link of links) {
      if (link.nodeId === nodeId || !ctx.permitted(nodeId, link.nodeId)) continue;
      if (mine === undefined) this.#reports.set(nodeId, (mine = new Map()));
      // An age reaching before 1970 is a lie (and no time a Date can print): none.
      const handshakeAt = link.handshakeAgeMs === null || link.handshakeAgeMs > receivedAt ? null : receivedAt - link.handshakeAgeMs;
      mine.set(link.nodeId, { state: link.state, endpoint: link.endpoint, handshakeAt, receivedAt });
      if (link.endpoint !== ctx.announcedEndpoint(nodeId, link.nodeId)) continue;
      const key = pairKey(nodeId, link.nodeId);
      if (this.#overrides.has(key) || ctx.naturalPath(nodeId, link.nodeId) !== 'direct') continue;
      if (link.state === 'up') {
        let up = this.#upSince.get(key);
        if (up === undefined) this.#upSince.set(key, (up = new Set()));
        up.add(nodeId);
        if (up.size === 2) this.#failures.delete(key);
      } else if (link.state === 'down' && this.#bothRan(nodeId, link.nodeId, receivedAt, ctx)) {
        const failures = (this.#failures.get(key) ?? 0) + 1;
        this.#failures.set(key, failures);
        const backoff = Math.min(this.#o.retryMs * 2 ** Math.min(failures - 1, 30), this.#o.maxRetryMs);
        const [a, b] = nodeId < link.nodeId ? [nodeId, link.nodeId] : [link.nodeId, nodeId];
        this.#overrides.set(key, { a, b, retryAt: receivedAt + backoff });
        this.#forcedKeys.add(key);
        this.#upSince.delete(key);
        this.counters.toRelay++;
        moved.push([a, b]);
      }
    }
    return moved;
  }

  /**
   * Whether both agents ran for the whole window a `down` covers: each connected without a break
   * since PEER_DOWN_AFTER_MS before it, and the peer still heard from now. Silence measured across the
   * reporter's own outage, from a peer that was offline or came back moments ago, or from one that
   * died and whose connection has not timed out yet, says nothing about the path (and would otherwise
   * push pairs onto the relay, and their back-off up, at every restart or power cut).
   */
  #bothRan(reporter: string, peerId: string, receivedAt: number, ctx: PathContext): boolean {
    for (const id of [reporter, peerId]) {
      const since = ctx.onlineSince(id);
      if (since === null || receivedAt - since < PEER_DOWN_AFTER_MS) return false;
    }
    const heard = ctx.lastHeard(peerId);
    return heard !== null && receivedAt - heard <= 2 * ctx.heartbeatIntervalMs;
  }

  /** Lifts the overrides whose back-off ended by `now` (their pairs try direct again); returns those pairs. */
  due(now: number): Array<[string, string]> {
    const lifted: Array<[string, string]> = [];
    for (const [key, o] of this.#overrides) {
      if (o.retryAt > now) continue;
      this.#overrides.delete(key);
      this.#forcedKeys.delete(key);
      // The reports that moved it are about the path before the back-off: the trial starts clean.
      this.#reports.get(o.a)?.delete(o.b);
      this.#reports.get(o.b)?.delete(o.a);
      this.#upSince.delete(key);
      this.counters.retries++;
      lifted.push([o.a, o.b]);
    }
    return lifted;
  }

  /** When the pair's override lapses (for the operator), or null when it has none. */
  retryAt(a: string, b: string): number | null {
    return this.#overrides.get(pairKey(a, b))?.retryAt ?? null;
  }

  /** Forgets a node that left the mesh: its reports, and its pairs' overrides and failure counts. */
  forget(nodeId: string): void {
    this.#reports.delete(nodeId);
    for (const m of this.#reports.values()) m.delete(nodeId);
    for (const [key, o] of this.#overrides) {
      if (o.a !== nodeId && o.b !== nodeId) continue;
      this.#overrides.delete(key);
      this.#forcedKeys.delete(key);
    }
    const ofNode = (key: string): boolean => key.startsWith(`${nodeId}\u0000`) || key.endsWith(`\u0000${nodeId}`);
    for (const key of [...this.#failures.keys()]) if (ofNode(key)) this.#failures.delete(key);
    for (const key of [...this.#upSince.keys()]) if (ofNode(key)) this.#upSince.delete(key);
  }

  /** Consecutive direct failures of the pair (0: none, or cleared by both members' `up`). */
  failures(a: string, b: string): number {
    return this.#failures.get(pairKey(a, b)) ?? 0;
  }

  /** Pairs held on the relay now. */
  get size(): number {
    return this.#overrides.size;
  }
}
