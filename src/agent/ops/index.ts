import type { AgentFeature, AgentFeatureContext } from '../feature.js';
import { ActionService } from './actions.js';
import { AuditReporter } from './audit.js';
import type { BuiltinRunner } from './builtins.js';
import { ExecService } from './exec.js';
import { LogTailService } from './log-tail.js';
import { parseOpsOptions, type OpsOptions, type OpsOptionsInput } from './options.js';
import { TransferService } from './transfer.js';
import { SelfUpgrader, type UpgraderRunner } from './upgrade.js';
import { reportTrialConnected, UPGRADE_TRIAL_ENV } from './upgrade-trial.js';
import { loadReleaseKeys, mergeReleaseKeys } from './release-keys.js';
import { parseReleaseKey } from '../../contract/release.js';

export { parseOpsOptions, type OpsOptions, type OpsOptionsInput } from './options.js';
export { saveReleaseKeys } from './release-keys.js';
export { trialParentPid } from './upgrade-trial.js';

/**
 * The agent's half of operations (docs/OPERATIONS.md): handlers for the server-opened streams
 * action.request, exec.open, log.stream and file.open, agent.upgrade offers, and audit reports.
 */

/**
 * What operations take from the feature context: registrations, the agent's log file (log.stream
 * tails it) and the upload channel (audit records).
 */
export type OpsFeatureContext = Pick<AgentFeatureContext, 'stateDir' | 'logger' | 'logFile' | 'uploads' | 'onStream' | 'onMessage' | 'addHelloFields' | 'onConnected'>;

/** What operations read off the runner itself: identity, state and reconcilers (built-ins), stop (self-upgrade). */
export type OpsRunner = BuiltinRunner & UpgraderRunner;

export interface OpsAgentContext extends OpsFeatureContext {
  options: OpsOptionsInput;
  /** Replaces the exit-75 restart after a self-upgrade (tests). */
  restart?: () => void;
  /** How a new build is started on trial (tests; default: as this process was started). */
  trialCommand?: (file: string) => { command: string; args: string[] };
}

export interface OpsAgentHandle {
  readonly buildId: string | null;
  readonly actions: ActionService;
  readonly exec: ExecService;
  readonly logs: LogTailService;
  readonly transfers: TransferService;
  readonly upgrader: SelfUpgrader | null;
  counters(): Record<string, number>;
  /** Drops the feature's handlers and listeners from the runner (the feature's close). */
  close(): void;
}

/** Validates `ctx.options` (parseOpsOptions), then attaches operations to the runner. */
export async function opsAgentFeature(runner: OpsRunner, ctx: OpsAgentContext): Promise<OpsAgentHandle> {
  return attachOps(runner, { ...ctx, options: parseOpsOptions(ctx.options, ctx.stateDir) });
}

/** The operations feature of `agent run`, with options the CLI has already validated. */
export function opsFeature(options: OpsOptions): AgentFeature {
  return {
    name: 'ops',
    async attach(runner, ctx) {
      const ops = await attachOps(runner, { ...ctx, options });
      return () => ops.close();
    },
  };
}

async function attachOps(runner: OpsRunner, ctx: Omit<OpsAgentContext, 'options'> & { options: OpsOptions }): Promise<OpsAgentHandle> {
  const opts = ctx.options;
  const log = ctx.logger.child({ component: 'ops' });
  const audit = new AuditReporter(ctx.uploads, log);
  const upgrader = opts.bundlePath
    ? await SelfUpgrader.create(runner, {
        bundlePath: opts.bundlePath,
        stateDir: ctx.stateDir,
        logger: log,
        // The keys pinned at enrollment and those given to `agent run`: either may vouch for a build.
        releaseKeys: mergeReleaseKeys(await loadReleaseKeys(ctx.stateDir), opts.releaseKeys.map(parseReleaseKey)),
        allowUnsigned: opts.allowUnsignedUpgrades,
        healthTimeoutMs: opts.upgradeHealthTimeoutMs,
        ...(ctx.restart ? { restart: ctx.restart } : {}),
        ...(ctx.trialCommand ? { trialCommand: ctx.trialCommand } : {}),
      })
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

  const registered = [
    ctx.onStream('action.request', (stream, session) => actions.handle(stream, session)),
    ctx.onStream('exec.open', (stream, session) => exec.handle(stream, session)),
    ctx.onStream('log.stream', (stream, session) => logs.handle(stream, session)),
    ctx.onStream('file.open', (stream, session) => transfers.handle(stream, session)),
  ];

  if (upgrader) {
    const onTrial = process.env[UPGRADE_TRIAL_ENV] !== undefined;
    ctx.addHelloFields(() => ({ buildId: upgrader.buildId }));
    registered.push(
      ctx.onMessage('agent.upgrade', (offer) => {
        if (!onTrial) void upgrader.offer(offer);
      }),
      ctx.onConnected((_session, welcome) => {
        // On trial (upgrade-trial.ts) this build only proves it connects: it reports to its parent and
        // leaves upgrades and the previous outcome to the process that will run for real.
        if (onTrial) {
          reportTrialConnected(upgrader.buildId);
          return;
        }
        void upgrader.reportRecorded();
        if (welcome.upgrade) void upgrader.offer(welcome.upgrade);
      }),
    );
  }
  log.info({ allowExec: opts.allowExec, transferDirs: opts.transferDirs, hooksDir: opts.hooksDir, maxActions: opts.maxActions, buildId }, 'operations ready');
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    for (const off of registered.reverse()) off();
  };
  return { buildId, actions, exec, logs, transfers, upgrader, counters, close };
}
