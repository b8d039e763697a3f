import { get as httpsGet } from 'node:https';
import { connect as tcpConnect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
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

describe('gateway: TLS handshakes in flight are capped, the rest wait in order', () => {
  it('queues connections beyond the cap, serves them when slots free up, drops beyond the queue', async () => {
    const ts: TestServer = await startTestServer({}, { timeouts: { maxHandshakes: 3, maxQueuedConnections: 2, queueWaitMs: 10_000, handshakeMs: 1_500 } });
    cleanups.push(() => ts.stop());
    const port = ts.server.address().port;
    // Three stalled handshakes hold every slot (a client that never finishes its ClientHello).
    const holders = await Promise.all([openIdle(port), openIdle(port), openIdle(port)]);
    cleanups.push(() => holders.forEach((h) => h.destroy()));
    await new Promise((r) => setTimeout(r, 100));
    // A real client waits in the queue: its ClientHello stays unread until a slot frees.
    const t0 = Date.now();
    const health = httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem });
    await new Promise((r) => setTimeout(r, 100));
    const idleQueued = await openIdle(port);
    cleanups.push(() => void idleQueued.destroy());
    await new Promise((r) => setTimeout(r, 100));
    // The queue (2) is full: the next connection is dropped at once.
    const extra = await openIdle(port);
    expect(await closedWithin(extra, 1_000)).toBe(true);
    expect(idleQueued.destroyed).toBe(false);
    // The holders time out (handshakeMs); the queued client gets its slot and is served.
    const res = await health;
    expect(res.status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_200); // it did wait for the holders' timeout
    for (const h of holders) expect(h.destroyed).toBe(true);
    // The idle queued socket got a slot too and is timed out like any silent handshake.
    expect(await closedWithin(idleQueued, 5_000)).toBe(true);
  }, 20_000);

  it('drops a connection that waited longer than queueWaitMs', async () => {
    const ts: TestServer = await startTestServer({}, { timeouts: { maxHandshakes: 1, queueWaitMs: 300, handshakeMs: 5_000 } });
    cleanups.push(() => ts.stop());
    const port = ts.server.address().port;
    const holder = await openIdle(port);
    cleanups.push(() => void holder.destroy());
    await new Promise((r) => setTimeout(r, 100));
    const waiting = await openIdle(port);
    const t0 = Date.now();
    expect(await closedWithin(waiting, 2_000)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(holder.destroyed).toBe(false); // the slot holder is still within its handshake timeout
  }, 10_000);
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
