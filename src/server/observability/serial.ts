/**
 * Store writes of one node's uploads, one after another in the order the messages arrived (the same
 * helper as the ops feature's serial.ts: features do not import each other).
 *
 * Message handlers are synchronous; the store is async. On SQLite every query settles in a microtask,
 * so writes kept the arrival order anyway; on PostgreSQL each is a round trip on one of several pooled
 * connections, and two logs.batch of one node started back to back could commit out of order (the
 * newest warnings listed before older ones, the per-node trim keeping the wrong ones). So each node's
 * writes form one promise chain; per node rather than per session, since a node renewing
 * make-before-break briefly has two sessions.
 *
 * A chain holds at most `maxPending` tasks. Batches are rate-limited before they queue, so a full
 * chain means the store is far behind; the task is refused rather than held in memory.
 */
export class NodeSerial {
  readonly #chains = new Map<string, { tail: Promise<void>; pending: number }>();
  readonly #maxPending: number;

  constructor(maxPending = 256) {
    this.#maxPending = maxPending;
  }

  /**
   * Queues `task` behind the node's earlier ones; resolves or rejects with it. Returns null (and
   * does not run the task) when the node's chain is full.
   */
  run<T>(nodeId: string, task: () => Promise<T>): Promise<T> | null {
    let chain = this.#chains.get(nodeId);
    if (!chain) this.#chains.set(nodeId, (chain = { tail: Promise.resolve(), pending: 0 }));
    if (chain.pending >= this.#maxPending) return null;
    chain.pending++;
    const c = chain;
    const result = c.tail.then(task);
    c.tail = result.then(
      () => this.#settled(nodeId, c),
      () => this.#settled(nodeId, c),
    );
    return result;
  }

  /** Tasks queued or running for the node. */
  pending(nodeId: string): number {
    return this.#chains.get(nodeId)?.pending ?? 0;
  }

  /** Resolves once every task queued so far has settled. */
  async idle(): Promise<void> {
    await Promise.all([...this.#chains.values()].map((c) => c.tail));
  }

  #settled(nodeId: string, chain: { pending: number }): void {
    chain.pending--;
    if (chain.pending === 0 && this.#chains.get(nodeId) === chain) this.#chains.delete(nodeId);
  }
}
