import type { InputOf } from '../protocol/registry.js';
import type { Session } from '../protocol/session.js';

/**
 * The agent's one channel of records to the server, on its one connection: metrics.batch (periodic
 * snapshots) and logs.batch (warn and above) from the observability feature, audit.batch (every
 * action, exec and transfer) from the ops feature. Agent core owns it (one per runner, made by
 * feature.ts); features reach it only through the `uploads` of their context. Memory is bounded
 * whatever the server does: each kind has a fixed-size queue; when it is full the oldest record is
 * dropped and counted, and the count travels with the next batch of that kind (`dropped`). Sending is bounded in rate (one batch per kind per `minIntervalMs`) and
 * size (`maxBatchRecords` records, `maxBatchBytes` estimated bytes), and pauses while the session's
 * control queue is above its high-water mark (send() returned false: the server is slow).
 */

export type MetricSample = InputOf<'metrics.batch'>['samples'][number];
export type LogRecord = InputOf<'logs.batch'>['records'][number];
export type AuditRecord = InputOf<'audit.batch'>['records'][number];

type Kind = 'metrics' | 'logs' | 'audit';

export interface UploaderLimits {
  /** Records held per kind while waiting to be sent. */
  maxQueued: Record<Kind, number>;
  maxBatchRecords: number;
  maxBatchBytes: number;
  minIntervalMs: number;
}

export const DEFAULT_UPLOADER_LIMITS: UploaderLimits = Object.freeze({
  maxQueued: Object.freeze({ metrics: 4096, logs: 1000, audit: 2000 }),
  maxBatchRecords: 1024,
  maxBatchBytes: 256 * 1024,
  minIntervalMs: 2_000,
});

/** A fixed-capacity FIFO that drops (and counts) its oldest entry when full. */
export class DropOldestQueue<T> {
  #items: (T | undefined)[];
  #head = 0;
  #size = 0;
  dropped = 0;

  constructor(readonly capacity: number) {
    this.#items = new Array<T | undefined>(capacity);
  }

  get size(): number {
    return this.#size;
  }

  push(item: T): void {
    if (this.#size === this.capacity) {
      this.#items[this.#head] = undefined;
      this.#head = (this.#head + 1) % this.capacity;
      this.#size--;
      this.dropped++;
    }
    this.#items[(this.#head + this.#size) % this.capacity] = item;
    this.#size++;
  }

  /** Removes up to `max` items from the front while `fits` accepts them. */
  take(max: number, fits: (item: T) => boolean): T[] {
    const out: T[] = [];
    while (this.#size > 0 && out.length < max) {
      const item = this.#items[this.#head] as T;
      if (!fits(item) && out.length > 0) break;
      out.push(item);
      this.#items[this.#head] = undefined;
      this.#head = (this.#head + 1) % this.capacity;
      this.#size--;
    }
    return out;
  }
}

export class AgentUploader {
  readonly limits: UploaderLimits;
  readonly #queues: { metrics: DropOldestQueue<MetricSample>; logs: DropOldestQueue<LogRecord>; audit: DropOldestQueue<AuditRecord> };
  readonly #lastSent: Record<Kind, number> = { metrics: 0, logs: 0, audit: 0 };
  readonly #session: () => Session | null;
  #timer: NodeJS.Timeout | null = null;
  /** Totals for tests and the agent's own metrics. */
  readonly sent: Record<Kind, number> = { metrics: 0, logs: 0, audit: 0 };

  constructor(session: () => Session | null, limits: Partial<UploaderLimits> = {}) {
    this.limits = { ...DEFAULT_UPLOADER_LIMITS, ...limits, maxQueued: { ...DEFAULT_UPLOADER_LIMITS.maxQueued, ...limits.maxQueued } };
    this.#session = session;
    this.#queues = {
      metrics: new DropOldestQueue(this.limits.maxQueued.metrics),
      logs: new DropOldestQueue(this.limits.maxQueued.logs),
      audit: new DropOldestQueue(this.limits.maxQueued.audit),
    };
  }

  addMetrics(samples: readonly MetricSample[]): void {
    for (const s of samples) this.#queues.metrics.push(s);
    this.#schedule();
  }

  addLog(record: LogRecord): void {
    this.#queues.logs.push(record);
    this.#schedule();
  }

  recordAudit(record: Omit<AuditRecord, 'ts'> & { ts?: number }): void {
    this.#queues.audit.push({ ...record, ts: record.ts ?? Date.now() });
    this.#schedule();
  }

  queued(kind: Kind): number {
    return this.#queues[kind].size;
  }

  dropped(kind: Kind): number {
    return this.#queues[kind].dropped;
  }

  /** Sends what the rate allows now; reschedules itself while records wait. Call on (re)connect too. */
  flush(now = Date.now()): void {
    const session = this.#session();
    if (!session || session.state !== 'open') return;
    for (const kind of ['audit', 'logs', 'metrics'] as const) {
      const q = this.#queues[kind];
      if ((q.size === 0 && q.dropped === 0) || now - this.#lastSent[kind] < this.limits.minIntervalMs) continue;
      let bytes = 0;
      const batch = q.take(this.limits.maxBatchRecords, (item) => {
        bytes += estimateBytes(item);
        return bytes <= this.limits.maxBatchBytes;
      });
      const dropped = q.dropped;
      q.dropped = 0;
      const extra = dropped > 0 ? { dropped } : {};
      let ok: boolean;
      if (kind === 'metrics') ok = session.send('metrics.batch', { samples: batch as MetricSample[], ...extra });
      else if (kind === 'logs') ok = session.send('logs.batch', { records: batch as LogRecord[], ...extra });
      else ok = session.send('audit.batch', { records: batch as AuditRecord[], ...extra });
      this.sent[kind] += batch.length;
      this.#lastSent[kind] = now;
      // The control queue is above its high-water mark: the server or the link is slow. Stop here;
      // records keep waiting in the bounded queues.
      if (!ok) break;
    }
    this.#schedule();
  }

  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #schedule(): void {
    if (this.#timer) return;
    const waiting = (['metrics', 'logs', 'audit'] as const).some((k) => this.#queues[k].size > 0 || this.#queues[k].dropped > 0);
    if (!waiting) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.flush();
    }, this.limits.minIntervalMs);
    this.#timer.unref();
  }
}

/** What features may do with the channel: hand it records. Sending, flushing and closing are the core's. */
export type AgentUploads = Pick<AgentUploader, 'addMetrics' | 'addLog' | 'recordAudit'>;

/** A cheap upper-ish estimate of a record's MessagePack size. */
function estimateBytes(item: unknown): number {
  try {
    return JSON.stringify(item).length + 16;
  } catch {
    return 1024;
  }
}
