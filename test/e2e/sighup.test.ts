import { existsSync } from 'node:fs';
import { readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enrollAgent, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type ServerProc } from './harness.js';

/**
 * SIGHUP through the real CLI: the server and the agent log it and keep running (the agent reopens its
 * log file at its path, for logrotate), and a later stop removes the server's admin socket.
 */
describe('SIGHUP reaches a running server and agent', () => {
  let srvDir: { path: string; cleanup(): Promise<void> };
  let work: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  beforeAll(async () => {
    srvDir = await tempDir('ml-hup-srv-');
    work = await tempDir('ml-hup-agent-');
    server = await startServerProc(srvDir.path, await freePort());
  }, 90_000);
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await srvDir?.cleanup();
    await work?.cleanup();
  });

  it('the agent logs it, reopens its log file and stays connected', async () => {
    const stateDir = join(work.path, 'state');
    await enrollAgent(server, stateDir, 'hup-host');
    const agent = spawnCli(['agent', 'run', '--state-dir', stateDir]);
    try {
      await agent.waitForLog('connected', 30_000);
      const log = join(stateDir, 'logs', 'agent.log');
      await rename(log, `${log}.rotated`);
      agent.child.kill('SIGHUP');
      const line = await agent.waitForLog(/^log file reopened/, 30_000);
      expect(line).toMatchObject({ signal: 'SIGHUP' });
      await waitFor('the new log file', async () => existsSync(log) && (await readFile(log, 'utf8')).includes('log file reopened'), 30_000);
      expect(agent.child.exitCode).toBeNull();
    } finally {
      expect(await agent.stop('SIGTERM')).toBe(0);
    }
  });

  it('the server logs it, keeps serving, and removes its admin socket when stopped', async () => {
    const socket = join(server.dataDir, 'admin.sock');
    expect(existsSync(socket)).toBe(true);
    server.child.kill('SIGHUP');
    const line = await server.waitForLog(/^nothing to reload/, 30_000);
    expect(line).toMatchObject({ signal: 'SIGHUP' });
    // Still serving: its admin socket answers after the signal.
    expect((await listNodes(server.dataDir)).map((n) => n.hostname)).toContain('hup-host');
    expect(server.child.exitCode).toBeNull();
    expect(existsSync(socket)).toBe(true);
    await server.stop('SIGTERM');
    expect(existsSync(socket)).toBe(false);
  });
});
