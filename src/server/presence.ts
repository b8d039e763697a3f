import type { Logger } from '../util/logger.js';
import type { Store } from './store/store.js';

/**
 * Presence has one owner: this class. A node is online while it has at least one open agent session
 * (the session layer reports opens and closes); `last_seen` is what the store remembers of the last
 * time anything was heard from it, written through one throttle here and nowhere else.
 *
 * The throttle: a node's last_seen is written at most once per `minIntervalMs` (heartbeats arrive every
 * 15 s; an hourly-accurate last_seen costs one row write a minute per node), except that a session
 * opening or closing always writes. Writes are batched: what is due is written with the others of the
 * same `flushMs` in one transaction. A reconnect storm of 10,000 agents otherwise committed 20,000
 * single-row transactions on the event loop that also runs the handshakes. last_seen is informative
 * (presence itself is the live session), so a write up to `flushMs` late, or lost in a crash, costs
 * nothing.
 */
export interface PresenceOptions {
  /** Batch period of last_seen writes (default 1 s). */
  flushMs?: number;
  /** At most one last_seen write per node this often, opens and closes excepted (default 60 s). */
  minIntervalMs?: number;
}

/** What readers of presence need (features, node listings). */
export type PresenceView = Pick<Presence, 'isOnline' | 'onlineSince' | 'lastHeard' | 'onlineCount' | 'flush'>;

export class Presence {
  readonly #store: Store;
  readonly #log: Logger;
  readonly #minIntervalMs: number;
  /** Open sessions per node. */
  readonly #sessions = new Map<string, number>();
  /** Since when each online node has had a session open without a break. */
  readonly #since = new Map<string, number>();
  /** When anything last arrived from each online node (its session's open, every heartbeat). */
  readonly #heardAt = new Map<string, number>();
  /** When each node's last_seen was last queued for writing. */
  readonly #written = new Map<string, number>();
  readonly #pending = new Map<string, number>();
  readonly #timer: NodeJS.Timeout;

  constructor(store: Store, logger: Logger, options: PresenceOptions = {}) {
    this.#store = store;
    this.#log = logger;
    this.#minIntervalMs = options.minIntervalMs ?? 60_000;
    this.#timer = setInterval(() => void this.flush(), options.flushMs ?? 1_000);
    this.#timer.unref();
  }

  /** A session of the node opened (its protocol handshake completed). */
  opened(nodeId: string, at = Date.now()): void {
    this.#sessions.set(nodeId, (this.#sessions.get(nodeId) ?? 0) + 1);
    if (!this.#since.has(nodeId)) this.#since.set(nodeId, at);
    this.#heardAt.set(nodeId, Math.max(at, this.#heardAt.get(nodeId) ?? 0));
    this.#seen(nodeId, at, true);
  }

  /** A session of the node closed. */
  closed(nodeId: string, at = Date.now()): void {
    this.#seen(nodeId, at, true);
    const n = (this.#sessions.get(nodeId) ?? 0) - 1;
    if (n > 0) this.#sessions.set(nodeId, n);
    else {
      this.#sessions.delete(nodeId);
      this.#since.delete(nodeId);
      this.#heardAt.delete(nodeId);
      this.#written.delete(nodeId);
    }
  }

  /** Something arrived from the node: a heartbeat, or an authenticated connection before its session. */
  heard(nodeId: string, at = Date.now()): void {
    if (this.#sessions.has(nodeId)) this.#heardAt.set(nodeId, Math.max(at, this.#heardAt.get(nodeId) ?? 0));
    this.#seen(nodeId, at, false);
  }

  isOnline(nodeId: string): boolean {
    return this.#sessions.has(nodeId);
  }

  /** When the node's sessions began without a break (a renewal's overlap is no break); null: offline. */
  onlineSince(nodeId: string): number | null {
    return this.#since.get(nodeId) ?? null;
  }

  /** When anything last arrived from an online node (a heartbeat, its session's open); null: offline. */
  lastHeard(nodeId: string): number | null {
    return this.#heardAt.get(nodeId) ?? null;
  }

  /** Nodes with at least one open session. */
  get onlineCount(): number {
    return this.#sessions.size;
  }

  /** Writes what is pending (also before last_seen is read from the store). */
  async flush(): Promise<void> {
    if (this.#pending.size === 0) return;
    const entries = [...this.#pending];
    this.#pending.clear();
    try {
      await this.#store.touchNodes(entries);
    } catch (err) {
      // Lost, not retried: a last-seen time is advisory, and the next heartbeat writes a newer one.
      this.#log.warn({ err, nodes: entries.length }, 'could not record last-seen times');
    }
  }

  /** Writes what is pending and stops the timer (before the store closes). */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.flush();
  }

  #seen(nodeId: string, at: number, always: boolean): void {
    const last = this.#written.get(nodeId);
    if (!always && last !== undefined && at - last < this.#minIntervalMs) return;
    this.#written.set(nodeId, at);
    this.#pending.set(nodeId, Math.max(at, this.#pending.get(nodeId) ?? 0));
  }
}
