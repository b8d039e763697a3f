/**
 * Work of one node (store writes of its messages), one task after another in the order the messages
 * arrived. Over a store whose queries are round trips (PostgreSQL), two writes of one node started
 * back to back could otherwise commit out of order (an upgrade status `applied` overwritten by the
 * `verified` before it, the newest warnings listed before older ones). So each node's tasks form one
 * promise chain; per node rather than per session, since a node renewing make-before-break briefly
 * has two sessions, and their messages are still one node's history. Used by the ops and
 * observability features (which may not import each other).
 *
 * A chain holds at most `maxPending` tasks: the handlers that queue here are rate-limited before they
 * queue, so a full chain means a node flooding faster than the store writes, and its task is refused
 * rather than held in memory.
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
