import { randomBytes } from 'node:crypto';
import { connect as tcpConnect, createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { dialConnect, enrollNode, startTestServer } from './helpers.js';

/**
 * A server's shutdown with a connection in the middle of its TLS handshake (real TLS on loopback, the
 * real gateway). The case that hung: an agent switching to a renewed certificate dials its successor
 * connection just as the server is told to stop; the upgrade arrived after every session had been
 * closed, opened a new one, and the listener never finished closing (the CLI then exits 1 after its
 * 10-second hard deadline). Now the upgrade is refused with 503 ML_ERR_SHUTTING_DOWN and close() ends.
 */
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A TCP relay in front of the gateway that passes the client's first flight (its ClientHello) and
 * then holds everything else the client sends until release(): the server has answered the
 * ClientHello (so it holds the socket, past the first-byte gate and admission) and waits for the
 * client's certificate and Finished, which arrive only when the test says so.
 */
async function heldRelay(gatewayPort: number): Promise<{ port: number; serverAnswered: Promise<void>; release(): void }> {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let answered!: () => void;
  const serverAnswered = new Promise<void>((r) => (answered = r));
  const relay = createTcpServer((client: Socket) => {
    const upstream = tcpConnect(gatewayPort, '127.0.0.1');
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    upstream.once('data', () => answered());
    upstream.pipe(client);
    const held: Buffer[] = [];
    let first = true;
    let open = false;
    client.on('data', (chunk: Buffer) => {
      if (first || open) upstream.write(chunk);
      else held.push(chunk);
      first = false;
    });
    void released.then(() => {
      open = true;
      for (const c of held.splice(0)) upstream.write(c);
    });
    client.on('end', () => void released.then(() => upstream.end()));
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => relay.close(() => r())));
  return { port: (relay.address() as AddressInfo).port, serverAnswered, release };
}

describe('server shutdown with a handshake in flight', () => {
  it('refuses an upgrade that completes during the shutdown (503 ML_ERR_SHUTTING_DOWN), closes open sessions with 1001, and ends', async () => {
    const ts = await startTestServer({}, { features: [] });
    cleanups.push(() => ts.stop()); // idempotent: close() returns the same promise
    const node = await enrollNode(ts, 'shutdown-race');
    const tlsOptions = { ca: node.caPem, cert: node.certPem, key: node.keyPem };

    // One session open before the shutdown: it is closed with 1001.
    const open = await dialConnect(ts.url, tlsOptions);
    if (open.kind !== 'open') throw new Error(`connect failed: ${JSON.stringify(open)}`);
    const openClosed = new Promise<number>((r) => open.ws.once('close', (code) => r(code)));

    // One in its handshake: the upgrade request is queued behind the held client flight.
    const relay = await heldRelay(ts.server.address().port);
    const raw = tcpConnect(relay.port, '127.0.0.1');
    const tls = tlsConnect({ socket: raw, ...tlsOptions, host: '127.0.0.1' });
    cleanups.push(() => void tls.destroy());
    let response = '';
    tls.on('data', (c: Buffer) => (response += c.toString('latin1')));
    tls.on('error', () => {});
    const ended = new Promise<void>((r) => tls.once('close', () => r()));
    tls.write(
      'GET /v1/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n\r\n`,
    );
    await relay.serverAnswered;

    const closing = ts.server.close();
    relay.release();
    await closing;

    expect(await openClosed).toBe(1001);
    await ended;
    expect(response).toMatch(/^HTTP\/1\.1 503 /);
    const body = JSON.parse(response.slice(response.indexOf('\r\n\r\n') + 4)) as { code: string };
    expect(body.code).toBe('ML_ERR_SHUTTING_DOWN');
  }, 60_000);

  it('refuses a plain HTTPS request whose handshake completes during the shutdown (503 ML_ERR_SHUTTING_DOWN, Connection: close)', async () => {
    const ts = await startTestServer({}, { features: [] });
    cleanups.push(() => ts.stop());
    const relay = await heldRelay(ts.server.address().port);
    const tls = tlsConnect({ socket: tcpConnect(relay.port, '127.0.0.1'), ca: ts.server.caCertPem, host: '127.0.0.1' });
    cleanups.push(() => void tls.destroy());
    let response = '';
    tls.on('data', (c: Buffer) => (response += c.toString('latin1')));
    tls.on('error', () => {});
    const ended = new Promise<void>((r) => tls.once('close', () => r()));
    tls.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await relay.serverAnswered;
    const closing = ts.server.close();
    relay.release();
    await closing;
    await ended;
    expect(response).toMatch(/^HTTP\/1\.1 503 /);
    expect(response.toLowerCase()).toContain('connection: close');
    expect((JSON.parse(response.slice(response.indexOf('\r\n\r\n') + 4)) as { code: string }).code).toBe('ML_ERR_SHUTTING_DOWN');
  }, 60_000);
});
