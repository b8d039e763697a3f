/**
 * Handlers by key, typed per key: `HandlerRegistry<{ event: [payload: Event, session: Session] }>`
 * lets `on('event', (payload, session) => ...)` see the payload type of that key without a cast at
 * the call site. Used for the message, stream and request handlers of both roles (the agent runner,
 * the server's session host) and the agent's mesh event dispatcher; pure (no I/O, no logging).
 *
 * Handlers of a key run in registration order. A handler that throws (or rejects, in emitSerial) is
 * reported to `onError` and the next one still runs: one feature's bug must not cut off another's
 * handling of the same message. An exclusive registry allows one handler a key (streams: exactly
 * one party may accept or reject a stream).
 */

type Handler<A extends readonly unknown[]> = (...args: A) => unknown;

export type HandlerArgs<T> = { readonly [K in keyof T]: readonly unknown[] };

export class HandlerRegistry<Args extends HandlerArgs<Args>> {
  // One map for every key: the per-key types are enforced by on() and recovered in handlersOf().
  readonly #handlers = new Map<keyof Args, Array<Handler<never>>>();
  readonly #exclusive: boolean;

  constructor(options: { exclusive?: boolean } = {}) {
    this.#exclusive = options.exclusive ?? false;
  }

  /** Adds a handler for `key`; returns its removal. Exclusive registries throw on a second one. */
  on<K extends keyof Args>(key: K, handler: Handler<Args[K]>): () => void {
    const list = this.#handlers.get(key) ?? [];
    if (this.#exclusive && list.length > 0) throw new Error(`a handler for ${String(key)} is already registered`);
    list.push(handler as Handler<never>);
    this.#handlers.set(key, list);
    return () => {
      const i = list.indexOf(handler as Handler<never>);
      if (i >= 0) list.splice(i, 1);
    };
  }

  /** The keys that have a handler now, in the order they were first registered. */
  keys(): Array<keyof Args> {
    return [...this.#handlers].filter(([, list]) => list.length > 0).map(([key]) => key);
  }

  has(key: keyof Args): boolean {
    return (this.#handlers.get(key)?.length ?? 0) > 0;
  }

  handlersOf<K extends keyof Args>(key: K): ReadonlyArray<Handler<Args[K]>> {
    return (this.#handlers.get(key) ?? []) as unknown as ReadonlyArray<Handler<Args[K]>>;
  }

  /** Runs the handlers of `key` now, in order; returns how many ran. */
  emit<K extends keyof Args>(key: K, args: Args[K], onError: (err: unknown) => void): number {
    const list = this.handlersOf(key).slice();
    for (const handle of list) {
      try {
        handle(...args);
      } catch (err) {
        onError(err);
      }
    }
    return list.length;
  }

  /** Runs the handlers of `key` one after another, awaiting each; resolves when all have finished. */
  async emitSerial<K extends keyof Args>(key: K, args: Args[K], onError: (err: unknown) => void): Promise<{ handled: number; failed: number }> {
    const list = this.handlersOf(key).slice();
    let failed = 0;
    for (const handle of list) {
      try {
        await handle(...args);
      } catch (err) {
        failed++;
        onError(err);
      }
    }
    return { handled: list.length, failed };
  }
}
