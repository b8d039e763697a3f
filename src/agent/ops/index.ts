import type { AgentRunner } from '../connection.js';
import type { AgentFeature, AgentFeatureContext } from '../feature.js';
import type { Logger } from '../../util/logger.js';
import { ActionService } from './actions.js';
import { AuditReporter } from './audit.js';
import { ExecService } from './exec.js';
import { LogTailService } from './log-tail.js';
import { parseOpsOptions, type OpsOptions, type OpsOptionsInput } from './options.js';
import { TransferService } from './transfer.js';
import { SelfUpgrader } from './upgrade.js';

export { parseOpsOptions, type OpsOptions, type OpsOptionsInput } from './options.js';

/**
 * The agent's half of operations (docs/OPERATIONS.md): handlers for the server-opened streams
 * action.request, exec.open, log.stream and file.open, agent.upgrade offers, and audit reports.
 */

export interface OpsAgentContext {
  stateDir: string;
  logger: Logger;
  /** The agent's own log file, which log.stream tails; null: `logs` is refused. */
  logFile: AgentFeatureContext['logFile'];
  options: OpsOptionsInput;
  /** Replaces the exit-75 restart after a self-upgrade (tests). */
  restart?: () => void;
}

export interface OpsAgentHandle {
  readonly buildId: string | null;
  readonly actions: ActionService;
  readonly exec: ExecService;
  readonly logs: LogTailService;
  readonly transfers: TransferService;
  readonly upgrader: SelfUpgrader | null;
  counters(): Record<string, number>;
  /** Stops audit reporting (the feature's close). */
  close(): void;
}

/** Validates `ctx.options` (parseOpsOptions), then attaches operations to the runner. */
export async function opsAgentFeature(runner: AgentRunner, ctx: OpsAgentContext): Promise<OpsAgentHandle> {
  return attachOps(runner, { ...ctx, options: parseOpsOptions(ctx.options, ctx.stateDir) });
}

/** The operations feature of `agent run`, with options the CLI has already validated. */
export function opsFeature(options: OpsOptions): AgentFeature {
  return {
    name: 'ops',
    async attach(runner, ctx) {
      const ops = await attachOps(runner, { stateDir: ctx.stateDir, logger: ctx.logger, logFile: ctx.logFile, options });
      return () => ops.close();
    },
  };
}

async function attachOps(runner: AgentRunner, ctx: Omit<OpsAgentContext, 'options'> & { options: OpsOptions }): Promise<OpsAgentHandle> {
  const opts = ctx.options;
  const log = ctx.logger.child({ component: 'ops' });
  const audit = new AuditReporter(runner, log);
  const upgrader = opts.bundlePath
    ? await SelfUpgrader.create(runner, { bundlePath: opts.bundlePath, logger: log, ...(ctx.restart ? { restart: ctx.restart } : {}) })
    : null;
  const buildId = upgrader?.buildId ?? null;

  const exec = new ExecService(opts, audit);
  const logs = new LogTailService(ctx.logFile);
  const transfers = new TransferService(opts, audit);
  const counters = (): Record<string, number> => ({
    runningActions: actions.running,
    queuedActions: actions.queued,
    runningExecs: exec.running,
    logFollowers: logs.followers,
    activeTransfers: transfers.active,
  });
  const actions = new ActionService(opts, { logger: log, audit, builtin: { runner, stateDir: ctx.stateDir, buildId, counters } });

  runner.onStream('action.request', (stream, session) => actions.handle(stream, session));
  runner.onStream('exec.open', (stream, session) => exec.handle(stream, session));
  runner.onStream('log.stream', (stream, session) => logs.handle(stream, session));
  runner.onStream('file.open', (stream, session) => transfers.handle(stream, session));

  if (upgrader) {
    runner.addHelloFields(() => ({ buildId: upgrader.buildId }));
    runner.onMessage('agent.upgrade', (offer) => void upgrader.offer(offer));
    runner.on('connected', (_session, welcome) => {
      if (welcome.upgrade) void upgrader.offer(welcome.upgrade);
    });
  }
  log.info({ allowExec: opts.allowExec, transferDirs: opts.transferDirs, hooksDir: opts.hooksDir, maxActions: opts.maxActions, buildId }, 'operations ready');
  return { buildId, actions, exec, logs, transfers, upgrader, counters, close: () => audit.close() };
}
