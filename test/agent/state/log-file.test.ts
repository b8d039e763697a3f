import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentLogFile, openAgentLog } from '../../../src/agent/state/log-file.js';
import { readLastLines } from '../../../src/agent/ops/last-lines.js';
import { tempDirs } from '../helpers/fixtures.js';

describe("the agent's own log file (<stateDir>/logs/agent.log)", () => {
  const dirs = tempDirs();
  afterEach(() => dirs.cleanup());

  it('takes every line the logger writes, redacted, mode 0600, and tells followers of each line', () => {
    const stateDir = dirs.make();
    const { logger, file } = openAgentLog(stateDir, 'info', { stdout: false });
    expect(file).not.toBeNull();
    const seen: string[] = [];
    file!.on('line', (l) => seen.push(l));
    logger.debug('below the level');
    logger.info({ token: 'tok-SECRET', n: 1 }, 'first');
    const path = join(stateDir, 'logs', 'agent.log');
    expect(file!.path).toBe(path);
    const lines = readFileSync(path, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ msg: 'first', n: 1, token: '[redacted]', name: 'meshlink-agent' });
    expect(readFileSync(path, 'utf8')).not.toContain('tok-SECRET');
    expect(seen).toHaveLength(1);
    expect(file!.size).toBe(statSync(path).size);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    file!.close();
  });

  it('rotates to agent.log.1 past its bound, keeping one previous file', () => {
    const stateDir = dirs.make();
    const path = join(stateDir, 'agent.log');
    const file = new AgentLogFile(path, 100);
    const line = `${'x'.repeat(59)}\n`;
    file.write(line);
    expect(existsSync(`${path}.1`)).toBe(false);
    file.write(line); // 120 bytes would pass the bound: the first line moves to .1
    expect(readFileSync(`${path}.1`, 'utf8')).toBe(line);
    expect(readFileSync(path, 'utf8')).toBe(line);
    expect(file.size).toBe(60);
    file.write('y\n');
    file.write(line);
    expect(readFileSync(`${path}.1`, 'utf8')).toBe(`${line}y\n`);
    file.close();
  });

  it('keeps no file, and logs to stdout only, when the state dir does not exist (it never creates it)', () => {
    const missing = join(dirs.make(), 'not-enrolled');
    const { logger, file } = openAgentLog(missing, 'silent');
    expect(file).toBeNull();
    expect(typeof logger.info).toBe('function');
    expect(existsSync(missing)).toBe(false);
  });

  it('refuses an invalid level whether or not the file can be opened', () => {
    expect(() => openAgentLog(dirs.make(), 'loud')).toThrow(/invalid log level "loud"/);
    expect(() => openAgentLog('/nonexistent/state', 'loud')).toThrow(/invalid log level "loud"/);
  });

  it('readLastLines returns the last N lines of the bytes written so far', async () => {
    const stateDir = dirs.make();
    const file = new AgentLogFile(join(stateDir, 'agent.log'));
    for (let i = 1; i <= 5; i++) file.write(`line ${i}\n`);
    const end = file.size;
    file.write('line 6\n');
    expect((await readLastLines(file.path, 2, end)).toString()).toBe('line 4\nline 5\n');
    expect((await readLastLines(file.path, 50, end)).toString()).toBe('line 1\nline 2\nline 3\nline 4\nline 5\n');
    expect((await readLastLines(file.path, 0, end)).length).toBe(0);
    file.close();
  });
});
