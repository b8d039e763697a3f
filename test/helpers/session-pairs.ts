import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { Session, type SessionOptions } from '../../src/protocol/session.js';
import { attachSession } from '../../src/net/ws-session.js';
import type { TestPki } from './tls-fixtures.js';

export interface SessionPair {
  agent: Session;
  server: Session;
  close(): Promise<void>;
}

type Extra = Partial<Omit<SessionOptions, 'role' | 'transport'>>;

const welcome = { nodeId: 'node-1', serverVersion: 'test', heartbeatIntervalMs: 15_000 };

async function handshake(agent: Session, server: Session): Promise<void> {
  const opened = new Promise<void>((r) => server.once('open', () => r()));
  await agent.handshake({ agentVersion: 'test' });
  await opened;
}

/**
 * Two sessions joined by an in-memory transport. Delivery is asynchronous (setImmediate, or after
 * `latencyMs`) and the send callback fires on delivery, so backpressure behaves as over a socket,
 * with a bounded "wire".
 */
export async function memoryPair(agentExtra: Extra = {}, serverExtra: Extra = {}, link_: { latencyMs?: number } = {}): Promise<SessionPair> {
  // With a latency, each message arrives that long after it was sent, in order (timers of equal
  // delay fire in the order they were set): a link with a round trip, without a network.
  const later = (fn: () => void): void => {
    if (link_.latencyMs) setTimeout(fn, link_.latencyMs);
    else setImmediate(fn);
  };
  const link = (getPeer: () => Session) => ({
    send(message: Uint8Array, done: (err?: Error | null) => void) {
      const copy = Uint8Array.from(message);
      later(() => {
        getPeer().receive(copy);
        done();
      });
    },
    close(code: number, reason: string) {
      setImmediate(() => getPeer().transportClosed(code, reason));
    },
  });
  // Each link looks its peer up on delivery, so the agent's may name the server before it exists.
  const agent: Session = new Session({ role: 'agent', transport: link(() => server), ...agentExtra });
  const server: Session = new Session({ role: 'server', transport: link(() => agent), onHello: () => welcome, ...serverExtra });
  await handshake(agent, server);
  return {
    agent,
    server,
    async close() {
      agent.close();
      server.close();
    },
  };
}

/** Two sessions over a real `ws` connection with TLS (and client certificates) on loopback. */
export async function wssPair(pki: TestPki, agentExtra: Extra = {}, serverExtra: Extra = {}): Promise<SessionPair> {
  const https: Server = createServer({ key: pki.serverKey, cert: pki.serverCert, ca: pki.ca, requestCert: true, rejectUnauthorized: true });
  const wss = new WebSocketServer({ server: https, perMessageDeflate: false, maxPayload: 16 * 1024 * 1024 });
  await new Promise<void>((r) => https.listen(0, '127.0.0.1', () => r()));
  const port = (https.address() as AddressInfo).port;
  const serverSession = new Promise<Session>((resolve) => {
    wss.once('connection', (ws) => resolve(attachSession(ws, { role: 'server', onHello: () => welcome, ...serverExtra })));
  });
  const ws = new WebSocket(`wss://127.0.0.1:${port}/v1/connect`, {
    ca: pki.ca,
    cert: pki.clientCert,
    key: pki.clientKey,
    perMessageDeflate: false,
    maxPayload: 16 * 1024 * 1024,
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const agent = attachSession(ws, { role: 'agent', ...agentExtra });
  const server = await serverSession;
  await handshake(agent, server);
  return {
    agent,
    server,
    async close() {
      agent.close();
      server.close();
      for (const c of wss.clients) c.terminate();
      await new Promise<void>((r) => wss.close(() => r()));
      https.closeAllConnections();
      await new Promise<void>((r) => https.close(() => r()));
    },
  };
}
