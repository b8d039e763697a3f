import type { Command } from 'commander';
import { Option } from 'commander';
import { z } from 'zod';
import { AgentRunner } from '../../agent/connection.js';
import { resolveStateDir } from '../../agent/config.js';
import { attachFeatures } from '../../agent/feature.js';
import { agentFeatures } from '../../agent/features.js';
import { openAgentLog } from '../../agent/state/log-file.js';
import { acquireRunLock } from '../../agent/state/run-lock.js';
import { trialParentPid } from '../../agent/ops/index.js';
import { resolveProxyConfig } from '../../agent/proxy.js';
import { MeshlinkError } from '../../errors.js';
import { parseDuration } from '../../util/duration.js';
import { LOG_LEVELS } from '../../util/logger.js';
import { applyConfigFile } from '../config-file.js';
import { AGENT_CONFIG_FILE, agentConfigPath, DEFAULT_AGENT_CONFIG } from './config-file.js';
import { addMeshFlags, parseMeshFlags } from './mesh-flags.js';
import { addObservabilityFlags, parseObservabilityFlags } from './observability-flags.js';
import { addOpsFlags, parseOpsFlags } from './ops-flags.js';
import { addTunnelFlags, parseTunnelFlags } from './tunnel-flags.js';

const runFlagsSchema = z.object({
  renewBeforeMs: z.number().int().min(0),
  lifetimeFraction: z.number().gt(0, '--renew-at must be a fraction between 0 and 1').lt(1, '--renew-at must be a fraction between 0 and 1'),
});

function parseRunFlags(renewBefore: string, renewAt: string): { renewBeforeMs: number; lifetimeFraction: number } {
  let renewBeforeMs: number;
  try {
    renewBeforeMs = parseDuration(renewBefore);
  } catch (err) {
    throw new MeshlinkError('ML_ERR_USAGE', `--renew-before: ${(err as Error).message}`);
  }
  const parsed = runFlagsSchema.safeParse({ renewBeforeMs, lifetimeFraction: Number(renewAt) });
  if (!parsed.success) throw new MeshlinkError('ML_ERR_USAGE', parsed.error.issues[0]?.message ?? 'invalid flags');
  return parsed.data;
}

type RunOptions = { stateDir?: string; logLevel?: string; renewBefore: string; renewAt: string; proxy?: string; config?: string } & Record<string, unknown>;

/** Hard deadline for a graceful stop (goaway, close, status write) after SIGTERM/SIGINT. */
const STOP_DEADLINE_MS = 5_000;

/**
 * `meshlink agent run`: the long-running service (docs/AGENT.md, "Running"). Every flag, the
 * features' included, is defined and parsed here; the features get frozen, typed options, attach
 * before the first connection and close in reverse order once the runner has stopped.
 */
export function registerRunCommand(agent: Command, onError: (err: unknown) => void): void {
  const run = agent.command('run');
  addMeshFlags(run);
  addObservabilityFlags(run);
  addOpsFlags(run);
  addTunnelFlags(run);
  run
    .description('keep the connection to the control plane (long-running; for systemd)')
    .option('--state-dir <dir>', 'state directory (default: MESHLINK_STATE_DIR or the documented default)')
    .option('--renew-before <duration>', 'renew when NotAfter is this close (or earlier, see --renew-at)', '7d')
    .option('--renew-at <fraction>', 'renew once this fraction of the certificate lifetime has passed', '0.6667')
    .option('--proxy <url>', 'HTTP CONNECT proxy, http://[user:pass@]host:port (default: HTTPS_PROXY or ALL_PROXY, honouring NO_PROXY)')
    .option('--config <file>', `options of agent run as one JSON object, e.g. {"allowExec": true, "transferDir": ["/srv/drop"]}; flags win (default: MESHLINK_AGENT_CONFIG, else ${DEFAULT_AGENT_CONFIG} if present)`)
    .addOption(new Option('--log-level <level>', 'log level (default: MESHLINK_LOG_LEVEL or info)').choices([...LOG_LEVELS]))
    .action(async (flags: RunOptions) => {
      try {
        // The config file fills what the command line left out; then everything is parsed as flags.
        const configFile = agentConfigPath(flags.config);
        if (configFile) applyConfigFile(run, configFile, AGENT_CONFIG_FILE);
        const opts = configFile ? (run.opts() as RunOptions) : flags;
        const renewPolicy = parseRunFlags(opts.renewBefore, opts.renewAt);
        const proxy = resolveProxyConfig(opts.proxy, process.env);
        const stateDir = resolveStateDir(opts.stateDir);
        const features = agentFeatures({ mesh: parseMeshFlags(opts), observability: parseObservabilityFlags(opts), ops: parseOpsFlags(opts, stateDir), tunnel: parseTunnelFlags(opts) });
        // A new build on trial takes over the lock of the agent that started it (docs/OPERATIONS.md, "Agent upgrade").
        const lock = acquireRunLock(stateDir, process.pid, trialParentPid());
        process.once('exit', () => lock.release());
        const { logger, file: logFile } = openAgentLog(stateDir, opts.logLevel);
        const runner = new AgentRunner({ stateDir, logger, renewPolicy: Object.freeze(renewPolicy), proxy });
        const attached = await attachFeatures(runner, features, { stateDir, logger, logFile });
        const stop = (signal: string): void => {
          logger.info({ signal }, 'stopping');
          setTimeout(() => process.exit(0), STOP_DEADLINE_MS).unref();
          runner.stop();
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
        // SIGHUP would otherwise kill the agent without a log line. What can be reloaded live is the
        // log file (reopened at its path, for logrotate); flags and --config are read at start only.
        process.on('SIGHUP', () => {
          try {
            logFile?.reopen();
            logger.info({ signal: 'SIGHUP', logFile: logFile?.path ?? null }, logFile ? 'log file reopened; changed flags and --config apply at the next start' : 'no log file to reopen; changed flags and --config apply at the next start');
          } catch (err) {
            logger.error({ signal: 'SIGHUP', err }, 'could not reopen the log file; logging continues to the old one');
          }
        });
        try {
          process.exitCode = await runner.run();
        } finally {
          await attached.close();
          lock.release();
        }
      } catch (err) {
        onError(err);
      }
    });
}
