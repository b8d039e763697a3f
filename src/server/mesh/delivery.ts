import type { Session } from '../../protocol/session.js';
import type { Logger } from '../../util/logger.js';
import type { StoredEvent } from './store.js';
import type { EventLog, Outgoing } from './event-log.js';

/**
 * Sending logged events to agents' sessions, respecting backpressure.
 *
 * A node's events go out live only on a session that has asked for its replay (its first
 * state.request, see MeshService.replay): before that, the agent has not attached its handlers.
 *
 * `Session.send()` returns false once the session's control queue is above its high-water mark (and
 * fails the session at 16× that). From then on this session gets nothing more: the events are in the
 * log already, so nothing is lost by holding them back. Control messages have no 'drain' event; a
 * ping queued behind the events is answered once the agent has read everything before it, which is
 * the drain. Then the events logged meanwhile are sent from the log, in order. If some were pruned
 * past retention in between, the agent sees a seq gap and reconciles (state.request with its digest).
 */

/** Live delivery: the node's current session, if any. */
export interface Delivery {
  sessionOf(nodeId: string): Session | undefined;
}

/** How long one drain probe waits for its pong; on a timeout the session is probed again while open. */
const DRAIN_PROBE_TIMEOUT_MS = 30_000;

/** zod's Uint8Array is over an ArrayBuffer; Buffers from node:crypto and the codec are. */
const bin = (b: Uint8Array): Uint8Array<ArrayBuffer> => b as Uint8Array<ArrayBuffer>;

export class EventDelivery {
  readonly #log: EventLog;
  readonly #logger: Logger;
  #sessions: Delivery | null = null;
  /** Sessions that asked for their replay: only these get live events. */
  readonly #ready = new WeakSet<Session>();
  /** Sessions that reported backpressure, with the seq of the last event queued on each. */
  readonly #held = new WeakMap<Session, number>();

  constructor(log: EventLog, logger: Logger) {
    this.#log = log;
    this.#logger = logger;
  }

  setSessions(sessions: Delivery): void {
    this.#sessions = sessions;
  }

  /** Marks a session as wanting live events; false when it already did. */
  markReady(session: Session): boolean {
    if (this.#ready.has(session)) return false;
    this.#ready.add(session);
    return true;
  }

  isReady(session: Session): boolean {
    return this.#ready.has(session);
  }

  /** Sends freshly appended events to their nodes' ready sessions. */
  deliver(outgoing: readonly Outgoing[]): void {
    for (const o of outgoing) {
      const session = this.#sessions?.sessionOf(o.nodeId);
      if (session && this.#ready.has(session) && session.state === 'open') this.#send(session, o.nodeId, o.event.seq, o.bytes, o.event);
    }
  }

  /** Sends stored events (a replay) in order on `session`, as far as its backpressure allows. */
  sendStored(session: Session, nodeId: string, events: readonly StoredEvent[]): void {
    for (const e of events) {
      if (this.#held.has(session) || session.state !== 'open') return;
      this.#send(session, nodeId, e.seq, this.#log.envelopeOf(e), e);
    }
  }

  /** Queues one event unless the session is held; holds it when the queue reports backpressure. */
  #send(session: Session, nodeId: string, seq: number, envelope: Uint8Array, signed: Pick<StoredEvent, 'signature' | 'keyId'>): void {
    if (this.#held.has(session)) return;
    if (session.send('event', { envelope: bin(envelope), signature: bin(signed.signature), keyId: signed.keyId })) return;
    this.#held.set(session, seq);
    this.#logger.debug({ nodeId, seq }, 'session backed up; its events wait in the log until it drains');
    this.#probeDrain(session, nodeId);
  }

  #probeDrain(session: Session, nodeId: string): void {
    let probe: Promise<number>;
    try {
      probe = session.ping(DRAIN_PROBE_TIMEOUT_MS);
    } catch {
      this.#held.delete(session); // closed meanwhile: the next session starts with a replay
      return;
    }
    probe.then(
      () => this.#resume(session, nodeId),
      () => {
        if (session.state === 'open') this.#probeDrain(session, nodeId);
        else this.#held.delete(session);
      },
    );
  }

  #resume(session: Session, nodeId: string): void {
    const sentSeq = this.#held.get(session);
    this.#held.delete(session);
    // A session that closed or was replaced meanwhile needs nothing: the next one asks for a replay.
    if (sentSeq === undefined || session.state !== 'open' || this.#sessions?.sessionOf(nodeId) !== session) return;
    const missed = this.#log.after(nodeId, sentSeq);
    if (missed.length > 0) this.#logger.debug({ nodeId, from: sentSeq, events: missed.length }, 'session drained; sending the events held back');
    this.sendStored(session, nodeId, missed);
  }
}
