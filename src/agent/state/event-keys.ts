import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { enrollEventKeysSchema, type EnrollEventKey } from '../../contract/mesh-events.js';
import { writeFileAtomic } from '../../util/atomic-file.js';

/**
 * The event-signing keys the enrollment response carried (docs/MESH.md, "Trust model"): the mesh's
 * first trusted keys, pinned through the channel the CA pin protects. Written by `agent enroll`
 * (0600, atomic), read by the mesh when it trusts no key yet, or when its state belongs to another
 * enrollment (another node id).
 */
export const EVENT_KEYS_FILE = 'event-keys.json';

const pinnedFileSchema = z.object({ version: z.literal(1), nodeId: z.string().min(1).max(128), keys: enrollEventKeysSchema });
export type PinnedEventKeys = z.infer<typeof pinnedFileSchema>;

export async function writePinnedEventKeys(stateDir: string, nodeId: string, keys: readonly EnrollEventKey[]): Promise<void> {
  const file: PinnedEventKeys = { version: 1, nodeId, keys: [...keys] };
  await writeFileAtomic(join(stateDir, EVENT_KEYS_FILE), JSON.stringify(file), { mode: 0o600 });
}

/** The pinned keys, or null when there are none (an agent enrolled before keys were pinned, or a damaged file). */
export async function readPinnedEventKeys(stateDir: string): Promise<PinnedEventKeys | null> {
  try {
    const parsed = pinnedFileSchema.safeParse(JSON.parse(await readFile(join(stateDir, EVENT_KEYS_FILE), 'utf8')));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}
