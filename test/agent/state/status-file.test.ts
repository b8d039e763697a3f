import { spawn } from 'node:child_process';
import { lstatSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { readAgentStatus, writeAgentStatus } from '../../../src/agent/state/status-file.js';
import { tempDirs } from '../helpers/fixtures.js';

describe('state dir', () => {
  const dirs = tempDirs();
  afterEach(() => dirs.cleanup());

  describe('status.json', () => {
    it('absent, live writer, dead writer, invalid', async () => {
      const stateDir = dirs.make();
      expect(await readAgentStatus(stateDir)).toEqual({ kind: 'absent' });

      const since = new Date().toISOString();
      await writeAgentStatus(stateDir, { state: 'connected', since, pid: process.pid, sessionId: 'abc' });
      const live = await readAgentStatus(stateDir);
      expect(live).toMatchObject({ kind: 'present', writerAlive: true, status: { state: 'connected', since, sessionId: 'abc' } });
      expect(lstatSync(join(stateDir, 'status.json')).isFile()).toBe(true);

      const child = spawn(process.execPath, ['-e', '']);
      const deadPid = await new Promise<number>((res) => child.once('exit', () => res(child.pid!)));
      await writeAgentStatus(stateDir, { state: 'backoff', since, pid: deadPid });
      expect(await readAgentStatus(stateDir)).toMatchObject({ kind: 'present', writerAlive: false });

      writeFileSync(join(stateDir, 'status.json'), '{"state":"dancing","since":"x"}');
      expect(await readAgentStatus(stateDir)).toMatchObject({ kind: 'invalid' });
      writeFileSync(join(stateDir, 'status.json'), 'not json');
      expect(await readAgentStatus(stateDir)).toMatchObject({ kind: 'invalid' });
    });

    it('writeAgentStatus validates what it writes', async () => {
      const stateDir = dirs.make();
      // @ts-expect-error deliberately wrong state
      await expect(writeAgentStatus(stateDir, { state: 'nope', since: new Date().toISOString() })).rejects.toThrow();
    });
  });

  afterAll(() => dirs.cleanup());
});
