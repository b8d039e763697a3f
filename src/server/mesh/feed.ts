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
/**
 * A page of the feed holds entries up to this many bytes of detail (at least one entry), so a page of
 * large entries stays far below the admin client's 16 MiB answer cap: the reader pages on by id.
 */
export const FEED_PAGE_BYTES = 2 * 1024 * 1024;
/** What a drift report keeps: its first items, each field clipped (the agent's text, not the server's). */
const DRIFT_ITEMS_KEPT = 64;
const DRIFT_TEXT_CHARS = 256;

export class MeshFeed {
  readonly #db: MeshStore;
  readonly #retain: number;
  readonly #waiters = new Set<() => void>();
  #inserts = 0;

  constructor(db: MeshStore, retain: number) {
    this.#db = db;
    this.#retain = retain;
  }

  /** An event was appended to a node's log (through `tx`, the caller's transaction). */
  async recordEvent(tx: MeshStore, nodeId: string, type: EventType, seq: number, payload: unknown, now: number): Promise<void> {
    this.#inserts++;
    await tx.queueFeed({ ts: now, nodeId, kind: 'event', type, seq, detail: JSON.stringify(redact(type, payload)) });
  }

  /**
   * A drift report, as received at `receivedAt`: the agent's `ts` is not trusted (a future or ancient
   * time would reorder the feed), the items are capped and clipped, and the insert counts toward pruning.
   */
  async recordDrift(nodeId: string, report: PayloadOf<'drift.report'>, receivedAt: number): Promise<void> {
    const clip = (t: string | undefined): string | undefined => (t === undefined ? undefined : t.slice(0, DRIFT_TEXT_CHARS));
    const items = report.items.slice(0, DRIFT_ITEMS_KEPT).map((i) => ({ field: clip(i.field), expected: clip(i.expected), actual: clip(i.actual) }));
    const detail = { items, ...(report.items.length > DRIFT_ITEMS_KEPT ? { moreItems: report.items.length - DRIFT_ITEMS_KEPT } : {}) };
    this.#inserts++;
    await this.#db.insertFeed({ ts: receivedAt, nodeId, kind: 'drift', type: 'drift.report', seq: null, detail: JSON.stringify(detail) });
  }

  /** Drops the oldest rows beyond `retain`, checked once per PRUNE_EVERY_INSERTS events. */
  async pruneIfDue(): Promise<void> {
    if (this.#inserts <= PRUNE_EVERY_INSERTS) return;
    this.#inserts = 0;
    const last = await this.#db.lastFeedId();
    if (last > this.#retain) await this.#db.pruneFeed(last - this.#retain);
  }

  /** Wakes every waiting reader (the feed grew, or the service is closing). */
  wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  /** Entries after id `after`, at most `limit` and at most FEED_PAGE_BYTES of detail (never none when there are some). */
  async entries(after: number, nodeId: string | null, limit = 500): Promise<FeedEntry[]> {
    let bytes = 0;
    const rows = (await this.#db.feedAfter(after, nodeId, limit)).filter((r, i) => {
      bytes += r.detail.length;
      return i === 0 || bytes <= FEED_PAGE_BYTES;
    });
    // filter keeps scanning; the byte count only grows, so the kept rows are a prefix.
    return rows.map((r) => ({
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

  lastId(): Promise<number> {
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
