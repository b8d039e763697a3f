import { connect as tcpConnect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { httpsRequest, startTestServer, type TestServer } from './helpers.js';

/**
 * The gateway caps TLS handshakes in flight: beyond the cap a new connection is dropped at once
 * instead of queueing behind the others past the handshake timeout (the reconnect-storm collapse).
 * Handshakes that complete free their slot.
 */
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function openIdle(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = tcpConnect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

function closedWithin(sock: Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (sock.destroyed) return resolve(true);
    const t = setTimeout(() => resolve(false), ms);
    sock.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

describe('gateway: TLS handshakes in flight are capped', () => {
  it('drops connections beyond the cap at once and serves again when slots free up', async () => {
    const ts: TestServer = await startTestServer({}, { timeouts: { maxHandshakes: 3, handshakeMs: 2_000 } });
    cleanups.push(() => ts.stop());
    const port = ts.server.address().port;
    // Three silent TCP connections hold every handshake slot (a client that never sends ClientHello).
    const holders = await Promise.all([openIdle(port), openIdle(port), openIdle(port)]);
    cleanups.push(() => holders.forEach((h) => h.destroy()));
    await new Promise((r) => setTimeout(r, 100));
    const extra = await openIdle(port);
    expect(await closedWithin(extra, 1_000)).toBe(true);
    for (const h of holders) expect(h.destroyed).toBe(false);
    // The holders time out (handshakeMs), their slots free, and real requests are served again.
    expect(await closedWithin(holders[0]!, 5_000)).toBe(true);
    const health = await httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem });
    expect(health.status).toBe(200);
  }, 20_000);
});
