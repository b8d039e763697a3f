import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

/**
 * Children of actions and exec run in their own process group (detached), so a timeout or a
 * cancelled stream kills everything they started, not just the direct child. Never through a shell.
 */

export interface GroupChild {
  readonly child: ChildProcess;
  /** Resolves once the child exited and its stdio closed. */
  readonly closed: Promise<{ exitCode: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM to the whole group, SIGKILL after `graceMs` if anything is still alive. Idempotent. */
  kill(graceMs: number): void;
}

/** Starts `command` with `args`; resolves once it has started (rejects if it could not be). */
export function spawnGroup(command: string, args: readonly string[], options: Omit<SpawnOptions, 'detached' | 'shell' | 'stdio'>): Promise<GroupChild> {
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(command, args, { ...options, detached: true, shell: false, stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      reject(err);
      return;
    }
    let killTimer: NodeJS.Timeout | null = null;
    let exited = false;
    const closed = new Promise<{ exitCode: number | null; signal: NodeJS.Signals | null }>((r) => {
      child.once('close', (exitCode, signal) => {
        if (killTimer) clearTimeout(killTimer);
        r({ exitCode, signal });
      });
    });
    child.once('exit', () => {
      exited = true;
    });
    const signalGroup = (sig: NodeJS.Signals): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, sig);
      } catch {
        /* the group is gone */
      }
    };
    const handle: GroupChild = {
      child,
      closed,
      kill(graceMs) {
        if (killTimer) return;
        signalGroup('SIGTERM');
        // Even after the leader exited, members of its group may live on (and hold the pipes open).
        killTimer = setTimeout(() => signalGroup('SIGKILL'), exited ? 0 : graceMs);
      },
    };
    child.once('spawn', () => resolve(handle));
    child.once('error', (err) => {
      if (child.pid === undefined) reject(err);
    });
  });
}
