import type { InputOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import type { AgentRunner } from '../connection.js';
import { ObservabilityUploader } from '../observability/uploader.js';

type Record_ = InputOf<'audit.batch'>['records'][number];

/**
 * What the agent performed (actions, exec, transfers): written to the agent's own log and reported to
 * the server in audit.batch messages through the observability uploader, so audit records get the same
 * bounds as the agent's other uploads: a fixed-size queue while disconnected (oldest dropped first, the
 * drop counted in the next batch), batches bounded in records and bytes, at most one every 2 s, and a
 * pause while the session's control queue is above its high-water mark.
 */
export class AuditReporter {
  readonly #uploader: ObservabilityUploader;
  readonly #log: Logger | null;
  readonly #detach: () => void;

  constructor(runner: AgentRunner, logger?: Logger) {
    this.#uploader = new ObservabilityUploader(() => runner.session);
    this.#log = logger ?? null;
    const flush = (): void => this.#uploader.flush();
    runner.on('connected', flush);
    this.#detach = () => runner.off('connected', flush);
  }

  /** Sends nothing more: drops the runner listener and the uploader's timer (the ops feature's close). */
  close(): void {
    this.#detach();
    this.#uploader.close();
  }

  record(r: Omit<Record_, 'ts'>): void {
    // Also in the agent's own log (journald, `server logs`): what ran here and how it ended.
    this.#log?.info({ operation: r.action, target: r.target, result: r.result }, 'operation finished');
    this.#uploader.recordAudit(r);
  }
}
