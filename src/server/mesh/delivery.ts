import type { AgentHandle, AgentSessions } from '../agent-sessions.js';
import type { Logger } from '../../util/logger.js';
import type { StoredEvent } from './store.js';
import type { EventLog, Outgoing } from './event-log.js';

/**
 * Sending logged events to agents through the sessions facade, respecting backpressure.
 *
 * A node's events go out live only on a session that has asked for its replay (its first
 * state.request, see MeshService.replay): before that, the agent has not attached its handlers.
 * Sessions are told apart by their handles (one per session), so a node that reconnected is a new
 * handle that starts with its own replay.
 *
 * `send()` reports `backpressure` once the session's control queue is above its high-water mark (and
 * the session fails at 16× that). From then on this session gets nothing more: the events are in the
 * log already, so nothing is lost by holding them back. When `drained()` resolves (the agent has read
 * everything queued before it), the events logged meanwhile are sent from the log, in order. If some
 * were pruned past retention in between, the agent sees a seq gap and reconciles (state.request with
 * its digest). `closed` needs nothing: the node's next session asks for a replay.
 *
 * Reading the log is async, so the resumption runs through `serialize` (MeshService's serialised
 * writes): no event is appended and sent live between the read and the sends of what it returned.
 */

/** What delivery uses of the sessions facade: the node's current session, sending, and the drain. */
export type DeliverySessions = Pick<AgentSessions, 'current' | 'send' | 'drained'>;

/** Runs `work` after the mesh's pending writes and before later ones (MeshService). */
export type Serialize = <T>(work: () => Promise<T>) => Promise<T>;

/** zod's Uint8Array is over an ArrayBuffer; Buffers from node:crypto and the codec are. */
const bin = (b: Uint8Array): Uint8Array<ArrayBuffer> => b as Uint8Array<ArrayBuffer>;

export class EventDelivery {
  readonly #log: EventLog;
  readonly #logger: Logger;
  readonly #serialize: Serialize;
  #sessions: DeliverySessions | null = null;
  /** Sessions that asked for their replay: only these get live events. */
  readonly #ready = new WeakSet<AgentHandle>();
  /** Sessions that reported backpressure, with the seq of the last event queued on each. */
  readonly #held = new WeakMap<AgentHandle, number>();

  constructor(log: EventLog, logger: Logger, serialize: Serialize) {
    this.#log = log;
    this.#logger = logger;
    this.#serialize = serialize;
  }

  setSessions(sessions: DeliverySessions): void {
    this.#sessions = sessions;
  }

  /** Marks a session as wanting live events; false when it already did. */
  markReady(agent: AgentHandle): boolean {
    if (this.#ready.has(agent)) return false;
    this.#ready.add(agent);
    return true;
  }

  isReady(agent: AgentHandle): boolean {
    return this.#ready.has(agent);
  }

  /** Sends freshly appended events to their nodes' ready sessions. */
  deliver(outgoing: readonly Outgoing[]): void {
    for (const o of outgoing) {
      const agent = this.#sessions?.current(o.nodeId);
      if (agent && this.#ready.has(agent)) this.#send(agent, o.event.seq, o.bytes, o.event);
    }
  }

  /** Sends stored events (a replay) in order on the session, as far as its backpressure allows. */
  sendStored(agent: AgentHandle, events: readonly StoredEvent[]): void {
    for (const e of events) {
      if (!this.#send(agent, e.seq, this.#log.envelopeOf(e), e)) return;
    }
  }

  /** Queues one event unless the session is held; false when nothing more may be sent to it now. */
  #send(agent: AgentHandle, seq: number, envelope: Uint8Array, signed: Pick<StoredEvent, 'signature' | 'keyId'>): boolean {
    const sessions = this.#sessions;
    if (!sessions || this.#held.has(agent)) return false;
    const result = sessions.send(agent, 'event', { envelope: bin(envelope), signature: bin(signed.signature), keyId: signed.keyId });
    if (result === 'sent') return true;
    if (result === 'closed') return false;
    this.#held.set(agent, seq);
    this.#logger.debug({ nodeId: agent.nodeId, seq }, 'session backed up; its events wait in the log until it drains');
    sessions.drained(agent).then(
      () => this.#resume(agent),
      () => this.#held.delete(agent), // closed meanwhile: the next session starts with a replay
    );
    return false;
  }

  #resume(agent: AgentHandle): void {
    this.#serialize(async () => {
      const sentSeq = this.#held.get(agent);
      this.#held.delete(agent);
      // A session that closed or was replaced meanwhile needs nothing: the next one asks for a replay.
      if (sentSeq === undefined || !agent.open || this.#sessions?.current(agent.nodeId) !== agent) return;
      const missed = await this.#log.after(agent.nodeId, sentSeq);
      if (missed.length > 0) this.#logger.debug({ nodeId: agent.nodeId, from: sentSeq, events: missed.length }, 'session drained; sending the events held back');
      this.sendStored(agent, missed);
    }).catch((err: unknown) => {
      // The agent sees a seq gap at its next event (or none comes) and reconciles with its digest.
      this.#logger.error({ err, nodeId: agent.nodeId }, 'could not send the events held back');
    });
  }
}
