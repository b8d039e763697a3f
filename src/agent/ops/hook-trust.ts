import { constants, type Stats } from 'node:fs';
import { access, lstat, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MeshlinkError } from '../../errors.js';

/**
 * Which hooks the agent may run. A hook runs with the agent's privileges (root for the packaged
 * agent), so whoever can replace it, or the directory entry that names it, can run code as the agent.
 * Hence both the hooks directory and the hook itself must be
 *   - owned by root or by the user the agent runs as (anyone else could chmod it back open), and
 *   - not writable by group or others (on the directory: no one else can rename or unlink an entry
 *     and drop in their own file).
 * The hook must be a regular file named directly in the directory: a symlink is refused, because the
 * file it points to lives in a directory these checks never looked at. The checks run before every
 * spawn; since only the owner (root or the agent) can change the entries of a directory that passes,
 * nothing can swap the file between the check and the spawn.
 */

/** Names the first reason `st` (the directory or the hook) may not be trusted, or null. */
function untrusted(st: Stats, what: string): string | null {
  const agentUid = process.getuid?.() ?? 0;
  if (st.uid !== 0 && st.uid !== agentUid) return `${what} is owned by uid ${st.uid}, not by root or the agent's user (uid ${agentUid})`;
  if ((st.mode & 0o022) !== 0) return `${what} is writable by group or others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
  return null;
}

/**
 * The path of hook `name` (already a safe file name) in `hooksDir` if it may run. Throws
 * ML_ERR_OPS_UNKNOWN_ACTION when there is no such hook (or it is not executable), and
 * ML_ERR_OPS_HOOK_UNSAFE when one exists but fails an ownership or permission rule.
 */
export async function trustedHook(hooksDir: string, name: string): Promise<string> {
  const path = join(hooksDir, name);
  let file: Stats;
  try {
    file = await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new MeshlinkError('ML_ERR_OPS_UNKNOWN_ACTION', `no built-in action and no hook named ${name} (hooks dir ${hooksDir})`);
    }
    throw new MeshlinkError('ML_ERR_OPS_UNKNOWN_ACTION', `hook ${name}: ${(err as Error).message}`);
  }
  if (file.isSymbolicLink()) throw new MeshlinkError('ML_ERR_OPS_HOOK_UNSAFE', `hook ${name} is a symbolic link; refusing to run it (put the file itself in ${hooksDir})`);
  if (!file.isFile()) throw new MeshlinkError('ML_ERR_OPS_UNKNOWN_ACTION', `${name} in the hooks dir is not a regular file`);
  const dir = await stat(hooksDir);
  const dirProblem = untrusted(dir, `the hooks dir ${hooksDir}`);
  if (dirProblem) throw new MeshlinkError('ML_ERR_OPS_HOOK_UNSAFE', `${dirProblem}; refusing to run hook ${name}`);
  const fileProblem = untrusted(file, `hook ${name}`);
  if (fileProblem) throw new MeshlinkError('ML_ERR_OPS_HOOK_UNSAFE', `${fileProblem}; refusing to run it`);
  try {
    await access(path, constants.X_OK);
  } catch {
    throw new MeshlinkError('ML_ERR_OPS_UNKNOWN_ACTION', `hook ${name} is not executable`);
  }
  return path;
}
