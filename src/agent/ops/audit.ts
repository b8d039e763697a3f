import type { InputOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import type { AgentUploads } from '../uploader.js';

type Record_ = InputOf<'audit.batch'>['records'][number];

/**
 * What the agent performed (actions, exec, transfers): written to the agent's own log and reported to
 * the server in audit.batch messages through agent core's upload channel (uploader.ts, given in the
 * feature context), so audit records get the same bounds as the agent's other uploads: a fixed-size
 * queue while disconnected (oldest dropped first, the drop counted in the next batch), batches bounded
 * in records and bytes, at most one every 2 s, and a pause while the session's control queue is above
 * its high-water mark. The channel is the core's: it flushes on reconnect and closes after the features.
 */
export class AuditReporter {
  readonly #uploads: Pick<AgentUploads, 'recordAudit'>;
  readonly #log: Logger | null;

  constructor(uploads: Pick<AgentUploads, 'recordAudit'>, logger?: Logger) {
    this.#uploads = uploads;
    this.#log = logger ?? null;
  }

  record(r: Omit<Record_, 'ts'>): void {
    // Also in the agent's own log (journald, `server logs`): what ran here and how it ended.
    this.#log?.info({ operation: r.action, target: r.target, result: r.result }, 'operation finished');
    this.#uploads.recordAudit(r);
  }
}
