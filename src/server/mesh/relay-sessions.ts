import { isIP } from 'node:net';
import type { Logger } from '../../util/logger.js';
import type { RelayAllocationInfo, RelayAllocationRequest, UdpRelay } from './relay.js';
import type { MeshService } from './service.js';

/**
 * Relay sessions: joins the UDP relay's allocations (relay.ts) to the signed relay events
 * (MeshService.assignRelay / revokeRelay). The path choice calls `relay()` for a pair that needs
 * the relay and `end()` when the pair goes direct. An allocation that expires (no traffic for the
 * relay's idle time) is revoked here, so both members go back to each other's own endpoints rather
 * than keep sending to a closed port.
 *
 * Each allocation is assigned once: asking again for a pair that is already relayed renews the
 * allocation and sends nothing.
 */

export interface RelaySessionsOptions {
  relay: UdpRelay;
  mesh: Pick<MeshService, 'assignRelay' | 'revokeRelay'>;
  /** The relay's address as the agents reach it (an IP or a DNS name; the server's public host). */
  publicHost: string;
  logger: Logger;
}

export class RelaySessions {
  readonly #o: RelaySessionsOptions;
  readonly #log: Logger;
  /** Allocation ids whose assignment was sent, with the pair. */
  readonly #assigned = new Map<string, { a: string; b: string }>();

  constructor(options: RelaySessionsOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: 'relay-sessions' });
    options.relay.onExpired = (expired) => this.#revokeExpired(expired);
  }

  /** The relay endpoint (HOST:PORT) for a port of the relay. */
  endpoint(port: number): string {
    const host = this.#o.publicHost;
    return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
  }

  /** Relays the pair: allocates (or renews) and, for a new allocation, assigns it to both members. */
  async relay(request: RelayAllocationRequest): Promise<RelayAllocationInfo> {
    const allocation = await this.#o.relay.allocate(request);
    if (this.#assigned.has(allocation.id)) return allocation;
    try {
      this.#o.mesh.assignRelay(allocation.id, [
        { nodeId: allocation.a.nodeId, endpoint: this.endpoint(allocation.a.port) },
        { nodeId: allocation.b.nodeId, endpoint: this.endpoint(allocation.b.port) },
      ], allocation.expiresAt);
    } catch (err) {
      // No member was told: the ports must not stay open for nobody.
      this.#o.relay.release(allocation.a.nodeId, allocation.b.nodeId);
      throw err;
    }
    this.#assigned.set(allocation.id, { a: allocation.a.nodeId, b: allocation.b.nodeId });
    return allocation;
  }

  /** Ends the pair's relay session (the pair went direct, or a member left); false when it had none. */
  end(nodeA: string, nodeB: string, reason = 'direct path'): boolean {
    const allocation = this.#o.relay.get(nodeA, nodeB);
    if (!allocation) return false;
    this.#o.relay.release(nodeA, nodeB);
    this.#revoke(allocation.id, reason);
    return true;
  }

  /** Sweeps the relay now and revokes what expired (the timer does the same every few seconds). */
  sweep(): string[] {
    const expired = this.#o.relay.sweep();
    this.#revokeExpired(expired);
    return expired.map((e) => e.id);
  }

  #revokeExpired(expired: readonly RelayAllocationInfo[]): void {
    for (const e of expired) this.#revoke(e.id, 'expired');
  }

  #revoke(id: string, reason: string): void {
    const pair = this.#assigned.get(id);
    if (!pair) return;
    this.#assigned.delete(id);
    try {
      this.#o.mesh.revokeRelay(id, pair.a, pair.b, reason);
    } catch (err) {
      // A member removed from the mesh meanwhile: the other gets peer_removed, which drops the session too.
      this.#log.warn({ err, allocation: id }, 'relay revoke not sent');
    }
  }
}
