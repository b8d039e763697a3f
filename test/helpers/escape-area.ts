import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from '../server/helpers.js';

/**
 * The layout of the symlink-escape tests: a transfer area with `sub/f` ("inside") and, beside it, an
 * `outside/f` ("OUTSIDE") that no transfer may ever reach, however `sub` is swapped.
 */
export async function escapeArea(prefix: string): Promise<{ tmp: { path: string; cleanup(): Promise<void> }; area: string; outside: string }> {
  const tmp = await tempDir(prefix);
  const area = join(tmp.path, 'area');
  const outside = join(tmp.path, 'outside');
  await mkdir(join(area, 'sub'), { recursive: true });
  await mkdir(outside);
  await writeFile(join(area, 'sub', 'f'), 'inside');
  await writeFile(join(outside, 'f'), 'OUTSIDE');
  return { tmp, area, outside };
}
