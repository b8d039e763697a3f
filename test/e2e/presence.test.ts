import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enrollAgent, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type ServerProc } from './harness.js';

/**
 * Presence with short, configured intervals: a frozen agent (SIGSTOP: its TCP connection stays open
 * but silent, like a hung host) goes offline after --offline-after; once thawed it reconnects.
 */
describe('presence: heartbeats and the offline timeout (real processes)', () => {
  let dataDir: { path: string; cleanup(): Promise<void> };
  let stateDir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;

  beforeAll(async () => {
    dataDir = await tempDir('ml-pres-srv-');
    stateDir = await tempDir('ml-pres-agent-');
    server = await startServerProc(dataDir.path, await freePort(), ['--heartbeat-interval', '500ms', '--offline-after', '2s']);
  });
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await dataDir?.cleanup();
    await stateDir?.cleanup();
  });

  it('a silent agent goes offline after --offline-after, and comes back when it wakes', async () => {
    const { nodeId } = await enrollAgent(server, stateDir.path, 'presence-host');
    const agent = spawnCli(['agent', 'run', '--state-dir', stateDir.path]);
    try {
      const online = async (): Promise<boolean> => Boolean((await listNodes(server.dataDir)).find((n) => n.id === nodeId)?.online);
      await waitFor('online', online);
      const connected = await agent.waitForLog('connected');
      expect(connected).toMatchObject({ heartbeatIntervalMs: 500 });
      agent.child.kill('SIGSTOP');
      const frozenAt = Date.now();
      await waitFor('offline', async () => !(await online()), 30_000, 100);
      const after = Date.now() - frozenAt;
      expect(after).toBeGreaterThanOrEqual(1_500);
      console.log(`SIGSTOP → offline: ${after} ms`);
      await server.waitForLog('agent silent; closing session');
      agent.child.kill('SIGCONT');
      await waitFor('online again', online, 20_000);
    } finally {
      agent.child.kill('SIGCONT');
      await agent.stop('SIGKILL');
    }
  }, 60_000);
});
