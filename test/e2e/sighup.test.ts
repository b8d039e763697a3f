import { existsSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
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

/**
 * SIGHUP re-reads the server's --config file (src/server/reload.ts): what can change live does, each
 * changed key is logged as applied or needing a restart, and an invalid file changes nothing.
 */
describe('SIGHUP reloads the server config file', () => {
  let srvDir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let configFile: string;
  beforeAll(async () => {
    srvDir = await tempDir('ml-hup-reload-');
    configFile = join(srvDir.path, 'server.json');
    await writeFile(configFile, JSON.stringify({ logLevel: 'info', clientHelloTimeout: '1s' }));
    server = await startServerProc(join(srvDir.path, 'data'), await freePort(), ['--config', configFile]);
  }, 90_000);
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await srvDir?.cleanup();
  });

  const logs = (msg: string): Array<Record<string, unknown>> =>
    server
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>];
        } catch {
          return [];
        }
      })
      .filter((o) => o.msg === msg);
  const SILENT_CLOSED = 'connection closed: no ClientHello within the deadline';
  /** A TCP connection that never sends a byte, until the server closes it. */
  const silentConnection = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const s = tcpConnect(Number(new URL(server.url).port), '127.0.0.1');
      s.once('error', reject);
      s.once('close', () => resolve());
    });

  it('applies the log level and the first-byte deadline live, names what needs a restart, and survives an invalid file', async () => {
    // At info, the gateway's debug line about a silent connection is not written.
    await silentConnection();
    await new Promise((r) => setTimeout(r, 300));
    expect(logs(SILENT_CLOSED)).toHaveLength(0);

    await writeFile(configFile, JSON.stringify({ logLevel: 'debug', clientHelloTimeout: '500ms', heartbeatInterval: '20s' }));
    server.child.kill('SIGHUP');
    const summary = await server.waitForLog('config reloaded', 30_000);
    expect(summary).toMatchObject({ signal: 'SIGHUP', applied: 2, needRestart: 1 });
    const applied = logs('config reload: applied').map((o) => ({ key: o.option, from: o.from, to: o.to }));
    expect(applied).toEqual([
      { key: 'clientHelloTimeoutMs', from: 1_000, to: 500 },
      { key: 'logLevel', from: 'info', to: 'debug' },
    ]);
    const restart = logs('config reload: changed, needs a restart (the running value stays)');
    expect(restart.map((o) => ({ key: o.option, from: o.from, to: o.to }))).toEqual([{ key: 'heartbeatIntervalMs', from: 15_000, to: 20_000 }]);

    // The new level reaches the gateway's own (child) logger: the same silent connection is logged now.
    await silentConnection();
    await waitFor('the debug line of a silent connection', async () => logs(SILENT_CLOSED).length === 1, 30_000);

    // An invalid file: an error line, nothing changes, the server keeps serving.
    await writeFile(configFile, JSON.stringify({ logLevel: 'loud' }));
    server.child.kill('SIGHUP');
    const failed = await server.waitForLog(/^config reload failed/, 30_000);
    expect(failed).toMatchObject({ level: 50, signal: 'SIGHUP', code: 'ML_ERR_CONFIG' });
    expect(String(failed.reason)).toContain('logLevel');
    expect(logs('config reloaded')).toHaveLength(1);
    await writeFile(configFile, '{ not json');
    server.child.kill('SIGHUP');
    await waitFor('the second failure', async () => logs('config reload failed: nothing changed, the server keeps running').length === 2, 30_000);
    expect(server.child.exitCode).toBeNull();
    expect(await listNodes(server.dataDir)).toEqual([]);
    // Still at debug: the level from the last good file stays.
    await silentConnection();
    await waitFor('a second debug line', async () => logs(SILENT_CLOSED).length === 2, 30_000);
    expect(await server.stop('SIGTERM')).toBe(0);
  }, 120_000);
});
