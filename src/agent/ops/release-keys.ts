import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { parseReleaseKey, releaseKeySchema, type ReleaseKey } from '../../contract/release.js';
import { MeshlinkError } from '../../errors.js';
import { writeFileAtomic } from '../../util/atomic-file.js';
import { zodErrorText } from '../../util/zod-error.js';

/**
 * The release keys an agent pins (docs/OPERATIONS.md, "Agent upgrade"): given at enrollment
 * (`agent enroll --release-key`, kept in the state dir as `release-keys.json`) and/or to `agent run`
 * (`--release-key`, or `releaseKey` in its config file); the agent trusts the union. An agent that
 * pins none refuses every upgrade (ML_ERR_UPGRADE_NO_RELEASE_KEY) unless it runs with
 * --allow-unsigned-upgrade. Public keys, not secrets; the file is written 0600 like the rest of the
 * state dir.
 */
export const RELEASE_KEYS_FILE = 'release-keys.json';
const MAX_FILE_BYTES = 64 * 1024;

const fileSchema = z.object({ keys: z.array(releaseKeySchema).max(16) }).strict();

/** Replaces the pinned keys in the state dir (enrollment). */
export async function saveReleaseKeys(stateDir: string, keys: readonly string[]): Promise<ReleaseKey[]> {
  const parsed = keys.map(parseReleaseKey);
  await writeFileAtomic(join(stateDir, RELEASE_KEYS_FILE), `${JSON.stringify({ keys: parsed.map((k) => k.text) })}\n`, { mode: 0o600 });
  return parsed;
}

/** The keys pinned in the state dir (none when the file is absent); a damaged file is an error, not "no keys". */
export async function loadReleaseKeys(stateDir: string): Promise<ReleaseKey[]> {
  const path = join(stateDir, RELEASE_KEYS_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new MeshlinkError('ML_ERR_CONFIG', `cannot read ${path}: ${(err as Error).message}`);
  }
  if (text.length > MAX_FILE_BYTES) throw new MeshlinkError('ML_ERR_CONFIG', `${path} is larger than ${MAX_FILE_BYTES} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new MeshlinkError('ML_ERR_CONFIG', `${path} is not JSON`);
  }
  const parsed = fileSchema.safeParse(value);
  if (!parsed.success) throw new MeshlinkError('ML_ERR_CONFIG', `${path}: ${zodErrorText(parsed.error)}`);
  return parsed.data.keys.map(parseReleaseKey);
}

/** The union of two key lists, by key id. */
export function mergeReleaseKeys(a: readonly ReleaseKey[], b: readonly ReleaseKey[]): ReleaseKey[] {
  const byId = new Map<string, ReleaseKey>();
  for (const k of [...a, ...b]) byId.set(k.keyId, k);
  return [...byId.values()];
}
