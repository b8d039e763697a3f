import type { InputOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import type { AgentRunner } from '../connection.js';

type Record_ = InputOf<'audit.batch'>['records'][number];

/**
 * What the agent performed (actions, exec, transfers), reported to the server in audit.batch
 * messages. Records wait (bounded) while disconnected; beyond the bound the oldest are dropped and
 * the count travels with the next batch.
 */
export class AuditReporter {
  readonly #runner: AgentRunner;
  readonly #log: Logger | null;
  #pending: Record_[] = [];
  #dropped = 0;
  #scheduled = false;
  static readonly MAX_PENDING = 1000;

  constructor(runner: AgentRunner, logger?: Logger) {
    this.#runner = runner;
    this.#log = logger ?? null;
    runner.on('connected', () => this.#schedule());
  }

  record(r: Omit<Record_, 'ts'>): void {
    // Also in the agent's own log (journald, `server logs`): what ran here and how it ended.
    this.#log?.info({ operation: r.action, target: r.target, result: r.result }, 'operation finished');
    this.#pending.push({ ts: Date.now(), ...r });
    if (this.#pending.length > AuditReporter.MAX_PENDING) {
      this.#pending.shift();
      this.#dropped++;
    }
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    const session = this.#runner.session;
    if (!session || session.state !== 'open' || this.#pending.length === 0) return;
    const records = this.#pending.splice(0, 4096);
    session.send('audit.batch', { records, ...(this.#dropped > 0 ? { dropped: this.#dropped } : {}) });
    this.#dropped = 0;
  }
}
