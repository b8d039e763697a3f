import type { Logger } from '../../util/logger.js';
import type { Envelope, EventType } from '../../contract/mesh-events.js';

/**
 * Routes verified events to handlers by type. Several handlers per type run in registration order;
 * a handler that throws (or rejects) is logged and the next one still runs; types nobody handles are
 * logged at debug level and dropped.
 */
export type EventHandler<T extends EventType = EventType> = (event: Envelope<T>) => void | Promise<void>;

export class EventDispatcher {
  readonly #handlers = new Map<string, EventHandler[]>();

  constructor(private readonly log: Logger) {}

  on<T extends EventType>(type: T, handler: EventHandler<T>): void {
    const list = this.#handlers.get(type) ?? [];
    list.push(handler as unknown as EventHandler);
    this.#handlers.set(type, list);
  }

  /** Runs the handlers of `event.type` one after another; resolves when all have finished. */
  async dispatch(event: { seq: number; type: string; ts: number; payload?: unknown }): Promise<{ handled: number; failed: number }> {
    const handlers = this.#handlers.get(event.type);
    if (!handlers || handlers.length === 0) {
      this.log.debug({ type: event.type, seq: event.seq }, 'no handler for event type; dropped');
      return { handled: 0, failed: 0 };
    }
    let failed = 0;
    for (const handle of handlers) {
      try {
        await handle(event as Envelope);
      } catch (err) {
        failed++;
        this.log.error({ err: err instanceof Error ? { message: err.message, code: (err as { code?: string }).code } : String(err), type: event.type, seq: event.seq }, 'event handler failed');
      }
    }
    return { handled: handlers.length, failed };
  }
}
