import { encodeEnvelope, type EventType } from '../../contract/mesh-events.js';
import type { MeshStore, StoredEvent } from './store.js';
import type { MeshFeed } from './feed.js';
import type { SecretBox } from './secret-box.js';
import { signBytes, type SigningKey } from './signer.js';

/**
 * Each node's event log: events get the node's next seq, are encoded once, signed, stored (sealed
 * when they carry PSKs) and kept for replay up to `retain` per node. Sending is delivery.ts's job;
 * an event is appended, inside a transaction, before it is ever sent.
 */

/** An appended event and the exact bytes that were signed (and are sent). */
export interface Outgoing {
  nodeId: string;
  event: StoredEvent;
  bytes: Uint8Array;
}

/** Event types whose payload carries PSKs: stored sealed. */
const CARRIES_SECRETS: ReadonlySet<EventType> = new Set(['peer_added', 'node_state_updated']);
/** First byte of mesh_events.sealed: which of the two forms follows. */
const SEALED = Buffer.from([1]);
const PLAIN = Buffer.from([0]);

export class EventLog {
  readonly #db: MeshStore;
  readonly #box: SecretBox;
  readonly #signingKey: () => SigningKey;
  readonly #retain: number;
  readonly #feed: MeshFeed;

  constructor(db: MeshStore, box: SecretBox, signingKey: () => SigningKey, retain: number, feed: MeshFeed) {
    this.#db = db;
    this.#box = box;
    this.#signingKey = signingKey;
    this.#retain = retain;
    this.#feed = feed;
  }

  /**
   * Appends one signed event to a node's log through `tx`, the caller's transaction, and advances
   * `node.lastSeq`; the caller writes last_seq, once per node (setAnnounced or setLastSeq). The seq is
   * taken at the call, inside that transaction: the caller runs one appending transaction at a time
   * (MeshService's serialised writes), so a node's seqs are stored and sent in order.
   */
  async append(tx: MeshStore, node: { readonly id: string; lastSeq: number }, type: EventType, payload: unknown, now: number): Promise<Outgoing> {
    const seq = ++node.lastSeq;
    const bytes = encodeEnvelope({ seq, type, ts: now, payload } as never);
    const key = this.#signingKey();
    const event: StoredEvent = {
      nodeId: node.id,
      seq,
      type,
      ts: now,
      // Only envelopes with PSKs need sealing; the rest are stored as sent (the first byte tells which).
      sealed: CARRIES_SECRETS.has(type) ? Buffer.concat([SEALED, this.#box.seal(bytes, `event:${node.id}:${seq}`)]) : Buffer.concat([PLAIN, bytes]),
      signature: signBytes(key, bytes),
      keyId: key.keyId,
    };
    await tx.insertEvent(event);
    if (seq > this.#retain) await tx.pruneEvents(node.id, seq - this.#retain);
    await this.#feed.recordEvent(tx, node.id, type, seq, payload, now);
    return { nodeId: node.id, event, bytes };
  }

  /** The retained events after `seq`, in order (a replay, or delivery resuming after backpressure). */
  after(nodeId: string, seq: number): Promise<StoredEvent[]> {
    return this.#db.eventsAfter(nodeId, seq);
  }

  oldestSeq(nodeId: string): Promise<number | null> {
    return this.#db.oldestSeq(nodeId);
  }

  /** The signed bytes of a stored event (opened when it was sealed). */
  envelopeOf(e: StoredEvent): Buffer {
    return e.sealed[0] === SEALED[0] ? this.#box.open(e.sealed.subarray(1), `event:${e.nodeId}:${e.seq}`) : e.sealed.subarray(1);
  }
}
