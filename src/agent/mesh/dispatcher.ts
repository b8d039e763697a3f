import { HandlerRegistry } from '../../protocol/handler-registry.js';
import type { Logger } from '../../util/logger.js';
import type { Envelope, EventType } from '../../contract/mesh-events.js';

/**
 * Routes verified events to handlers by type. Several handlers per type run in registration order;
 * a handler that throws (or rejects) is logged and the next one still runs; types nobody handles are
 * logged at debug level and dropped.
 */
export type EventHandler<T extends EventType = EventType> = (event: Envelope<T>) => void | Promise<void>;

type EventArgs = { [T in EventType]: [event: Envelope<T>] };

export class EventDispatcher {
  readonly #handlers = new HandlerRegistry<EventArgs>();

  constructor(private readonly log: Logger) {}

  on<T extends EventType>(type: T, handler: EventHandler<T>): void {
    this.#handlers.on(type, handler);
  }

  /** Runs the handlers of `event.type` one after another; resolves when all have finished. */
  async dispatch(event: { seq: number; type: string; ts: number; payload?: unknown }): Promise<{ handled: number; failed: number }> {
    const type = event.type as EventType;
    if (!this.#handlers.has(type)) {
      this.log.debug({ type: event.type, seq: event.seq }, 'no handler for event type; dropped');
      return { handled: 0, failed: 0 };
    }
    // The envelope was verified and its payload checked against the schema of its type by the caller.
    return this.#handlers.emitSerial(type, [event] as unknown as EventArgs[typeof type], (err) =>
      this.log.error({ err: err instanceof Error ? { message: err.message, code: (err as { code?: string }).code } : String(err), type: event.type, seq: event.seq }, 'event handler failed'),
    );
  }
}
