import type { PayloadOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import { TokenBuckets } from '../../util/token-bucket.js';
import type { AuditLog } from '../audit-log.js';
import { NodeSerial } from '../../util/node-serial.js';

/**
 * What agents report having done (`audit.batch`) goes into the core's audit log next to the
 * operator's records, so one node must not be able to flood it, bury the operator's records or
 * rewrite history (issue 17, docs/OPERATIONS.md "Audit"):
 * - rate: at most `batchesPerMinute` batches per node (a token bucket; burst the same); a batch over
 *   it is dropped whole and logged;
 * - size: at most `perNodeRecords` agent records per node are kept, the oldest pruned first;
 * - time: a record's `ts` is the agent's clock, clamped to the receive time: never later than it,
 *   never earlier than `maxSkewMs` before it (24 h: an agent's upload queue is bounded and holds
 *   minutes, not days). A clamped record keeps the agent's value in `details.agentTs`.
 *
 * The rate is decided when the batch arrives (synchronously, in message order); the admitted batch's
 * writes then queue on the node's chain (serial.ts), behind that node's earlier writes.
 */
export interface AgentAuditLimits {
  batchesPerMinute?: number;
  perNodeRecords?: number;
  maxSkewMs?: number;
}

export const AGENT_AUDIT_DEFAULTS = { batchesPerMinute: 30, perNodeRecords: 10_000, maxSkewMs: 24 * 3_600_000 } as const;

export class AgentAuditIntake {
  readonly #audit: AuditLog;
  readonly #log: Logger;
  readonly #limits: Required<AgentAuditLimits>;
  readonly #buckets: TokenBuckets;
  readonly #serial: NodeSerial;

  /** `serial`: the chain the node's other writes go through (the ops feature's), so the audit log keeps their order. */
  constructor(audit: AuditLog, log: Logger, limits: AgentAuditLimits = {}, serial = new NodeSerial()) {
    this.#audit = audit;
    this.#log = log;
    this.#limits = { ...AGENT_AUDIT_DEFAULTS, ...limits };
    this.#buckets = new TokenBuckets({ perMinute: this.#limits.batchesPerMinute, maxEntries: 100_000 });
    this.#serial = serial;
  }

  /** Stores one batch of a node's records, within its limits; resolves to how many were stored. */
  receive(nodeId: string, batch: PayloadOf<'audit.batch'>, receivedAt = Date.now()): Promise<number> {
    if (batch.records.length === 0) return Promise.resolve(0);
    if (!this.#buckets.take(nodeId, receivedAt)) {
      this.#log.warn({ nodeId, records: batch.records.length }, 'audit batch over the node’s rate; dropped');
      return Promise.resolve(0);
    }
    // Only the newest records of a batch larger than what is kept can survive the pruning anyway.
    const records = batch.records.slice(-this.#limits.perNodeRecords);
    const earliest = receivedAt - this.#limits.maxSkewMs;
    const queued = this.#serial.run(nodeId, async () => {
      // One statement each, as before the store was async: a record is in the log once its insert settles.
      for (const r of records) {
        const ts = Math.min(receivedAt, Math.max(earliest, r.ts));
        const details = ts === r.ts ? (r.details ?? null) : { ...(r.details ?? {}), agentTs: r.ts };
        await this.#audit.record({ source: 'agent', ts, actor: r.actor ?? null, operation: r.action, nodeId, target: r.target ?? null, result: r.result, details });
      }
      await this.#audit.pruneAgentRecords(nodeId, this.#limits.perNodeRecords);
      return records.length;
    });
    if (queued === null) {
      this.#log.warn({ nodeId, records: batch.records.length }, 'audit batch while the node’s earlier writes are still queued; dropped');
      return Promise.resolve(0);
    }
    return queued;
  }
}
