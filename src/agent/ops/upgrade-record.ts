import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../../util/atomic-file.js';

/**
 * What the last upgrade ended with, kept in the state dir (`upgrade.json`) across the restart that
 * follows every trial: the process that ran the trial has no session left to report on, so the
 * build that starts next (the new one after a pass, the same one after a rollback) reports it once
 * connected, and a build that failed its trial is not tried again by the build that refused it.
 */
export const UPGRADE_RECORD_FILE = 'upgrade.json';
const MAX_RECORD_BYTES = 16 * 1024;

const recordSchema = z
  .object({
    buildId: z.string().regex(/^[0-9a-f]{64}$/),
    state: z.enum(['applied', 'failed']),
    code: z.string().regex(/^ML_ERR_[A-Z0-9_]{1,64}$/).optional(),
    message: z.string().max(1000).optional(),
    ts: z.number().int().min(0),
    /** Set once the status reached a server. */
    reported: z.boolean(),
  })
  .strict();
export type UpgradeRecord = z.infer<typeof recordSchema>;

/** The record, or null when there is none or it is unreadable (it only ever holds a report). */
export async function readUpgradeRecord(stateDir: string): Promise<UpgradeRecord | null> {
  try {
    const text = await readFile(join(stateDir, UPGRADE_RECORD_FILE), 'utf8');
    if (text.length > MAX_RECORD_BYTES) return null;
    const parsed = recordSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

export async function writeUpgradeRecord(stateDir: string, record: UpgradeRecord): Promise<void> {
  await writeFileAtomic(join(stateDir, UPGRADE_RECORD_FILE), `${JSON.stringify(record)}\n`, { mode: 0o600 });
}
