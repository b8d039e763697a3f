import { zodErrorText } from '../../util/zod-error.js';
import { isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { MeshlinkError } from '../../errors.js';
import { releaseKeySchema } from '../../contract/release.js';

/**
 * Options of the agent's operations, validated once (from `agent run` flags or a test) and frozen.
 * Defaults are the safe ones: no exec, no transfer directory.
 */

export const DEFAULT_MAX_ACTIONS = 4;
export const DEFAULT_MAX_QUEUED_ACTIONS = 16;
/** Output of one action kept and forwarded (stdout + stderr); beyond it the result says truncated. */
export const DEFAULT_ACTION_OUTPUT_CAP = 1024 * 1024;
export const DEFAULT_ACTION_TIMEOUT_MS = 60_000;
/** A new agent build must connect within this long of its start, or the running build stays. */
export const DEFAULT_UPGRADE_HEALTH_TIMEOUT_MS = 60_000;

const schema = z
  .object({
    allowExec: z.boolean().default(false),
    transferDirs: z.array(z.string().min(1).refine(isAbsolute, 'transfer dirs must be absolute paths')).max(64).default([]),
    /** Executable hooks; default <stateDir>/hooks. */
    hooksDir: z.string().min(1).optional(),
    maxActions: z.number().int().min(1).max(256).default(DEFAULT_MAX_ACTIONS),
    maxQueuedActions: z.number().int().min(0).max(4096).default(DEFAULT_MAX_QUEUED_ACTIONS),
    actionOutputCap: z.number().int().min(1024).max(256 * 1024 * 1024).default(DEFAULT_ACTION_OUTPUT_CAP),
    /** Grace between SIGTERM and SIGKILL of a timed-out process group. */
    killGraceMs: z.number().int().min(0).max(60_000).default(2_000),
    /** The single-file bundle this agent runs from (self-upgrade replaces it); null: not a bundle, no self-upgrade. */
    bundlePath: z.string().min(1).nullable().default(null),
    /** Release keys pinned by `agent run` (the state dir's release-keys.json adds those of enrollment). */
    releaseKeys: z.array(releaseKeySchema).max(16).default([]),
    /** Insecure: accept upgrades that carry no release signature (development only; logged loudly). */
    allowUnsignedUpgrades: z.boolean().default(false),
    /** How long a new build has to start and connect before the agent keeps its running build. */
    upgradeHealthTimeoutMs: z.number().int().min(1_000).max(3_600_000).default(DEFAULT_UPGRADE_HEALTH_TIMEOUT_MS),
  })
  .strict();

export type OpsOptionsInput = z.input<typeof schema>;
export type OpsOptions = Readonly<Omit<z.output<typeof schema>, 'hooksDir'> & { hooksDir: string }>;

export function parseOpsOptions(input: OpsOptionsInput, stateDir: string): OpsOptions {
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    throw new MeshlinkError('ML_ERR_CONFIG', `invalid ops option ${zodErrorText(parsed.error)}`);
  }
  const o = parsed.data;
  return Object.freeze({
    ...o,
    transferDirs: Object.freeze(o.transferDirs.map((d) => resolve(d))) as string[],
    hooksDir: resolve(o.hooksDir ?? join(stateDir, 'hooks')),
    bundlePath: o.bundlePath === null ? null : resolve(o.bundlePath),
    releaseKeys: Object.freeze([...o.releaseKeys]) as string[],
  });
}
