/**
 * Store writes of one node's messages, one after another in the order the messages arrived.
 *
 * Message handlers are synchronous; the store is async. On SQLite every query settles in a microtask,
 * so writes kept the arrival order anyway; on PostgreSQL each is a round trip on one of several pooled
 * connections, and two writes of one node started back to back could commit out of order (an
 * upgrade status `applied` overwritten by the `verified` before it, audit ids out of order). So each
 * node's writes form one promise chain. Per node rather than per session: a node renewing
 * make-before-break briefly has two sessions, and their messages are still one node's history.
 *
 * A chain holds at most `maxPending` tasks: the handlers that queue here are rate-limited before they
 * queue (audit.batch) or send a handful per upgrade (agent.upgrade.status), so a full chain means a
 * node flooding faster than the store writes, and its task is refused rather than held in memory.
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
