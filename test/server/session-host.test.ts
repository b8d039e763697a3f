import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { attachSession } from '../../src/net/ws-session.js';
import type { Session } from '../../src/protocol/session.js';
import type { AgentHandle } from '../../src/server/agent-sessions.js';
import type { ServerConfig } from '../../src/server/config.js';
import type { EnrollmentService } from '../../src/server/enroll.js';
import type { Presence } from '../../src/server/presence.js';
import { SessionHost, type ConnectedAgent } from '../../src/server/session-host.js';
import type { Store } from '../../src/server/store/store.js';
import { createLogger } from '../../src/util/logger.js';

/**
 * The session host's handler tables (one HandlerRegistry each, as in the agent runner): what a
 * feature may register, and how a message, stream or request from an agent reaches it. The host runs
 * over a plain loopback WebSocket with the store, presence and enrollment stubbed: admission and TLS
 * are the gateway's (test/server/gateway.test.ts).
 */

const info = { nodeId: 'node-1', hostname: 'host-1', certSerial: '01', certNotAfter: Date.now() + 3_600_000, remoteAddress: '127.0.0.1' };

function newHost(): SessionHost {
  const store = { getNode: () => ({ id: info.nodeId, hostname: info.hostname, removedAt: null, agentVersion: 'test' }), setAgentVersion: () => {} } as unknown as Store;
  const presence = { opened: () => {}, heard: () => {}, closed: () => {}, isOnline: () => true } as unknown as Presence;
  return new SessionHost({
    config: { heartbeatIntervalMs: 15_000, offlineAfterMs: 3_600_000 } as ServerConfig,
    store,
    enrollment: {} as EnrollmentService,
    logger: createLogger({ name: 'test', level: 'silent' }),
    presence,
  });
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

/** An agent session connected to `host` over loopback, after the handshake. */
async function connect(host: SessionHost): Promise<Session> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  wss.on('connection', (ws) => host.onAgentConnection(ws, info));
  const ws = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}/v1/connect`);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const agent = attachSession(ws, { role: 'agent' });
  const opened = new Promise<void>((r) => host.once('agent-open', () => r()));
  await agent.handshake({ agentVersion: 'test' });
  await opened;
  cleanups.push(async () => {
    host.close();
    agent.close();
    for (const c of wss.clients) c.terminate();
    await new Promise<void>((r) => wss.close(() => r()));
  });
  return agent;
}

describe('SessionHost handler registration', () => {
  it('refuses a second stream handler and a second request handler for a kind', () => {
    const host = newHost();
    cleanups.push(async () => host.close());
    host.onStream('file.open', () => {});
    expect(() => host.onStream('file.open', () => {})).toThrow(/already registered/);
    host.onRequest('state.request', () => ({ inSync: true }));
    expect(() => host.onRequest('state.request', () => ({ inSync: true }))).toThrow(/already registered/);
  });

  it('keeps cert.renew its own', () => {
    const host = newHost();
    cleanups.push(async () => host.close());
    expect(() => host.onRequest('cert.renew', () => ({ certificate: '', caCertificate: '', notAfter: '' }))).toThrow(/cert.renew is already registered/);
  });

  it('allows several message handlers for one kind', () => {
    const host = newHost();
    cleanups.push(async () => host.close());
    expect(() => {
      host.onMessage('stats', () => {});
      host.onMessage('stats', () => {});
    }).not.toThrow();
  });
});

describe('SessionHost dispatch', () => {
  it('runs the message handlers of a kind in order with the agent handle; one that throws does not stop the next', async () => {
    const host = newHost();
    const seen: string[] = [];
    let done!: () => void;
    const second = new Promise<void>((r) => (done = r));
    host.onMessage('stats', () => {
      seen.push('first');
      throw new Error('feature bug');
    });
    host.onMessage('stats', (agent: AgentHandle, payload) => {
      seen.push(`second ${agent.nodeId} ${payload.ts}`);
      done();
    });
    const agent = await connect(host);
    agent.send('stats', { ts: 7 });
    await second;
    expect(seen).toEqual(['first', 'second node-1 7']);
  });

  it('ignores a message kind nobody handles and keeps the session', async () => {
    const host = newHost();
    let heard!: (ts: number) => void;
    const stats = new Promise<number>((r) => (heard = r));
    host.onMessage('stats', (_agent, payload) => heard(payload.ts));
    const agent = await connect(host);
    agent.send('drift.report', { ts: 1, items: [] });
    agent.send('stats', { ts: 2 });
    expect(await stats).toBe(2);
    expect(agent.state).toBe('open');
  });

  it('hands a stream of a registered kind to its handler with the agent handle', async () => {
    const host = newHost();
    const kinds: string[] = [];
    host.onStream('file.open', (handle, stream) => {
      kinds.push(`${handle.nodeId} ${stream.kind}`);
      // The facade has no accept yet (no server feature takes agent-opened streams); tests reach the session.
      (handle as ConnectedAgent).session.accept(stream);
    });
    const agent = await connect(host);
    await expect(agent.openStream('file.open', { path: '/tmp/x', direction: 'push' })).resolves.toMatchObject({ kind: 'file.open' });
    expect(kinds).toEqual(['node-1 file.open']);
  });

  it('rejects a stream of a kind nobody handles with ML_ERR_UNSUPPORTED', async () => {
    const agent = await connect(newHost());
    await expect(agent.openStream('file.open', { path: '/tmp/x', direction: 'push' })).rejects.toMatchObject({ code: 'ML_ERR_STREAM_REJECTED', remoteCode: 'ML_ERR_UNSUPPORTED', message: expect.stringContaining('file.open') as string });
    expect(agent.state).toBe('open');
  });

  it('answers a request through the handler registered for its kind, with the agent handle', async () => {
    const host = newHost();
    host.onRequest('state.request', (agent, payload) => ({ inSync: payload.digest === `${agent.nodeId}-digest` }));
    const agent = await connect(host);
    await expect(agent.request('state.request', { digest: 'node-1-digest' })).resolves.toMatchObject({ inSync: true });
    await expect(agent.request('state.request', { digest: 'other' })).resolves.toMatchObject({ inSync: false });
  });
});
