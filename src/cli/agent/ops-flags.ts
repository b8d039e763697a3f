import { Option, type Command } from 'commander';
import { z } from 'zod';
import { parseOpsOptions, type OpsOptions } from '../../agent/ops/index.js';
import { collect, parseFeatureFlags } from './flags.js';
import { MeshlinkError } from '../../errors.js';
import { parseDuration } from '../../util/duration.js';

/**
 * `meshlink agent run` flags of operations (docs/OPERATIONS.md):
 *   --allow-exec                 allow `server exec` (off by default)
 *   --transfer-dir <dir>         allow `server cp` inside this directory (repeatable; none by default)
 *   --hooks-dir <dir>            executables run as actions (default <state dir>/hooks)
 *   --max-actions <n>            actions running at once (default 4)
 *   --max-queued-actions <n>     actions waiting beyond that (default 16); more are refused
 *   --bundle <file>              the single-file bundle this agent runs from (self-upgrade); default:
 *                                the running script when it is a bundle
 *   --release-key <key>          release public key whose signature an upgrade must carry (repeatable;
 *                                adds to those pinned at enrollment)
 *   --allow-unsigned-upgrade     insecure: accept upgrades without a release signature
 *   --upgrade-health-timeout <d> how long a new build has to connect before the agent keeps its own (60s)
 * The flags are read here; their values are checked (ranges, absolute paths) by the ops options
 * schema (parseOpsOptions), which also serves callers that attach the feature without a CLI.
 */

const int = (v: string): number => Number(v);

const opsFlags = z.object({
  allowExec: z.boolean().default(false),
  transferDir: z.array(z.string()).default([]),
  hooksDir: z.string().optional(),
  maxActions: z.number().int().optional(),
  maxQueuedActions: z.number().int().optional(),
  bundle: z.string().optional(),
  releaseKey: z.array(z.string()).default([]),
  allowUnsignedUpgrade: z.boolean().default(false),
  upgradeHealthTimeout: z.string().optional(),
});

/** True when this process runs from the esbuild bundle (set by scripts/bundle-agent.mjs). */
declare const __MESHLINK_AGENT_BUNDLE__: boolean | undefined;
function runningBundle(): string | null {
  const bundled = typeof __MESHLINK_AGENT_BUNDLE__ !== 'undefined' && __MESHLINK_AGENT_BUNDLE__;
  return bundled && process.argv[1] ? process.argv[1] : null;
}

export function addOpsFlags(cmd: Command): void {
  cmd
    .option('--allow-exec', 'allow remote exec of commands (off by default)')
    .option('--transfer-dir <dir>', 'directory remote file transfers may read and write (repeatable; none by default)', collect)
    .option('--hooks-dir <dir>', 'directory of hook executables run as actions (default: <state dir>/hooks)')
    .addOption(new Option('--max-actions <n>', 'actions that run at once (default 4)').argParser(int))
    .addOption(new Option('--max-queued-actions <n>', 'actions that may wait beyond --max-actions (default 16)').argParser(int))
    .option('--bundle <file>', 'the agent bundle to replace on self-upgrade (default: the running bundle, if any)')
    .option('--release-key <key>', 'release public key (ed25519:…) an upgrade must be signed with (repeatable; adds to the keys pinned at enroll)', collect)
    .option('--allow-unsigned-upgrade', 'INSECURE: accept agent upgrades that carry no release signature')
    .option('--upgrade-health-timeout <duration>', 'how long a new build has to start and connect before the agent keeps its running build (default 60s)');
}

/** The ops options of `agent run` (the hooks dir defaults to `<stateDir>/hooks`). */
export function parseOpsFlags(opts: Record<string, unknown>, stateDir: string): OpsOptions {
  const f = parseFeatureFlags('ops', opsFlags, {
    allowExec: opts.allowExec === true,
    transferDir: opts.transferDir,
    hooksDir: opts.hooksDir,
    maxActions: opts.maxActions,
    maxQueuedActions: opts.maxQueuedActions,
    bundle: opts.bundle,
    releaseKey: opts.releaseKey,
    allowUnsignedUpgrade: opts.allowUnsignedUpgrade === true,
    upgradeHealthTimeout: opts.upgradeHealthTimeout,
  });
  const healthMs = f.upgradeHealthTimeout === undefined ? undefined : parseFlagDuration('--upgrade-health-timeout', f.upgradeHealthTimeout);
  return parseOpsOptions(
    {
      allowExec: f.allowExec,
      transferDirs: f.transferDir,
      ...(f.hooksDir ? { hooksDir: f.hooksDir } : {}),
      ...(f.maxActions !== undefined ? { maxActions: f.maxActions } : {}),
      ...(f.maxQueuedActions !== undefined ? { maxQueuedActions: f.maxQueuedActions } : {}),
      bundlePath: f.bundle ?? runningBundle(),
      releaseKeys: f.releaseKey,
      allowUnsignedUpgrades: f.allowUnsignedUpgrade,
      ...(healthMs !== undefined ? { upgradeHealthTimeoutMs: healthMs } : {}),
    },
    stateDir,
  );
}

function parseFlagDuration(flag: string, text: string): number {
  try {
    return parseDuration(text);
  } catch (err) {
    throw new MeshlinkError('ML_ERR_USAGE', `${flag}: ${(err as Error).message}`);
  }
}
