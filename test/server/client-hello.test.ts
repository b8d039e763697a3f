import { get as httpGet } from 'node:http';
import { connect as tcpConnect, createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { createObservabilityFeature } from '../../src/server/observability/index.js';
import { dialConnect, enrollNode, httpsRequest, startTestServer, type TestServer } from './helpers.js';

/**
 * The first-byte deadline (issue 17, item 7; src/server/client-hello.ts): a TCP connection takes a
 * handshake slot only once its ClientHello arrives, and one that sends nothing within
 * --client-hello-timeout is closed and counted. Real TLS on loopback, the real gateway.
 */
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A TLS client over `raw`, once its handshake is done (cleaned up after the test). */
async function tlsOver(raw: Socket, ca: string): Promise<TLSSocket> {
  const tls = tlsConnect({ socket: raw, ca, host: '127.0.0.1' });
  cleanups.push(() => void tls.destroy());
  await new Promise<void>((resolve, reject) => {
    tls.once('secureConnect', () => resolve());
    tls.once('error', reject);
  });
  return tls;
}

function openIdle(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = tcpConnect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

function closed(sock: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (sock.destroyed) return resolve();
    sock.once('close', () => resolve());
  });
}

function metricsText(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    httpGet({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('gateway: a connection takes a handshake slot only with its first byte', () => {
  it('idle sockets from one address neither delay that address\'s health probe nor an agent; they are closed and counted', async () => {
    let metricsPort = 0;
    // Two handshakes per source and a 60 s handshake timeout: before the deadline existed, two idle
    // sockets held this address's slots for a minute and the probe below (20 s) got no answer.
    const ts: TestServer = await startTestServer(
      { clientHelloTimeoutMs: 1_000 },
      {
        timeouts: { maxHandshakesPerSource: 2, handshakeMs: 60_000, queueWaitMs: 60_000 },
        features: [createObservabilityFeature({ listen: { host: '127.0.0.1', port: 0 }, onStarted: (h) => (metricsPort = h.address.port) })],
      },
    );
    cleanups.push(() => ts.stop());
    const node = await enrollNode(ts, 'hello-agent');
    const port = ts.server.address().port;
    const idle = await Promise.all(Array.from({ length: 20 }, () => openIdle(port)));
    cleanups.push(() => idle.forEach((s) => s.destroy()));
    const idleClosed = Promise.all(idle.map(closed));

    const health = await httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem, timeoutMs: 20_000 });
    expect(health.status).toBe(200);
    const agent = await dialConnect(ts.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
    expect(agent.kind).toBe('open');
    if (agent.kind === 'open') agent.ws.close();

    await idleClosed; // every silent socket is closed by the server (the test's own timeout bounds this)
    await waitFor('the timeouts in the metrics', async () => /^meshlink_gateway_client_hello_timeouts_total (\d+)$/m.exec(await metricsText(metricsPort))?.[1] === '20');
    const text = await metricsText(metricsPort);
    expect(text).toMatch(/^meshlink_handshakes_total\{result="refused",reason="CLIENT_HELLO_TIMEOUT"\} 20$/m);
    // At rest again: nothing waits at any stage (handshake-cap.test.ts watches the same figures move).
    for (const gauge of ['awaiting_first_byte', 'connections_queued', 'handshakes_in_flight']) expect(text).toMatch(new RegExp(`^meshlink_gateway_${gauge} 0$`, 'm'));
  }, 60_000);

  it('a slow but valid client that sends its ClientHello after 1 s still completes its handshake and is served', async () => {
    const ts: TestServer = await startTestServer({ clientHelloTimeoutMs: 3_000 }, { features: [] });
    cleanups.push(() => ts.stop());
    const raw = await openIdle(ts.server.address().port);
    cleanups.push(() => void raw.destroy());
    await new Promise((r) => setTimeout(r, 1_000));
    const tls = await tlsOver(raw, ts.server.caCertPem);
    expect(tls.authorized).toBe(true);
    tls.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
    let answer = '';
    tls.setEncoding('utf8');
    tls.on('data', (c: string) => (answer += c));
    await new Promise((r) => tls.once('end', r));
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer).toContain('"status":"ok"');
  }, 30_000);

  it('a ClientHello that arrives in pieces (one byte, then the rest) is not lost', async () => {
    const ts: TestServer = await startTestServer({}, { features: [] });
    cleanups.push(() => ts.stop());
    // A TCP relay in front of the gateway passes the client's first byte alone and the rest 300 ms later:
    // the server sees one byte, hands the socket on, and the TLS handshake must wait for the rest.
    // (Patching the client socket's write() would not do: TLS over a net.Socket writes to its handle.)
    const gatewayPort = ts.server.address().port;
    let split = false;
    const relay = createTcpServer((client) => {
      const upstream = tcpConnect(gatewayPort, '127.0.0.1');
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      upstream.pipe(client);
      client.once('data', (first: Buffer) => {
        client.pause();
        upstream.write(first.subarray(0, 1));
        split = first.length > 1;
        setTimeout(() => {
          upstream.write(first.subarray(1));
          client.pipe(upstream);
          client.resume();
        }, 300);
      });
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => relay.close(() => r())));
    const raw = tcpConnect((relay.address() as AddressInfo).port, '127.0.0.1');
    cleanups.push(() => void raw.destroy());
    const tls = await tlsOver(raw, ts.server.caCertPem);
    expect(tls.authorized).toBe(true);
    expect(split).toBe(true);
  }, 30_000);

  it('a connection that closes without a byte is not counted as a timeout and frees its place', async () => {
    let refusals: string[] = [];
    const ts: TestServer = await startTestServer({ clientHelloTimeoutMs: 60_000 }, { features: [], timeouts: { maxAwaitingHelloPerSource: 1 } });
    cleanups.push(() => ts.stop());
    const stop = ts.server.live.registry.onRefused((r) => refusals.push(r));
    cleanups.push(stop);
    const port = ts.server.address().port;
    const a = await openIdle(port);
    // The address's one place is taken: the next connection is closed at once.
    const b = await openIdle(port);
    await closed(b);
    expect(a.destroyed).toBe(false);
    expect(refusals).toEqual(['ML_ERR_OVERLOADED']);
    refusals = [];
    a.end();
    await closed(a);
    // Its place is free again: a real client is served.
    await waitFor('a served probe', async () => (await httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem, timeoutMs: 5_000 }).catch(() => ({ status: 0 }))).status === 200);
    expect(refusals).toEqual([]);
  }, 30_000);
});
