import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { openFeatureContext, type FeatureCore } from '../../src/agent/feature.js';
import { attachObservability, type AgentObservability } from '../../src/agent/observability/index.js';
import { AgentUploader, DropOldestQueue } from '../../src/agent/uploader.js';
import type { Session } from '../../src/protocol/session.js';
import { createObservabilityFeature, nodeDetails } from '../../src/server/observability/index.js';
import type { RunningServer } from '../../src/server/server.js';
import { createLogger } from '../../src/util/logger.js';
import { cli } from '../e2e/harness.js';
import { enrollAgent, runAgent, startFaultServer, tempDir, waitFor } from './helpers.js';

function get(port: number, path = '/metrics'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    httpRequest({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    })
      .on('error', reject)
      .end();
  });
}

/** The value of one exposition line, e.g. metric('meshlink_connected_agents'). */
function metric(text: string, series: string): number | null {
  for (const line of text.split('\n')) {
    if (line.startsWith(series + ' ')) return Number(line.slice(series.length + 1));
  }
  return null;
}

describe('metrics and observability upload (real TLS, in-process server, real agent runner)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: RunningServer;
  let metricsPort = 0;
  let nodeId = '';
  let agent: ReturnType<typeof runAgent>;
  let obs: AgentObservability;
  let core: FeatureCore;
  const agentLogger = createLogger({ name: 'agent', level: 'silent' });

  beforeAll(async () => {
    dir = await tempDir('ml-obs-');
    server = await startFaultServer(join(dir.path, 'server'), {}, [
      createObservabilityFeature({ listen: { host: '127.0.0.1', port: 0 }, batchesPerMinute: 600, onStarted: (h) => (metricsPort = h.address.port) }),
    ]);
    nodeId = await enrollAgent(server, join(dir.path, 'agent'), 'obs-1');
    agent = runAgent(join(dir.path, 'agent'), agentLogger);
    core = openFeatureContext(agent.runner, { stateDir: join(dir.path, 'agent'), logger: agentLogger, uploadLimits: { minIntervalMs: 100 } });
    obs = await attachObservability(agent.runner, core.context, { metricsListen: { host: '127.0.0.1', port: 0 }, metricsUploadIntervalMs: 200 });
    await waitFor('agent online', () => server.sessions!.isOnline(nodeId));
  }, 60_000);

  afterAll(async () => {
    agent?.runner.stop();
    await agent?.done;
    await obs?.close();
    core?.close();
    await server?.close();
    await dir?.cleanup();
  });

  it('serves Prometheus metrics on the separate listener only, counting sessions, store totals and frames by kind', async () => {
    // Heartbeats every 200 ms: wait for a few to be counted.
    const text = await waitFor('heartbeats counted', async () => {
      const r = await get(metricsPort);
      return (metric(r.body, 'meshlink_frames_total{direction="in",kind="heartbeat"}') ?? 0) >= 3 ? r.body : null;
    });
    expect(metric(text, 'meshlink_connected_agents')).toBe(1);
    expect(metric(text, 'meshlink_connected_nodes')).toBe(1);
    expect(metric(text, 'meshlink_handshakes_total{result="accepted",reason="ok"}')).toBe(1);
    expect(metric(text, 'meshlink_enrollments_total')).toBe(1);
    expect(metric(text, 'meshlink_enrolled_nodes')).toBe(1);
    expect(metric(text, 'meshlink_frames_total{direction="out",kind="welcome"}')).toBe(1);
    expect(metric(text, 'meshlink_frames_total{direction="out",kind="heartbeat.ack"}')!).toBeGreaterThanOrEqual(3);
    expect(metric(text, 'meshlink_open_streams')).toBe(0);
    expect(metric(text, 'meshlink_flow_control_stalls_total')).toBe(0); // counted in test/protocol/session.test.ts
    const expiry = metric(text, 'meshlink_connected_cert_expiry_seconds{stat="min"}')!;
    expect(expiry).toBeGreaterThan(29 * 86_400);
    expect(expiry).toBeLessThanOrEqual(30 * 86_400);
    expect(text).toContain('process_resident_memory_bytes');
    expect((await get(metricsPort, '/other')).status).toBe(404);
    // The agent-facing port does not serve /metrics.
    const gw = await fetchGateway(server, '/metrics');
    expect(gw).toBe(404);
  });

  it('counts a connection refused at the gateway by reason', async () => {
    const status = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`wss://127.0.0.1:${server.address().port}/v1/connect`, { ca: server.caCertPem });
      ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.once('error', () => resolve(-1));
    });
    expect(status).toBe(401);
    const text = (await get(metricsPort)).body;
    const refused = text.split('\n').filter((l) => l.startsWith('meshlink_handshakes_total{result="refused"'));
    expect(refused.length).toBe(1);
    expect(refused[0]).toMatch(/reason="ML_ERR_[A-Z_]+"} 1$/);
  });

  it('serves the agent its own metrics on a local port when asked', async () => {
    const port = (obs.server!.address() as { port: number }).port;
    const text = await waitFor('agent rtt observed', async () => {
      const r = await get(port);
      return (metric(r.body, 'meshlink_agent_heartbeat_rtt_seconds_count') ?? 0) >= 2 ? r.body : null;
    });
    expect(metric(text, 'meshlink_agent_connection_state{state="connected"}')).toBe(1);
    expect(metric(text, 'meshlink_agent_connects_total')).toBe(1);
    expect(metric(text, 'meshlink_agent_flow_control_stalls_total')).toBe(0);
    expect(metric(text, 'meshlink_agent_frames_total{direction="out",kind="hello"}')).toBe(1);
  });

  it('uploads metrics and warn+ log lines (secrets stripped); nodes show returns them, also through the CLI', async () => {
    agentLogger.info('routine line that must not be uploaded');
    agentLogger.warn({ token: 'tok-SECRET-1', disk: '/var', freePct: 3 }, 'disk nearly full');
    agentLogger.error({ err: new Error('boom') }, 'something failed');
    const details = await waitFor('warnings stored', async () => {
      const d = await nodeDetails(server.store, nodeId, server.live);
      return d.warnings.length >= 2 && d.metrics.some((m) => m.name === 'meshlink_agent_heartbeat_rtt_seconds_count') ? d : null;
    });
    expect(details.online).toBe(true);
    expect(details.hostname).toBe('obs-1');
    expect(details.warnings.map((w) => w.msg)).toEqual(['something failed', 'disk nearly full']);
    expect(details.warnings[1]!.fields).toEqual({ disk: '/var', freePct: 3 });
    expect(details.warnings[0]!.fields).toEqual({ err: { message: 'boom' } });
    expect(JSON.stringify(details)).not.toContain('tok-SECRET-1');
    expect(details.metrics.find((m) => m.name === 'meshlink_agent_connection_state' && m.labels.state === 'connected')?.value).toBe(1);

    // The CLI (a real process) through the admin socket of the running server.
    const r = await cli(['server', 'nodes', 'show', 'obs-1', '--json', '--data-dir', join(dir.path, 'server')]);
    expect(r.code, r.stderr).toBe(0);
    const shown = JSON.parse(r.stdout) as { id: string; online: boolean; warnings: Array<{ msg: string }> };
    expect(shown.id).toBe(nodeId);
    expect(shown.online).toBe(true);
    expect(shown.warnings.map((w) => w.msg)).toContain('disk nearly full');
    const text = await cli(['server', 'nodes', 'show', nodeId, '--data-dir', join(dir.path, 'server')]);
    expect(text.stdout).toMatch(/recent warnings \(2\)/);
    const missing = await cli(['server', 'nodes', 'show', 'no-such-node', '--data-dir', join(dir.path, 'server')]);
    expect(missing.code).toBe(3);
  }, 30_000);

  it('records the drop counts an agent reports, and rate-limits batches per node', async () => {
    const session = agent.runner.session!;
    session.send('logs.batch', { records: [], dropped: 7 });
    await waitFor('drops stored', async () => ((await nodeDetails(server.store, nodeId)).dropped.logs ?? 0) >= 7);
  });
});

