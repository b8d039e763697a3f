import { get as httpsGet } from 'node:https';
import { connect as tcpConnect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { GatewayLoad } from '../../src/server/gateway.js';
import { httpsRequest, startTestServer, type TestServer } from './helpers.js';

/**
 * The gateway caps TLS handshakes in flight; connections beyond the cap wait, unread, in arrival order
 * (src/server/admission.ts), up to a queue length and a waiting time, and start their handshake when a
 * slot frees. Beyond the queue length a connection is dropped at once.
 */
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A connection that starts a TLS handshake and stalls: it sends the first byte of a TLS record
 * (0x16, handshake) and nothing more, so it passes the first-byte deadline (client-hello.ts), takes a
 * handshake slot and holds it until the handshake timeout. A connection that sends nothing at all
 * never reaches a slot (test/server/client-hello.test.ts).
 */
function openIdle(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = tcpConnect(port, '127.0.0.1', () => {
      s.write(Buffer.from([0x16]));
      resolve(s);
    });
    s.once('error', reject);
  });
}

function closed(sock: Socket): Promise<void> {
  return new Promise((resolve) => (sock.destroyed ? resolve() : sock.once('close', () => resolve())));
}

/** Waits for the gateway to reach a state (polling its load; the test's own timeout bounds it). */
async function until(what: string, check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 10));
  expect(check(), what).toBe(true);
}

describe('gateway: TLS handshakes in flight are capped, the rest wait in order', () => {
  it('queues connections beyond the cap, serves them when slots free up, drops beyond the queue', async () => {
    const ts: TestServer = await startTestServer({}, { timeouts: { maxHandshakes: 3, maxQueuedConnections: 2, queueWaitMs: 60_000, handshakeMs: 5_000 } });
    cleanups.push(() => ts.stop());
    const port = ts.server.address().port;
    const load = (): GatewayLoad => ts.server.gatewayLoad();
    // Three stalled handshakes hold every slot (a client that never finishes its ClientHello).
    const holders = await Promise.all([openIdle(port), openIdle(port), openIdle(port)]);
    cleanups.push(() => holders.forEach((h) => h.destroy()));
    let holderClosed = false;
    for (const h of holders) h.once('close', () => (holderClosed = true));
    await until('three handshakes in flight', () => load().handshakesInFlight === 3);
    // A real client waits in the queue: its ClientHello stays unread until a slot frees.
    const health = httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem }).then((res) => ({ res, afterAHolder: holderClosed }));
    await until('the client queued', () => load().queued === 1);
    const idleQueued = await openIdle(port);
    cleanups.push(() => void idleQueued.destroy());
    await until('two queued', () => load().queued === 2);
    // The queue (2) is full: the next connection is dropped at once, counted as overloaded.
    const overloaded = new Promise<void>((resolve) => {
      const stop = ts.server.live.registry.onRefused((reason) => {
        if (reason !== 'ML_ERR_OVERLOADED') return;
        stop();
        resolve();
      });
    });
    const extra = await openIdle(port);
    await overloaded;
    await closed(extra);
    expect(idleQueued.destroyed).toBe(false);
    // The holders time out (handshakeMs); the queued client gets a freed slot and is served.
    const { res, afterAHolder } = await health;
    expect(res.status).toBe(200);
    expect(afterAHolder, 'served only once a holder had timed out').toBe(true);
    await Promise.all(holders.map(closed));
    // The idle queued socket got a slot too and is timed out like any silent handshake.
    await closed(idleQueued);
    await until('nothing left in the gateway', () => load().queued === 0 && load().handshakesInFlight === 0);
  }, 60_000);

  it('drops a connection that waited longer than queueWaitMs', async () => {
    const ts: TestServer = await startTestServer({}, { timeouts: { maxHandshakes: 1, queueWaitMs: 300, handshakeMs: 60_000 } });
    cleanups.push(() => ts.stop());
    const port = ts.server.address().port;
    const holder = await openIdle(port);
    cleanups.push(() => void holder.destroy());
    await until('the holder in flight', () => ts.server.gatewayLoad().handshakesInFlight === 1);
    const waiting = await openIdle(port);
    await closed(waiting);
    // Dropped for its wait, not served: the only slot is still held (the holder's deadline is a minute).
    expect(holder.destroyed).toBe(false);
    expect(ts.server.gatewayLoad()).toMatchObject({ handshakesInFlight: 1, queued: 0 });
  }, 60_000);
});

describe('gateway: fairness across sources (issue 17, item 7)', () => {
  it('idle connections from one address cannot take every handshake slot: another address is still served', async () => {
    const ts: TestServer = await startTestServer({}, { timeouts: { maxHandshakes: 4, maxHandshakesPerSource: 2, maxQueuedConnections: 1_000, queueWaitMs: 30_000, handshakeMs: 30_000 } });
    cleanups.push(() => ts.stop());
    const port = ts.server.address().port;
    // 20 stalled handshakes from 127.0.0.1 (one byte of a ClientHello each).
    const idle = await Promise.all(Array.from({ length: 20 }, () => openIdle(port)));
    cleanups.push(() => idle.forEach((h) => h.destroy()));
    // A health probe from another source address (127.0.0.2) gets its answer.
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpsGet({ host: '127.0.0.1', port, path: '/healthz', ca: ts.server.caCertPem, servername: '127.0.0.1', localAddress: '127.0.0.2', agent: false, timeout: 20_000 }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('timeout', () => req.destroy(new Error('no answer')));
      req.on('error', reject);
    });
    expect(status).toBe(200);
  }, 60_000);
});
