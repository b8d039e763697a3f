import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { acquireRunLock, RUN_LOCK_FILE } from '../../../src/agent/state/run-lock.js';

describe('the agent run lock', () => {
  const dirs: string[] = [];
  const dir = (): string => {
    const d = mkdtempSync(join(tmpdir(), 'ml-lock-'));
    dirs.push(d);
    return d;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('holds the pid, refuses a second holder that is an agent, and is gone after release', async () => {
    const d = dir();
    // A live process whose command line says `agent`, standing in for a running agent.
    const other = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)', 'agent', 'run'], { stdio: 'ignore' });
    try {
      writeFileSync(join(d, RUN_LOCK_FILE), `${other.pid}\n`);
      expect(() => acquireRunLock(d)).toThrow(expect.objectContaining({ code: 'ML_ERR_AGENT_RUNNING', message: expect.stringContaining(`pid ${other.pid}`) }));
    } finally {
      other.kill('SIGKILL');
      await new Promise((r) => other.once('exit', r));
    }
    // Its holder is gone now: the lock is stale and taken over.
    const lock = acquireRunLock(d);
    expect(readFileSync(join(d, RUN_LOCK_FILE), 'utf8')).toBe(`${process.pid}\n`);
    lock.release();
    expect(existsSync(join(d, RUN_LOCK_FILE))).toBe(false);
  });

  it('takes over a lock whose pid now belongs to a process that is not an agent (pid reuse)', () => {
    const d = dir();
    // This test process is alive but runs no `agent` command.
    writeFileSync(join(d, RUN_LOCK_FILE), `${process.ppid}\n`);
    const lock = acquireRunLock(d, 4_000_000);
    expect(readFileSync(join(d, RUN_LOCK_FILE), 'utf8')).toBe('4000000\n');
    lock.release();
  });

  it('does not remove a lock that another holder took after it', () => {
    const d = dir();
    const lock = acquireRunLock(d);
    writeFileSync(join(d, RUN_LOCK_FILE), '4000001\n');
    lock.release();
    expect(readFileSync(join(d, RUN_LOCK_FILE), 'utf8')).toBe('4000001\n');
  });

  it('needs no lock where there is no state dir (the runner reports the missing enrollment)', () => {
    expect(() => acquireRunLock(join(dir(), 'missing')).release()).not.toThrow();
  });
});
