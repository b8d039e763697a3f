import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CloseInfo } from '../../src/protocol/session.js';
import type { ConnectedAgent } from '../../src/server/session-host.js';
import type { RunningServer } from '../../src/server/server.js';
import { enrollAgent, runAgent, startFaultServer, tempDir, waitFor } from './helpers.js';
import { TcpProxy } from './tcp-proxy.js';

/**
 * Network faults between a real agent runner and a real server (in-process, TLS on loopback) through a
 * TCP proxy: heartbeats every 200 ms, the server declares a node offline after 1 s of silence, the
 * agent abandons a connection after three silent intervals (600 ms).
 */
describe('network faults through a TCP proxy (half-open, drop, delay)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: RunningServer;
  let proxy: TcpProxy;
  let nodeId = '';
  let agent: ReturnType<typeof runAgent>;
  const closes: Array<{ nodeId: string; code: number; error?: string }> = [];
  const states: string[] = [];

  beforeAll(async () => {
    dir = await tempDir('ml-net-');
    server = await startFaultServer(join(dir.path, 'server'));
    proxy = await TcpProxy.start(server.address().port);
    // Enrolled through the proxy: the identity's server URL is the proxy's, so every dial crosses it.
    nodeId = await enrollAgent(server, join(dir.path, 'agent'), 'net-1', proxy.url);
    server.sessions!.on('agent-close', (a: ConnectedAgent, info: CloseInfo) => closes.push({ nodeId: a.nodeId, code: info.code, ...(info.error ? { error: info.error.code } : {}) }));
    agent = runAgent(join(dir.path, 'agent'), undefined, { connectTimeoutMs: 1_500 });
    agent.runner.on('state', (s: string) => states.push(s));
    await waitFor('online', () => server.sessions!.isOnline(nodeId), 40_000);
  }, 60_000);

  afterAll(async () => {
    agent?.runner.stop();
    await agent?.done;
    await proxy?.close();
    await server?.close();
    await dir?.cleanup();
  });

  it('a half-open path (black hole) is detected by heartbeat timeout on both sides, and the agent reconnects', async () => {
    const connectsBefore = proxy.connections;
    states.length = 0;
    closes.length = 0;
    const t0 = Date.now();
    proxy.mode = 'blackhole';
    // Server side: nothing arrives for offlineAfterMs (1 s) → 4030 and the node is offline.
    const closed = await waitFor('server closes the silent session', () => closes.find((c) => c.nodeId === nodeId));
    expect(closed.code).toBe(4030);
    expect(closed.error).toBe('ML_ERR_HEARTBEAT_TIMEOUT');
    expect(server.sessions!.isOnline(nodeId)).toBe(false);
    // Agent side: it abandons the connection on its own (nothing from the server for 3 intervals).
    await waitFor('agent leaves connected', () => states.includes('backoff') || states.includes('connecting'));
    console.log(`black hole → agent reconnecting: ${Date.now() - t0} ms`);
    proxy.mode = 'pass';
    await waitFor('back online', () => server.sessions!.isOnline(nodeId) && agent.runner.state === 'connected', 20_000);
    expect(proxy.connections).toBeGreaterThan(connectsBefore);
  }, 40_000);

  it('dropped connections (RST) are replaced at once', async () => {
    const before = proxy.connections;
    proxy.drop();
    await waitFor('reconnected', () => proxy.connections > before && server.sessions!.isOnline(nodeId) && agent.runner.state === 'connected', 15_000);
  }, 20_000);

  it('a slow path (150 ms each way) keeps the session up; the agent measures the longer round trip', async () => {
    proxy.delayMs = 150;
    const rtt = await waitFor('slow heartbeat ack', () => (agent.runner.lastHeartbeatRttMs ?? 0) >= 300 && agent.runner.lastHeartbeatRttMs, 10_000);
    expect(rtt).toBeGreaterThanOrEqual(300);
    const opened = server.sessions!.current(nodeId)!.connectedAt;
    await new Promise((r) => setTimeout(r, 1_500));
    // Still the same session: delay is not silence.
    expect(server.sessions!.current(nodeId)?.connectedAt).toBe(opened);
    proxy.delayMs = 0;
  }, 20_000);
});
