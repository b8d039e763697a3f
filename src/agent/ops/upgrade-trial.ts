import { spawn, type ChildProcess } from 'node:child_process';
import { z } from 'zod';

/**
 * The health check of a new agent build (docs/OPERATIONS.md, "Agent upgrade"): before a downloaded
 * bundle replaces the running one, the running agent (stopped, but still the process systemd
 * watches) starts it as a child with its own arguments and waits, up to the health deadline, for the
 * child to say over the IPC channel that it has connected to the control plane (welcome received)
 * with the build id it was started as. Only then is the new file installed. A child that exits
 * first, says anything else, or is silent until the deadline fails the trial: its whole process
 * group is killed and the running build stays. A build that cannot start therefore never replaces
 * one that can, with no one at the keyboard.
 *
 * The child learns it is on trial from MESHLINK_UPGRADE_TRIAL, set to the parent's pid: it may take
 * over the parent's run lock (run-lock.ts) and reports through process.send (reportTrialConnected).
 */

export const UPGRADE_TRIAL_ENV = 'MESHLINK_UPGRADE_TRIAL';
/** How long a child that passed gets to stop gracefully (SIGTERM) before its group is killed. */
const STOP_GRACE_MS = 15_000;

const trialMessageSchema = z.object({ type: z.literal('meshlink.upgrade.trial'), state: z.literal('connected'), buildId: z.string().max(128) }).strict();

export type TrialResult = { ok: true } | { ok: false; reason: string };

export interface TrialOptions {
  /** node and its arguments before the bundle path (default: this process's node and execArgv). */
  command: string;
  args: readonly string[];
  /** The build id the child must report (the SHA-256 of the file it runs). */
  buildId: string;
  deadlineMs: number;
}

/**
 * Runs the trial; resolves once the child has connected and then stopped, or has failed and is
 * killed. Never rejects.
 */
export function runTrial(o: TrialOptions): Promise<TrialResult> {
  return new Promise((resolve) => {
    let child: ChildProcess;
    try {
      child = spawn(o.command, [...o.args], {
        // Its own process group, so a failed trial kills everything the child started.
        detached: true,
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        env: { ...process.env, [UPGRADE_TRIAL_ENV]: String(process.pid) },
      });
    } catch (err) {
      resolve({ ok: false, reason: `the new build could not be started: ${(err as Error).message}` });
      return;
    }
    let outcome: TrialResult | null = null;
    let exited = false;
    const group = (sig: NodeJS.Signals): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, sig);
      } catch {
        /* the group is gone */
      }
    };
    const decide = (r: TrialResult): void => {
      if (outcome) return;
      outcome = r;
      clearTimeout(deadline);
      if (exited) {
        // Whatever the leader left behind in its group goes with it.
        group('SIGKILL');
        resolve(r);
        return;
      }
      // Passed: stop it gracefully (it closes its session), the service restarts the new build for real.
      // Failed: kill the whole group at once.
      group(r.ok ? 'SIGTERM' : 'SIGKILL');
      const hard = setTimeout(() => group('SIGKILL'), r.ok ? STOP_GRACE_MS : 0);
      child.once('exit', () => {
        clearTimeout(hard);
        resolve(r);
      });
    };
    const deadline = setTimeout(() => decide({ ok: false, reason: `the new build did not connect within ${Math.round(o.deadlineMs / 1000)} s` }), o.deadlineMs);
    child.on('message', (raw: unknown) => {
      const m = trialMessageSchema.safeParse(raw);
      if (!m.success) decide({ ok: false, reason: 'the new build sent an unexpected trial message' });
      else if (m.data.buildId !== o.buildId) decide({ ok: false, reason: `the new build reported build id ${m.data.buildId.slice(0, 64)}, expected ${o.buildId}` });
      else decide({ ok: true });
    });
    child.once('error', (err) => {
      if (child.pid === undefined) {
        exited = true;
        decide({ ok: false, reason: `the new build could not be started: ${err.message}` });
      }
    });
    child.once('exit', (code, signal) => {
      exited = true;
      decide({ ok: false, reason: `the new build exited (${signal ?? `code ${code}`}) before it connected` });
    });
  });
}

/** In the child: tells the parent that this build has connected (no-op unless on trial). */
export function reportTrialConnected(buildId: string): void {
  if (!process.env[UPGRADE_TRIAL_ENV] || typeof process.send !== 'function') return;
  process.send({ type: 'meshlink.upgrade.trial', state: 'connected', buildId });
  // The parent decides when this process ends; the channel must not keep it alive after that.
  process.channel?.unref();
}

/** The parent pid whose run lock a trial child may take over, if this process is on trial. */
export function trialParentPid(env: NodeJS.ProcessEnv = process.env): number | null {
  const pid = Number(env[UPGRADE_TRIAL_ENV]);
  return Number.isSafeInteger(pid) && pid > 1 && pid === process.ppid ? pid : null;
}
