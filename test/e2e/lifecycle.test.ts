import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, enrollAgent, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from './harness.js';

/** The state the agent last wrote to status.json, as `agent status --json` shows it once the agent is gone. */
async function lastReportedState(stateDir: string): Promise<string> {
  const status = await cli(['agent', 'status', '--state-dir', stateDir, '--json']);
  const connection = (JSON.parse(status.stdout) as { connection: { state: string; lastReported?: { state: string } } }).connection;
  expect(connection.state).toBe('not running');
  return connection.lastReported?.state ?? '(none)';
}

/**
 * The connection lifecycle end to end, with real processes of the real CLI: a server with 60-second
 * client certificates, one agent enrolled and running, then renewal, server restart, revocation.
 * Sequential by design: each step builds on the state the previous one left.
 */
describe('agent ↔ server lifecycle (real processes, real TLS, real SQLite)', () => {
  let dataDir: { path: string; cleanup(): Promise<void> };
  let stateDir: { path: string; cleanup(): Promise<void> };
  let port: number;
  let server: ServerProc;
  let agent: Proc;
  let nodeId: string;
  let token: string;
  const outputs: string[] = [];

  beforeAll(async () => {
    dataDir = await tempDir('ml-e2e-srv-');
    stateDir = await tempDir('ml-e2e-agent-');
    port = await freePort();
    server = await startServerProc(dataDir.path, port, ['--cert-lifetime', '60s', '--log-level', 'debug']);
    ({ nodeId, token } = await enrollAgent(server, stateDir.path, 'e2e-host'));
  });

  afterAll(async () => {
    await agent?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    await dataDir?.cleanup();
    await stateDir?.cleanup();
  });

  it('enroll and run: the node shows online, agent status says connected', async () => {
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir.path, '--log-level', 'debug']);
    await agent.waitForLog('connected');
    const nodes = await waitFor('node online', async () => {
      const list = await listNodes(server.dataDir);
      return list.find((n) => n.id === nodeId && n.online) ? list : null;
    });
    expect(nodes).toHaveLength(1);
    expect(nodes[0]).toMatchObject({ id: nodeId, hostname: 'e2e-host', online: true });
    const listed = await cli(['server', 'nodes', 'list', '--data-dir', server.dataDir, '--json']);
    expect(JSON.parse(listed.stdout)).toEqual([expect.objectContaining({ id: nodeId, online: true, agentVersion: expect.any(String) })]);
    const status = await cli(['agent', 'status', '--state-dir', stateDir.path, '--json']);
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ enrolled: true, nodeId, connection: expect.objectContaining({ state: 'connected' }) });
  });

  it('with 60-second certificates the agent renews twice and stays online throughout', async () => {
    const serials = new Set<string>();
    let offlineSamples = 0;
    let samples = 0;
    const deadline = Date.now() + 100_000;
    while (Date.now() < deadline) {
      const row = (await listNodes(server.dataDir)).find((n) => n.id === nodeId);
      samples++;
      if (!row?.online) offlineSamples++;
      if (row?.certSerial) serials.add(row.certSerial);
      const renewals = agent.output().split('\n').filter((l) => l.includes('certificate renewed; switching connections')).length;
      if (renewals >= 2 && serials.size >= 3) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    const renewals = agent.output().split('\n').filter((l) => l.includes('certificate renewed; switching connections')).length;
    expect(renewals).toBeGreaterThanOrEqual(2);
    expect(serials.size).toBeGreaterThanOrEqual(3);
    expect(samples).toBeGreaterThan(50);
    expect(offlineSamples).toBe(0);
    // The agent never fell back to reconnecting with backoff while renewing.
    expect(agent.output()).not.toContain('reconnecting after backoff');
  }, 120_000);

  it('after a server restart the agent reconnects and the node list is intact', async () => {
    const before = await listNodes(server.dataDir);
    expect(await server.stop('SIGTERM')).toBe(0);
    server = await startServerProc(dataDir.path, port, ['--cert-lifetime', '60s', '--log-level', 'debug']);
    await waitFor('node online again', async () => (await listNodes(server.dataDir)).find((n) => n.id === nodeId && n.online), 45_000);
    const after = await listNodes(server.dataDir);
    expect(after.map((n) => [n.id, n.hostname])).toEqual(before.map((n) => [n.id, n.hostname]));
  }, 90_000);

  it('removing the node drops the live session and the agent exits with code 78', async () => {
    const t0 = Date.now();
    const removed = await cli(['server', 'nodes', 'remove', nodeId, '--data-dir', server.dataDir]);
    expect(removed.code).toBe(0);
    // The removal closes the session at once (revocation is pushed, not polled); the time is reported, not
    // asserted, since a loaded machine stretches it without anything being wrong.
    const code = await Promise.race([agent.exited, new Promise((r) => setTimeout(() => r('timeout'), 30_000))]);
    expect(code).toBe(78);
    await waitFor('node offline', async () => !(await listNodes(server.dataDir)).find((n) => n.id === nodeId)?.online, 15_000, 50);
    console.log(`lifecycle: removed node's agent exited and the node was offline ${Date.now() - t0} ms after 'nodes remove' started`);
    expect(agent.output()).toMatch(/revoked/);
    // And a restarted agent is refused at once, with the same exit code.
    const again = spawnCli(['agent', 'run', '--state-dir', stateDir.path]);
    expect(await Promise.race([again.exited, new Promise((r) => setTimeout(() => r('timeout'), 15_000))])).toBe(78);
    outputs.push(again.output());
    expect(await lastReportedState(stateDir.path)).toBe('stopped');
  }, 90_000);

  it('no token, private key or CSR appears in any log line', async () => {
    outputs.push(agent.output(), server.output());
    const key = await readFile(join(stateDir.path, 'key.pem'), 'utf8');
    const keyLines = key.split('\n').filter((l) => l.length >= 40 && !l.startsWith('-----'));
    expect(keyLines.length).toBeGreaterThan(5);
    for (const out of outputs) {
      expect(out).not.toContain(token);
      for (const line of keyLines) expect(out).not.toContain(line);
      expect(out).not.toContain('BEGIN CERTIFICATE REQUEST');
      expect(out).not.toContain('PRIVATE KEY');
    }
  });
});

describe('agent run: SIGTERM', () => {
  it('sends goaway and exits 0', async () => {
    const dataDir = await tempDir('ml-e2e-srv2-');
    const stateDir = await tempDir('ml-e2e-agent2-');
    const server = await startServerProc(dataDir.path, await freePort());
    try {
      await enrollAgent(server, stateDir.path, 'sigterm-host');
      const agent = spawnCli(['agent', 'run', '--state-dir', stateDir.path]);
      await agent.waitForLog('connected');
      const t0 = Date.now();
      expect(await agent.stop('SIGTERM')).toBe(0);
      console.log(`lifecycle: agent exited ${Date.now() - t0} ms after SIGTERM`);
      await server.waitForLog('agent session closed');
      expect(await lastReportedState(stateDir.path)).toBe('stopped');
    } finally {
      await server.stop('SIGKILL');
      await dataDir.cleanup();
      await stateDir.cleanup();
    }
  }, 60_000);
});
