import { Option, type Command } from 'commander';
import { z } from 'zod';
import { opsAgentFeature } from '../agent/ops/index.js';
import type { AgentRunExtension } from './agent-features.js';

/**
 * `meshlink agent run` flags of operations (docs/OPERATIONS.md):
 *   --allow-exec                 allow `server exec` (off by default)
 *   --transfer-dir <dir>         allow `server cp` inside this directory (repeatable; none by default)
 *   --hooks-dir <dir>            executables run as actions (default <state dir>/hooks)
 *   --max-actions <n>            actions running at once (default 4)
 *   --max-queued-actions <n>     actions waiting beyond that (default 16); more are refused
 *   --bundle <file>              the single-file bundle this agent runs from (self-upgrade); default:
 *                                the running script when it is a bundle
 */

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];
const int = (v: string): number => Number(v);

const flags = z.object({
  allowExec: z.boolean().default(false),
  transferDir: z.array(z.string()).default([]),
  hooksDir: z.string().optional(),
  maxActions: z.number().int().optional(),
  maxQueuedActions: z.number().int().optional(),
  bundle: z.string().optional(),
});

/** True when this process runs from the esbuild bundle (set by scripts/bundle-agent.mjs). */
declare const __MESHLINK_AGENT_BUNDLE__: boolean | undefined;
function runningBundle(): string | null {
  const bundled = typeof __MESHLINK_AGENT_BUNDLE__ !== 'undefined' && __MESHLINK_AGENT_BUNDLE__;
  return bundled && process.argv[1] ? process.argv[1] : null;
}

export const opsRunExtension: AgentRunExtension = {
  addOptions(cmd: Command) {
    cmd
      .option('--allow-exec', 'allow remote exec of commands (off by default)')
      .option('--transfer-dir <dir>', 'directory remote file transfers may read and write (repeatable; none by default)', collect)
      .option('--hooks-dir <dir>', 'directory of hook executables run as actions (default: <state dir>/hooks)')
      .addOption(new Option('--max-actions <n>', 'actions that run at once (default 4)').argParser(int))
      .addOption(new Option('--max-queued-actions <n>', 'actions that may wait beyond --max-actions (default 16)').argParser(int))
      .option('--bundle <file>', 'the agent bundle to replace on self-upgrade (default: the running bundle, if any)');
  },
  async attach(runner, ctx) {
    const f = flags.parse(ctx.opts);
    const bundlePath = f.bundle ?? runningBundle();
    await opsAgentFeature(runner, {
      stateDir: ctx.stateDir,
      logger: ctx.logger,
      options: {
        allowExec: f.allowExec,
        transferDirs: f.transferDir,
        ...(f.hooksDir ? { hooksDir: f.hooksDir } : {}),
        ...(f.maxActions !== undefined ? { maxActions: f.maxActions } : {}),
        ...(f.maxQueuedActions !== undefined ? { maxQueuedActions: f.maxQueuedActions } : {}),
        bundlePath,
      },
    });
  },
};
