import { isIP } from 'node:net';
import { MeshlinkError } from '../../errors.js';
import type { Logger } from '../../util/logger.js';
import type { RelayAllocationInfo, RelayAllocationRequest, UdpRelay } from './relay.js';
import type { HeldRelaySession, MeshService } from './service.js';

/**
 * Relay sessions: joins the UDP relay's allocations (relay.ts) to the signed relay events
 * (MeshService.assignRelay / revokeRelay). `reconcile()` takes the pairs the path choice marks `relay`
 * (with the IPs the server observed for each member) and makes the relay hold exactly those: a new
 * pair gets an allocation and both members a `relay_session_assigned`; a pair that went direct, was
 * removed or is no longer permitted gets `relay_session_revoked` and its allocation is freed. An
 * allocation that expires (no traffic for the relay's idle time) is revoked here, so both members go
 * back to each other's own endpoints rather than keep sending to a closed port; one that allocate()
 * replaced (it had expired) is revoked before the new one is assigned.
 *
 * Each allocation is assigned once: `relay()` again for a pair that is already relayed renews the
 * allocation and sends nothing; `reconcile()` only updates a held allocation's member IPs, so an
 * allocation nobody sends through still expires.
 */

export interface RelaySessionsOptions {
  relay: UdpRelay;
  mesh: Pick<MeshService, 'assignRelay' | 'revokeRelay'>;
  /** The relay's address as the agents reach it (an IP or a DNS name; the server's public host). */
  publicHost: string;
  logger: Logger;
  /**
   * Allocations one node may hold (default 64). The path choice rests on the NAT class each agent
   * reports about itself: a node that claims an endpoint-dependent NAT would otherwise get an
   * allocation with every permitted peer behind NAT and take the whole relay.
   */
  maxPerNode?: number;
}

/** What reconcile() did. */
export interface RelayReconciled {
  assigned: string[];
  ended: string[];
  /** Pairs that should be relayed but could not be (relay full, a member without a known IP). */
  failed: number;
}

export class RelaySessions {
  readonly #o: RelaySessionsOptions;
  readonly #log: Logger;
  /** The session in force per pair (pair key: the node ids, sorted). */
  readonly #assigned = new Map<string, { id: string; a: string; b: string }>();

