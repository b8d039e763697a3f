import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createTcpServer, connect, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshlinkError } from '../../src/errors.js';
import { parseProxyUrl } from '../../src/agent/proxy.js';
import { openTunnel, proxyErrorOf } from '../../src/agent/proxy-dial.js';

/**
 * proxy-dial.ts against an in-process CONNECT proxy whose answers the test chooses: the tunnel,
 * Proxy-Authorization, and each failure's code and wording (never the credentials).
 */

const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

async function listen(server: Server | ReturnType<typeof createTcpServer>): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  closers.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return (server.address() as AddressInfo).port;
}

/** A CONNECT proxy: `answer` decides; 200 pipes to the requested target on loopback. */
async function fakeProxy(answer: (req: IncomingMessage) => string | 'tunnel' | 'silent'): Promise<{ port: number; requests: IncomingMessage[] }> {
  const requests: IncomingMessage[] = [];
  const server = createHttpServer();
  server.on('connect', (req: IncomingMessage, client: Socket) => {
    requests.push(req);
    const a = answer(req);
    if (a === 'silent') return;
    if (a !== 'tunnel') {
      client.end(`HTTP/1.1 ${a}\r\ncontent-length: 0\r\n\r\n`);
      return;
    }
    const [, port] = /:(\d+)$/.exec(req.url ?? '') ?? [];
    const upstream = connect({ host: '127.0.0.1', port: Number(port) }, () => {
      client.write('HTTP/1.1 200 Connection established\r\n\r\n');
      upstream.pipe(client);
      client.pipe(upstream);
    });
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  return { port: await listen(server), requests };
}

async function echoServer(): Promise<number> {
  return listen(createTcpServer((s) => s.pipe(s)));
}

function roundTrip(socket: Socket, text: string): Promise<string> {
  return new Promise((resolve) => {
    socket.once('data', (d: Buffer) => resolve(d.toString()));
    socket.write(text);
  });
}

describe('openTunnel', () => {
  it('opens a CONNECT tunnel to host:port and hands back a socket that carries bytes both ways', async () => {
    const echo = await echoServer();
    const proxy = await fakeProxy(() => 'tunnel');
    const socket = await openTunnel(parseProxyUrl(`http://127.0.0.1:${proxy.port}`), '127.0.0.1', echo, 5_000);
    closers.push(async () => void socket.destroy());
    expect(await roundTrip(socket, 'ping')).toBe('ping');
    expect(proxy.requests[0]!.url).toBe(`127.0.0.1:${echo}`);
    expect(proxy.requests[0]!.headers['proxy-authorization']).toBeUndefined();
  });

  it('sends Basic Proxy-Authorization from the URL credentials (percent-decoded)', async () => {
    const echo = await echoServer();
    const proxy = await fakeProxy(() => 'tunnel');
    const socket = await openTunnel(parseProxyUrl(`http://me:p%40ss@127.0.0.1:${proxy.port}`), '127.0.0.1', echo, 5_000);
    socket.destroy();
    expect(proxy.requests[0]!.headers['proxy-authorization']).toBe(`Basic ${Buffer.from('me:p@ss').toString('base64')}`);
  });

  it('a refusal is ML_ERR_PROXY_REFUSED with the status line; IPv6 targets in brackets', async () => {
    const proxy = await fakeProxy(() => '403 Forbidden by policy');
    const err = await openTunnel(parseProxyUrl(`http://u:secret@127.0.0.1:${proxy.port}`), '::1', 8443, 5_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MeshlinkError);
    expect(err).toMatchObject({ code: 'ML_ERR_PROXY_REFUSED', message: `the proxy 127.0.0.1:${proxy.port} refused CONNECT [::1]:8443: 403 Forbidden by policy` });
    expect((err as Error).message).not.toContain('secret');
  });

  it('407 is ML_ERR_PROXY_AUTH, saying whether credentials were sent', async () => {
    const proxy = await fakeProxy(() => '407 Proxy Authentication Required');
    await expect(openTunnel(parseProxyUrl(`http://127.0.0.1:${proxy.port}`), '127.0.0.1', 1, 5_000)).rejects.toMatchObject({
      code: 'ML_ERR_PROXY_AUTH',
      message: expect.stringContaining('(407 Proxy Authentication Required): the proxy URL carries no credentials'),
    });
    const err = await openTunnel(parseProxyUrl(`http://u:secret@127.0.0.1:${proxy.port}`), '127.0.0.1', 1, 5_000).then(() => new Error('opened'), (e: unknown) => e as Error);
    expect(err).toMatchObject({ code: 'ML_ERR_PROXY_AUTH', message: expect.stringContaining('rejected the credentials') });
    expect(err.message).not.toContain('secret');
  });

  it('a closed proxy port is ML_ERR_PROXY_UNREACHABLE naming where the proxy came from', async () => {
    const port = await listen(createTcpServer());
    await closers.pop()!(); // closed again: nothing listens there now
    await expect(openTunnel(parseProxyUrl(`http://127.0.0.1:${port}`, 'HTTPS_PROXY'), '127.0.0.1', 1, 5_000)).rejects.toMatchObject({
      code: 'ML_ERR_PROXY_UNREACHABLE',
      message: `cannot reach the proxy 127.0.0.1:${port} (from HTTPS_PROXY): ECONNREFUSED`,
    });
  });

  it('a proxy that never answers the CONNECT is ML_ERR_PROXY_UNREACHABLE after the timeout', async () => {
    const proxy = await fakeProxy(() => 'silent');
    await expect(openTunnel(parseProxyUrl(`http://127.0.0.1:${proxy.port}`), '127.0.0.1', 1, 200)).rejects.toMatchObject({
      code: 'ML_ERR_PROXY_UNREACHABLE',
      message: expect.stringContaining('did not open a tunnel to 127.0.0.1:1 within 200 ms'),
    });
  });
});

describe('proxyErrorOf (undici failures through a ProxyAgent)', () => {
  const endpoint = parseProxyUrl('http://u:secret@proxy.corp:3128', 'ALL_PROXY');

  it('maps undici\'s refused tunnel by its status code', () => {
    const refused = Object.assign(new Error('Proxy response (403) !== 200 when HTTP Tunneling'), { code: 'UND_ERR_ABORTED' });
    expect(proxyErrorOf(refused, endpoint, 'mesh:8443')).toMatchObject({ code: 'ML_ERR_PROXY_REFUSED', message: 'the proxy proxy.corp:3128 refused CONNECT mesh:8443: 403' });
    const auth = new Error('Proxy response (407) !== 200 when HTTP Tunneling');
    expect(proxyErrorOf(new Error('fetch failed', { cause: auth }), endpoint, 'mesh:8443')).toMatchObject({ code: 'ML_ERR_PROXY_AUTH' });
  });

  it('maps connection failures to unreachable, leaves TLS and other errors to the caller', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    const err = proxyErrorOf(refused, endpoint, 'mesh:8443');
    expect(err).toMatchObject({ code: 'ML_ERR_PROXY_UNREACHABLE', message: 'cannot reach the proxy proxy.corp:3128 (from ALL_PROXY): ECONNREFUSED' });
    expect(proxyErrorOf(Object.assign(new Error('x'), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }), endpoint, 'mesh:8443')).toBeNull();
    expect(proxyErrorOf(Object.assign(new Error('reset'), { code: 'ECONNRESET' }), endpoint, 'mesh:8443')).toBeNull();
  });
});