describe('upload queues stay bounded when the server is offline or slow', () => {
  it('DropOldestQueue keeps the newest `capacity` items and counts the rest', () => {
    const q = new DropOldestQueue<number>(1000);
    for (let i = 0; i < 100_000; i++) q.push(i);
    expect(q.size).toBe(1000);
    expect(q.dropped).toBe(99_000);
    const first = q.take(10, () => true);
    expect(first).toEqual([99_000, 99_001, 99_002, 99_003, 99_004, 99_005, 99_006, 99_007, 99_008, 99_009]);
  });

  it('offline: memory is capped and the drop count goes out with the next batch; slow: sending pauses on backpressure', () => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the test reads fields of the payloads it captured
    let session: { state: string; sent: Array<[string, any]>; accept: boolean; send(n: string, p: unknown): boolean } | null = null;
    const up = new AgentUploader(() => session as unknown as Session, { maxQueued: { metrics: 100, logs: 50, audit: 50 }, maxBatchRecords: 20, minIntervalMs: 0 });
    for (let i = 0; i < 10_000; i++) up.addLog({ ts: i, level: 'warn', msg: `line ${i}` });
    for (let i = 0; i < 500; i++) up.recordAudit({ action: 'exec', result: 'ok', target: String(i) });
    expect(up.queued('logs')).toBe(50);
    expect(up.dropped('logs')).toBe(9_950);
    expect(up.queued('audit')).toBe(50);
    up.flush(); // no session: nothing happens, nothing grows
    expect(up.queued('logs')).toBe(50);

    // A slow server: the first send reports backpressure, so the uploader stops for this round.
    session = { state: 'open', sent: [], accept: false, send(n, p) { this.sent.push([n, p]); return this.accept; } };
    up.flush(1_000);
    expect(session.sent.length).toBe(1);
    const [kind, batch] = session.sent[0]!;
    expect(kind).toBe('audit.batch');
    expect(batch.records.length).toBe(20);
    expect(batch.dropped).toBe(450);
    session.accept = true;
    up.flush(2_000);
    const logs = session.sent.find(([k]) => k === 'logs.batch')![1];
    expect(logs.dropped).toBe(9_950);
    expect(logs.records[0].msg).toBe('line 9950');
    up.close();
  });
});

async function fetchGateway(server: RunningServer, path: string): Promise<number> {
  const { request } = await import('node:https');
  return new Promise((resolve, reject) => {
    request(`https://127.0.0.1:${server.address().port}${path}`, { ca: server.caCertPem, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    })
      .on('error', reject)
      .end();
  });
}
