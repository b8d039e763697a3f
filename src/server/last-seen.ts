import type { Logger } from '../util/logger.js';
import type { Store } from './store/store.js';

/**
 * Batches `nodes.last_seen` writes: a touch is remembered and written with the others of the same
 * second in one transaction. A reconnect storm of 10,000 agents otherwise committed 20,000 single-row
 * transactions (one at the upgrade, one when the session opened) on the event loop that also runs
 * the handshakes. last_seen is informative (presence itself is the live session), so a write up to
 * `flushMs` late, or lost in a crash, costs nothing.
 */
export class LastSeenWriter {
  readonly #store: Store;
  readonly #log: Logger;
  readonly #pending = new Map<string, number>();
  readonly #timer: NodeJS.Timeout;

  constructor(store: Store, logger: Logger, flushMs = 1_000) {
    this.#store = store;
    this.#log = logger;
    this.#timer = setInterval(() => this.flush(), flushMs);
    this.#timer.unref();
  }

  touch(nodeId: string, at: number): void {
    this.#pending.set(nodeId, Math.max(at, this.#pending.get(nodeId) ?? 0));
  }

  flush(): void {
    if (this.#pending.size === 0) return;
    const entries = [...this.#pending];
    this.#pending.clear();
    try {
      this.#store.touchNodes(entries);
    } catch (err) {
      this.#log.warn({ err, nodes: entries.length }, 'could not record last-seen times');
    }
  }

  /** Writes what is pending and stops the timer (before the store closes). */
  close(): void {
    clearInterval(this.#timer);
    this.flush();
  }
}
