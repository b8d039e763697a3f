import type { Command } from 'commander';
import { Option } from 'commander';
import { AgentRunner } from '../agent/connection.js';
import { resolveStateDir } from '../agent/config.js';
import { LOG_LEVELS } from '../util/logger.js';
import { createAgentLogger } from '../agent/ops/agent-log.js';
import { AGENT_RUN_EXTENSIONS } from './agent-features.js';
import { z } from 'zod';
import { parseDuration } from '../util/duration.js';
import { MeshlinkError } from '../errors.js';

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

/** Hard deadline for a graceful stop (goaway, close, status write) after SIGTERM/SIGINT. */
const STOP_DEADLINE_MS = 5_000;

/** `meshlink agent run`: the long-running service (docs/AGENT.md, "Running"). */
export function registerRunCommand(agent: Command, onError: (err: unknown) => void): void {
  const run = agent.command('run');
  for (const ext of AGENT_RUN_EXTENSIONS) ext.addOptions(run);
  run
    .description('keep the connection to the control plane (long-running; for systemd)')
    .option('--state-dir <dir>', 'state directory (default: MESHLINK_STATE_DIR or the documented default)')
    .option('--renew-before <duration>', 'renew when NotAfter is this close (or earlier, see --renew-at)', '7d')
    .option('--renew-at <fraction>', 'renew once this fraction of the certificate lifetime has passed', '0.6667')
    .addOption(new Option('--log-level <level>', 'log level (default: MESHLINK_LOG_LEVEL or info)').choices([...LOG_LEVELS]))
    .action(async (opts: { stateDir?: string; logLevel?: string; renewBefore: string; renewAt: string } & Record<string, unknown>) => {
      try {
        const renewPolicy = parseRunFlags(opts.renewBefore, opts.renewAt);
        const stateDir = resolveStateDir(opts.stateDir);
        const logger = createAgentLogger(stateDir, opts.logLevel);
        const runner = new AgentRunner({ stateDir, logger, renewPolicy: Object.freeze(renewPolicy) });
        for (const ext of AGENT_RUN_EXTENSIONS) await ext.attach(runner, { stateDir, logger, opts });
        const stop = (signal: string): void => {
          logger.info({ signal }, 'stopping');
          setTimeout(() => process.exit(0), STOP_DEADLINE_MS).unref();
          runner.stop();
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
        process.exitCode = await runner.run();
      } catch (err) {
        onError(err);
      }
    });
}
