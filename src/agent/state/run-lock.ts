import { closeSync, fsyncSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { MeshlinkError } from '../../errors.js';

/**
 * One `agent run` per state directory: two would fight over the identity, renew the same certificate
 * and replace each other's sessions at the server. The lock is `agent.lock`, created exclusively with
 * the holder's PID. A lock whose process is gone (killed with -9, a crash) is stale and taken over; one
 * whose PID now belongs to a process that is not a meshlink agent (the PID was reused) is stale too.
 */
export const RUN_LOCK_FILE = 'agent.lock';

export interface RunLock {
  /** Removes the lock if it is still ours. */
  release(): void;
}

/**
 * `handoffFrom`: the pid of the agent that started this one as the trial of a new build
 * (ops/upgrade-trial.ts). That agent has stopped its connection and waits for this one; its lock is
 * handed over rather than refused. Only the direct parent can hand over (the caller checks ppid).
 */
export function acquireRunLock(stateDir: string, pid = process.pid, handoffFrom: number | null = null): RunLock {
  const path = join(stateDir, RUN_LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      try {
        writeSync(fd, `${pid}\n`);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      return {
        release() {
          if (holderOf(path) === pid) unlinkQuietly(path);
        },
      };
    } catch (err) {
      // No state dir: nothing to protect; the runner reports the missing enrollment itself.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { release() {} };
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new MeshlinkError('ML_ERR_STATE_ACCESS', `cannot create ${path}: ${(err as Error).message}`);
    }
    const holder = holderOf(path);
    if (holder !== null && holder !== pid && holder !== handoffFrom && isAgent(holder)) {
      throw new MeshlinkError('ML_ERR_AGENT_RUNNING', `another agent (pid ${holder}) runs on ${stateDir}; stop it first (or remove ${path} if that pid is not an agent)`);
    }
    unlinkQuietly(path); // stale: its holder is gone
  }
  throw new MeshlinkError('ML_ERR_AGENT_RUNNING', `${path} keeps reappearing: another agent is starting on ${stateDir}`);
}

function holderOf(path: string): number | null {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** Alive, and (where /proc tells) running meshlink's `agent` command: a reused PID does not count. */
function isAgent(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.includes('agent');
  } catch {
    return true; // no /proc: trust that it lives
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}
