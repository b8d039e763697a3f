import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { CLOSE_REVOKED, ConnectionRegistry } from '../../src/server/connections.js';
import { createLogger } from '../../src/util/logger.js';

/**
 * The gateway's registry of upgraded sockets (src/server/connections.ts) over real WebSockets on
 * loopback: a revocation tells the observers first, and closes with 4401 after what they sent.
 */

const logger = createLogger({ name: 'connections-test', level: 'silent' });
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A registry with one registered socket for node `n1`, and the client end's received messages. */
async function registered(): Promise<{ registry: ConnectionRegistry; client: WebSocket; server: WebSocket; received: string[]; closed: Promise<number> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  cleanups.push(() => new Promise<void>((resolve) => wss.close(() => resolve())));
  const accepted = once(wss, 'connection') as Promise<[WebSocket]>;
  const client = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}`);
  cleanups.push(() => client.terminate());
  const received: string[] = [];
  // Text messages are the observers' notices; binary ones the registry's `error` frame.
  client.on('message', (data, binary) => received.push(binary ? 'error-frame' : String(data)));
  const closed = new Promise<number>((resolve) => client.once('close', (code) => resolve(code)));
  const [server] = await accepted;
  await once(client, 'open');
  const registry = new ConnectionRegistry(logger);
  expect(registry.add(server, { nodeId: 'n1', certSerial: 'aa', certNotAfter: Date.now() + 3_600_000 })).toBe(true);
  return { registry, client, server, received, closed };
}

describe('ConnectionRegistry revocation', () => {
  it('closes with 4401 only after the promise an observer returned settles, so what it sent arrives first', async () => {
    const { registry, server, received, closed } = await registered();
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const seen: Array<[string, string]> = [];
    registry.onRevoking((nodeId, reason) => {
      seen.push([nodeId, reason]);
      // What a store round trip would delay: the notice goes out once `held` resolves.
      return held.then(() => server.send('session_revoked'));
    });
    expect(registry.closeRevokedNode('n1')).toBe(1);
    expect(seen).toEqual([['n1', 'node removed']]);
    // Several turns of the event loop later the socket is still open: the close waits for the observer.
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(server.readyState).toBe(WebSocket.OPEN);
    release();
    expect(await closed).toBe(CLOSE_REVOKED);
    expect(received).toEqual(['session_revoked', 'error-frame']);
  });

  it('closes anyway when an observer\'s promise never settles or rejects, and with sync observers one turn later', async () => {
    const hanging = await registered();
    hanging.registry.onRevoking(() => new Promise(() => {}));
    hanging.registry.onRevoking(() => Promise.reject(new Error('store down')));
    expect(hanging.registry.closeRevokedSerials(['aa'])).toBe(1);
    expect(await hanging.closed).toBe(CLOSE_REVOKED);
    expect(hanging.received).toEqual(['error-frame']);

    const sync = await registered();
    sync.registry.onRevoking((nodeId) => void sync.server.send(`bye ${nodeId}`));
    expect(sync.registry.closeRevokedSerials(['other'])).toBe(0);
    expect(sync.registry.closeRevokedNode('n1')).toBe(1);
    expect(await sync.closed).toBe(CLOSE_REVOKED);
    expect(sync.received).toEqual(['bye n1', 'error-frame']);
  });
});
