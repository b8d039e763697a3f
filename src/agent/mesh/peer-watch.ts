import { PEER_DOWN_AFTER_MS, PEER_SAMPLE_MS, type PeerLink, type PeerLinkState } from '../../contract/mesh-events.js';

/**
 * Whether each WireGuard peer is reachable on the endpoint in force, from WireGuard's own counters
 * sampled every few seconds (docs/MESH.md, "Switching"). A pure state machine: the agent feeds it
 * samples and sends what it returns in `peer.status`.
 *
 * The signal is the peer's receive counter, not the handshake time. WireGuard keeps a session's keys
 * when its endpoint changes, and the initiator re-keys every two minutes (a responder only when the
 * keys expire, at three), so after a switch (relay → direct) the last handshake says nothing about the
 * new path for up to 180 s. Bytes received do, and a peer that
 * has been silent for a while is made to send some (PEER_PROBE_AFTER_MS, below). A peer is:
 * - `up` when something was received since its current endpoint took effect, within the last
 *   PEER_DOWN_AFTER_MS;
 * - `down` when nothing was for PEER_DOWN_AFTER_MS, counted from the later of the endpoint taking
 *   effect and the last receipt;
 * - `pending` otherwise (a new endpoint, not yet given its chance).
 */

export interface PeerSample {
  nodeId: string;
  /** The endpoint the agent gave WireGuard for the peer (the relay's while one is in force). */
  endpoint: string | null;
  /** WireGuard's transfer-rx for the peer. */
  rxBytes: number;
  /** WireGuard's latest-handshake, in ms since the epoch; null: none. */
  handshakeAt: number | null;
}

/**
 * Samples further apart than this mean the agent was not watching (its session was down, the host
 * slept): every peer starts a new trial, or the gap's silence would read as paths that died.
 */
const MAX_SAMPLE_GAP_MS = 2 * PEER_SAMPLE_MS;

interface Tracked {
  endpoint: string | null;
  /** When the current endpoint took effect (or the peer first appeared). */
  since: number;
  rxBytes: number;
  lastRxAt: number | null;
  handshakeAt: number | null;
  state: PeerLinkState;
  /** When the agent last probed the peer (at most one probe per PEER_PROBE_AFTER_MS). */
  probedAt: number | null;
}

/**
 * A peer that sent nothing for this long is probed: the agent sends a datagram to its mesh address.
 * Keepalive alone does not make both ends talk: WireGuard's persistent-keepalive timer restarts on any
 * packet either way, so on an idle link one end's keepalives can keep the other end's from ever
 * firing, and that end hears nothing while the path works. A data packet, though, makes the
 * receiving WireGuard answer within KEEPALIVE_TIMEOUT (10 s) even with nothing to send (its "passive
 * keepalive"), and starts a handshake first when the session's keys have expired. So a working path
 * shows received bytes within PEER_PROBE_AFTER_MS + 10 s + a sample, well inside PEER_DOWN_AFTER_MS.
 */
export const PEER_PROBE_AFTER_MS = 10_000;

export class PeerWatch {
  readonly #downAfterMs: number;
  readonly #peers = new Map<string, Tracked>();
  #lastSampleAt: number | null = null;

  constructor(downAfterMs = PEER_DOWN_AFTER_MS) {
    this.#downAfterMs = downAfterMs;
  }

  /**
   * Takes one sample of every peer on the interface; peers not in it are forgotten. Returns the
   * entries whose state or endpoint changed (a new peer counts as changed), and the peers to probe:
   * those that sent nothing for PEER_PROBE_AFTER_MS on their current endpoint.
   */
  sample(samples: readonly PeerSample[], now: number): { changed: PeerLink[]; probe: string[] } {
    const changed: PeerLink[] = [];
    const probe: string[] = [];
    const resumed = this.#lastSampleAt !== null && now - this.#lastSampleAt > MAX_SAMPLE_GAP_MS;
    this.#lastSampleAt = now;
    const seen = new Set<string>();
    for (const s of samples) {
      seen.add(s.nodeId);
      const known = this.#peers.get(s.nodeId);
      const fresh = known === undefined || known.endpoint !== s.endpoint || resumed;
      let t: Tracked;
      if (fresh) {
        // A new endpoint starts its own trial: what was received on the old one says nothing of it.
        t = { endpoint: s.endpoint, since: now, rxBytes: s.rxBytes, lastRxAt: null, handshakeAt: s.handshakeAt, state: 'pending', probedAt: null };
        this.#peers.set(s.nodeId, t);
      } else {
        t = known;
        if (s.rxBytes > t.rxBytes) t.lastRxAt = now;
        // A counter that went back means the interface was re-created: a new baseline, the same trial.
        t.rxBytes = s.rxBytes;
      }
      t.handshakeAt = s.handshakeAt;
      if (now - Math.max(t.since, t.lastRxAt ?? 0) >= PEER_PROBE_AFTER_MS && (t.probedAt === null || now - t.probedAt >= PEER_PROBE_AFTER_MS)) {
        t.probedAt = now;
        probe.push(s.nodeId);
      }
      const state = this.#stateOf(t, now);
      if (fresh || state !== t.state) {
        t.state = state;
        changed.push(this.#entry(s.nodeId, t, now));
      }
    }
    for (const id of [...this.#peers.keys()]) if (!seen.has(id)) this.#peers.delete(id);
    return { changed, probe };
  }

  /** Every tracked peer as of `now` (the periodic full report). */
  entries(now: number): PeerLink[] {
    return [...this.#peers].map(([id, t]) => this.#entry(id, t, now));
  }

  /** One peer's state and last handshake, for the status file; undefined when not tracked. */
  peer(nodeId: string): { state: PeerLinkState; handshakeAt: number | null } | undefined {
    const t = this.#peers.get(nodeId);
    return t === undefined ? undefined : { state: t.state, handshakeAt: t.handshakeAt };
  }

  #stateOf(t: Tracked, now: number): PeerLinkState {
    if (t.lastRxAt !== null && now - t.lastRxAt < this.#downAfterMs) return 'up';
    return now - Math.max(t.since, t.lastRxAt ?? 0) >= this.#downAfterMs ? 'down' : 'pending';
  }

  #entry(nodeId: string, t: Tracked, now: number): PeerLink {
    return { nodeId, state: t.state, endpoint: t.endpoint, handshakeAgeMs: t.handshakeAt === null ? null : Math.max(0, now - t.handshakeAt) };
  }
}