  constructor(options: RelaySessionsOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: 'relay-sessions' });
    // #revokeExpired logs its own failures (never rejects).
    options.relay.onExpired = (expired) => void this.#revokeExpired(expired);
  }

  /** The relay endpoint (HOST:PORT) for a port of the relay. */
  endpoint(port: number): string {
    const host = this.#o.publicHost;
    return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
  }

  /** The sessions in force, by pair. */
  list(): Array<{ id: string; a: string; b: string }> {
    return [...this.#assigned.values()].map((s) => ({ ...s }));
  }

  /**
   * Revokes sessions an earlier run of the server assigned (MeshService.heldRelaySessions()): their
   * allocations died with that process. Call once at start, before the first reconcile.
   */
  async revokeStale(held: readonly HeldRelaySession[]): Promise<number> {
    let n = 0;
    for (const h of held) {
      if ([...this.#assigned.values()].some((s) => s.id === h.sessionId)) continue;
      try {
        await this.#o.mesh.revokeRelay(h.sessionId, h.a, h.b, 'relay restarted');
        n++;
      } catch (err) {
        this.#log.warn({ err, allocation: h.sessionId }, 'stale relay session not revoked');
      }
    }
    return n;
  }

  /** Relays the pair: allocates (or renews) and, for a new allocation, assigns it to both members. */
  async relay(request: RelayAllocationRequest): Promise<RelayAllocationInfo> {
    const allocation = await this.#o.relay.allocate(request);
    const key = pairKey(allocation.a.nodeId, allocation.b.nodeId);
    const held = this.#assigned.get(key);
    if (held?.id === allocation.id) return allocation;
    // allocate() replaced an allocation (it had expired before a sweep saw it): its session ends first.
    if (held) await this.#revoke(key, held, 'replaced');
    try {
      await this.#o.mesh.assignRelay(allocation.id, [
        { nodeId: allocation.a.nodeId, endpoint: this.endpoint(allocation.a.port) },
        { nodeId: allocation.b.nodeId, endpoint: this.endpoint(allocation.b.port) },
      ], allocation.expiresAt);
    } catch (err) {
      // No member was told: the ports must not stay open for nobody.
      this.#o.relay.release(allocation.a.nodeId, allocation.b.nodeId);
      throw err;
    }
    this.#assigned.set(key, { id: allocation.id, a: allocation.a.nodeId, b: allocation.b.nodeId });
    return allocation;
  }

  /** Ends the pair's relay session (the pair went direct, or a member left); false when it had none. */
  async end(nodeA: string, nodeB: string, reason = 'direct path'): Promise<boolean> {
    const key = pairKey(nodeA, nodeB);
    const released = this.#o.relay.release(nodeA, nodeB);
    const held = this.#assigned.get(key);
    if (held) await this.#revoke(key, held, reason);
    return released || held !== undefined;
  }

  /**
   * Makes the relay hold exactly the `wanted` pairs: new ones are relayed, ones in force keep their
   * allocation (with the members' current IPs, not renewed), the rest end with `reason`. A pair that fails
   * (the relay is full) is logged and counted; it is tried again at the next reconcile.
   */
  async reconcile(wanted: readonly RelayAllocationRequest[], reason = 'direct path'): Promise<RelayReconciled> {
    const out: RelayReconciled = { assigned: [], ended: [], failed: 0 };
    const keep = new Set(wanted.map((w) => pairKey(w.a.nodeId, w.b.nodeId)));
    for (const [key, held] of [...this.#assigned]) {
      if (keep.has(key)) continue;
      this.#o.relay.release(held.a, held.b);
      await this.#revoke(key, held, reason);
      out.ended.push(held.id);
    }
    // Allocations per node: the held ones count first, so a cap never takes a working pair away.
    const maxPerNode = this.#o.maxPerNode ?? DEFAULT_MAX_PER_NODE;
    const perNode = new Map<string, number>();
    const count = (id: string, by: number): void => void perNode.set(id, (perNode.get(id) ?? 0) + by);
    for (const held of this.#assigned.values()) {
      count(held.a, 1);
      count(held.b, 1);
    }
    // One summary line a run, not one a pair: a reconcile runs on every connect and close.
    const refused = { full: 0, capped: 0, other: 0 };
    for (const request of wanted) {
      const before = this.#assigned.get(pairKey(request.a.nodeId, request.b.nodeId))?.id;
      // Held and live: only the members' IPs may have changed; renewing here would keep an idle
      // allocation (a member offline) alive for as long as anything triggers reconciles.
      if (before !== undefined && this.#o.relay.updateIps(request)) continue;
      if (before === undefined && ((perNode.get(request.a.nodeId) ?? 0) >= maxPerNode || (perNode.get(request.b.nodeId) ?? 0) >= maxPerNode)) {
        out.failed++;
        refused.capped++;
        continue;
      }
      if (refused.full > 0) {
        // The relay was full a moment ago: the rest of this run would be refused the same way.
        out.failed++;
        refused.full++;
        continue;
      }
      try {
        const allocation = await this.relay(request);
        if (allocation.id !== before) out.assigned.push(allocation.id);
        if (before === undefined) {
          count(request.a.nodeId, 1);
          count(request.b.nodeId, 1);
        }
      } catch (err) {
        out.failed++;
        if (err instanceof MeshlinkError && err.code === 'ML_ERR_RELAY_FULL') refused.full++;
        else {
          refused.other++;
          this.#log.error({ err, a: request.a.nodeId, b: request.b.nodeId }, 'relay: the pair could not be relayed (tried again at the next change)');
        }
      }
    }
    if (refused.full > 0 || refused.capped > 0) {
      this.#log.warn({ relayFull: refused.full, overNodeCap: refused.capped, maxPerNode }, 'relay: pairs left on their direct path (relay full or a node at its allocation cap); tried again at the next change');
    }
    return out;
  }

  /** Sweeps the relay now and revokes what expired (the timer does the same every few seconds). */
  async sweep(): Promise<string[]> {
    const expired = this.#o.relay.sweep();
    await this.#revokeExpired(expired);
    return expired.map((e) => e.id);
  }

  /** Called after the relay's timer sweep revoked what expired (the feature reconciles again). */
  onRevokedExpired: (() => void) | null = null;

  async #revokeExpired(expired: readonly RelayAllocationInfo[]): Promise<void> {
    for (const e of expired) {
      const key = pairKey(e.a.nodeId, e.b.nodeId);
      const held = this.#assigned.get(key);
      if (held?.id === e.id) await this.#revoke(key, held, 'expired');
    }
    if (expired.length > 0) this.onRevokedExpired?.();
  }

  /** Forgets the pair's session at once, then tells both members; never rejects (a failure is logged). */
  async #revoke(key: string, held: { id: string; a: string; b: string }, reason: string): Promise<void> {
    if (this.#assigned.get(key) === held) this.#assigned.delete(key);
    try {
      await this.#o.mesh.revokeRelay(held.id, held.a, held.b, reason);
    } catch (err) {
      // A member removed from the mesh meanwhile: the other gets peer_removed, which drops the session too.
      this.#log.warn({ err, allocation: held.id }, 'relay revoke not sent');
    }
  }
}

/** Allocations one node may hold unless configured (RelaySessionsOptions.maxPerNode). */
export const DEFAULT_MAX_PER_NODE = 64;

function pairKey(a: string, b: string): string {
  return a < b ? `${a}\n${b}` : `${b}\n${a}`;
}
