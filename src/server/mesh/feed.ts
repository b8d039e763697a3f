import type { PayloadOf } from '../../protocol/registry.js';
import type { EventType } from '../../contract/mesh-events.js';
import type { MeshStore } from './store.js';

/**
 * The operator feed (`meshlink server mesh events tail`): every event appended and every drift report,
 * with secrets redacted, kept to the newest `retain` rows. Long-polling readers wait on `wait`.
 */

export interface FeedEntry {
  id: number;
  ts: string;
  nodeId: string | null;
  kind: 'event' | 'drift';
  type: string;
  seq: number | null;
  detail: unknown;
}

/** Inserts between two checks of the feed's length (a check is one indexed query). */
const PRUNE_EVERY_INSERTS = 1_000;

export class MeshFeed {
  readonly #db: MeshStore;
  readonly #retain: number;
  readonly #waiters = new Set<() => void>();
  #inserts = 0;

  constructor(db: MeshStore, retain: number) {
    this.#db = db;
    this.#retain = retain;
  }

  /** An event was appended to a node's log (inside the caller's transaction). */
  recordEvent(nodeId: string, type: EventType, seq: number, payload: unknown, now: number): void {
    this.#db.insertFeed({ ts: now, nodeId, kind: 'event', type, seq, detail: JSON.stringify(redact(type, payload)) });
    this.#inserts++;
  }

  recordDrift(nodeId: string, report: PayloadOf<'drift.report'>): void {
    this.#db.insertFeed({ ts: report.ts, nodeId, kind: 'drift', type: 'drift.report', seq: null, detail: JSON.stringify({ items: report.items }) });
  }

  /** Drops the oldest rows beyond `retain`, checked once per PRUNE_EVERY_INSERTS events. */
  pruneIfDue(): void {
    if (this.#inserts <= PRUNE_EVERY_INSERTS) return;
    this.#inserts = 0;
    const last = this.#db.lastFeedId();
    if (last > this.#retain) this.#db.pruneFeed(last - this.#retain);
  }

  /** Wakes every waiting reader (the feed grew, or the service is closing). */
  wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  entries(after: number, nodeId: string | null, limit = 500): FeedEntry[] {
    return this.#db.feedAfter(after, nodeId, limit).map((r) => ({
      id: r.id,
      ts: new Date(r.ts).toISOString(),
      nodeId: r.nodeId,
      kind: r.kind as FeedEntry['kind'],
      type: r.type,
      seq: r.seq,
      detail: JSON.parse(r.detail) as unknown,
    }));
  }

  /** Resolves when the feed grows or after `ms`. */
  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#waiters.add(done);
    });
  }

  lastId(): number {
    return this.#db.lastFeedId();
  }
}

/** What the feed may show of a payload: never PSKs or key material beyond public keys. */
export function redact(type: EventType, payload: unknown): unknown {
  const p = payload as Record<string, unknown>;
  const stripPeers = (peers: unknown): unknown =>
    Array.isArray(peers) ? peers.map((x: Record<string, unknown>) => ({ ...x, psk: x.psk === undefined ? undefined : '[redacted]' })) : peers;
  switch (type) {
    case 'peer_added':
      return { peers: stripPeers(p.peers) };
    case 'node_state_updated': {
      const s = p.state as Record<string, unknown>;
      return { state: { ...s, peers: stripPeers(s.peers) } };
    }
    case 'signing_key_rotated':
      return { keyId: p.keyId, publicKey: Buffer.from(p.publicKey as Uint8Array).toString('base64'), transitionMs: p.transitionMs };
    case 'node_secrets_updated':
      return { keys: p.keys };
    default:
      return payload;
  }
}
