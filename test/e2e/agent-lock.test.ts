import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, createToken, enrollAgent, freePort, spawnCli, startServerProc, tempDir, type Proc, type ServerProc } from './harness.js';

/** One `agent run` per state dir, and clean stdout of `agent enroll`, through the real CLI. */
describe('agent run on a state dir that an agent already runs on (real processes)', () => {
  let srvDir: { path: string; cleanup(): Promise<void> };
  let stateDir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let agent: Proc | undefined;

  beforeAll(async () => {
    srvDir = await tempDir('ml-lock-srv-');
    stateDir = await tempDir('ml-lock-agent-');
    server = await startServerProc(srvDir.path, await freePort());
    await enrollAgent(server, stateDir.path, 'locked-host');
  }, 60_000);
  afterAll(async () => {
    await agent?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    await srvDir?.cleanup();
    await stateDir?.cleanup();
  });

  it('agent enroll --json prints exactly one JSON document on stdout, its logs on stderr', async () => {
    const t = await createToken(server.dataDir);
    const other = await tempDir('ml-lock-enroll-');
    try {
      const r = await cli(['agent', 'enroll', '--server', server.url, '--token', t.token, '--ca-pin', server.caPin, '--state-dir', other.path, '--hostname', 'json-host', '--json', '--log-level', 'debug']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim().split('\n')).toHaveLength(1);
      expect(JSON.parse(r.stdout)).toMatchObject({ nodeId: expect.any(String), caPin: server.caPin });
      expect(r.stderr).toMatch(/^\{"level":\d+,/m);
    } finally {
      await other.cleanup();
    }
  }, 60_000);

  it('refuses the second with exit 6 naming the first one’s pid; after a kill -9 the next one takes over', async () => {
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir.path]);
    await agent.waitForLog('connected');
    const second = await cli(['agent', 'run', '--state-dir', stateDir.path]);
    expect(second.code).toBe(6);
    expect(second.stderr).toMatch(new RegExp(`^error ML_ERR_AGENT_RUNNING: another agent \\(pid ${agent.child.pid}\\) runs on `, 'm'));
    expect(agent.child.exitCode).toBeNull();

    await agent.stop('SIGKILL');
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir.path]);
    await agent.waitForLog('connected');
  }, 60_000);
});
