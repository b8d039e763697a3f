import { Agent, request } from 'node:https';
import { connect as tcpConnect, createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { ClientHelloGate, type HelloDetail, type HelloOutcome } from '../../src/server/client-hello.js';
import { proxyPeerFilter } from '../../src/server/client-address.js';
import type { AgentConnectionInfo } from '../../src/server/hooks.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { encodeProxyV2 } from '../../src/server/proxy-protocol.js';
import { makeCsr, startTestServer, type TestServer } from './helpers.js';

/**
 * The PROXY protocol v2 on the real gateway (`--proxy-protocol`): real TLS on loopback, real sockets.
 * The header's client address must be the one the enrollment limiter, the first-byte gate's per-source
 * cap and the agent's connection see; a connection without a valid header, or from a peer outside
 * --proxy-protocol-from, is closed and counted. (test/e2e/haproxy.test.ts runs a real haproxy.)
 */
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const header = (address: string, port = 40_000): Buffer => encodeProxyV2({ command: 'proxy', source: { address, port }, destination: { address: '127.0.0.1', port: 8443 } });

/**
 * A connection that has sent `first` (a PROXY header, or nothing). Connected and flushed before TLS
 * starts on it: TLS over a net.Socket writes to its handle, past a write still queued on the socket.
 */
async function rawTo(port: number, first: Buffer | null): Promise<Socket> {
  const raw = tcpConnect(port, '127.0.0.1');
  cleanups.push(() => void raw.destroy());
  await new Promise<void>((resolve, reject) => {
    raw.once('connect', () => resolve());
    raw.once('error', reject);
  });
  raw.on('error', () => {});
  if (first) await new Promise<void>((resolve, reject) => raw.write(first, (err) => (err ? reject(err) : resolve())));
  return raw;
}

function closed(sock: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (sock.destroyed || sock.closed) return resolve();
    sock.once('close', () => resolve());
  });
}

/** An HTTPS request whose connection starts with `first` (a PROXY header, or nothing). */
async function requestVia(ts: TestServer, first: Buffer | null, path: string, body?: unknown): Promise<{ status: number; body: string }> {
  const port = ts.server.address().port;
  const raw = await rawTo(port, first);
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    // An agent whose one connection is ours (a request's own createConnection is ignored when it has an agent).
    const agent = new Agent({ keepAlive: false });
    agent.createConnection = () => tlsConnect({ socket: raw, ca: ts.server.caCertPem, host: '127.0.0.1' });
    const options = {
      host: '127.0.0.1',
      port,
      path,
      method: payload === undefined ? 'GET' : 'POST',
      agent,
      headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
    };
    const req = request(options, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.setTimeout(20_000, () => req.destroy(new Error('no answer')));
    req.end(payload);
  });
}

async function withRefusals(ts: TestServer): Promise<string[]> {
  const refusals: string[] = [];
  cleanups.push(ts.server.live.registry.onRefused((r) => refusals.push(r)));
  return refusals;
}

async function waitFor(what: string, check: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('gateway with --proxy-protocol', () => {
  it('the header\'s client address is the agent\'s remote address; the enrollment limiter counts per client behind one balancer', async () => {
    const connections: AgentConnectionInfo[] = [];
    const ts = await startTestServer(
      { proxyProtocol: { from: ['127.0.0.1'] }, enrollFailuresPerMinute: 3 },
      { hooks: { onAgentConnection: (_ws, info) => void connections.push(info) } },
    );
    cleanups.push(() => ts.stop());
    const refusals = await withRefusals(ts);

    // Three failed enrollments from 198.51.100.7 spend its budget; 198.51.100.9, behind the same balancer, still has its own.
    for (let i = 0; i < 3; i++) expect((await requestVia(ts, header('198.51.100.7'), '/v1/enroll', { token: 'wrong', csr: 'x' })).status).toBeLessThan(429);
    expect((await requestVia(ts, header('198.51.100.7'), '/v1/enroll', { token: 'wrong', csr: 'x' })).status).toBe(429);
    const other = await requestVia(ts, header('198.51.100.9'), '/v1/enroll', { token: 'wrong', csr: 'x' });
    expect(other.status).not.toBe(429);
    expect(other.status).toBeGreaterThanOrEqual(400);

    // Enrollment and the agent connection through the header (IPv6 client this time).
    const { token } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 });
    const { csrPem, keyPem } = await makeCsr('proxied-agent');
    const enrolled = await requestVia(ts, header('2001:db8::77', 50_123), '/v1/enroll', { token, csr: csrPem });
    expect(enrolled.status).toBe(200);
    const cert = (JSON.parse(enrolled.body) as { certificate: string }).certificate;
    const port = ts.server.address().port;
    const raw = await rawTo(port, header('2001:db8::77', 50_124));
    const ws = new WebSocket(`wss://127.0.0.1:${port}/v1/connect`, {
      perMessageDeflate: false,
      createConnection: () => tlsConnect({ socket: raw, ca: ts.server.caCertPem, cert, key: keyPem, host: '127.0.0.1' }),
    });
    cleanups.push(() => ws.terminate());
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    await waitFor('the agent connection', () => connections.length === 1);
    expect(connections[0]!.remoteAddress).toBe('2001:db8::77');
    expect(refusals).toEqual([]);
  }, 60_000);

  it('off (the default), a header is not read: the TLS handshake sees its bytes and fails', async () => {
    const ts = await startTestServer({}, { features: [] });
    cleanups.push(() => ts.stop());
    const refusals = await withRefusals(ts);
    await expect(requestVia(ts, header('192.0.2.1'), '/healthz')).rejects.toThrow();
    await waitFor('the refusal', () => refusals.length === 1);
    expect(refusals).toEqual(['TLS_HANDSHAKE']);
    // Without one, the same request is served.
    expect((await requestVia(ts, null, '/healthz')).status).toBe(200);
  }, 30_000);

  it('a header and the ClientHello in one TCP segment: the handshake reads exactly what follows the header', async () => {
    const connections: AgentConnectionInfo[] = [];
    const ts = await startTestServer({ proxyProtocol: { from: ['127.0.0.1'] } }, { hooks: { onAgentConnection: (_ws, info) => void connections.push(info) } });
    cleanups.push(() => ts.stop());
    // A relay that writes the header and the client's first bytes (its ClientHello) with one write.
    const gatewayPort = ts.server.address().port;
    let coalesced = 0;
    const relayed: Socket[] = [];
    const relay = createTcpServer((client) => {
      const upstream = tcpConnect(gatewayPort, '127.0.0.1');
      relayed.push(client, upstream);
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      upstream.pipe(client);
      client.once('data', (first: Buffer) => {
        coalesced = first.length;
        upstream.write(Buffer.concat([header('198.51.100.200', 45_000), first]));
        client.pipe(upstream);
      });
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
    cleanups.push(
      () =>
        new Promise<void>((r) => {
          relay.close(() => r());
          for (const s of relayed) s.destroy();
        }),
    );
    const { token } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 });
    const { csrPem, keyPem } = await makeCsr('coalesced');
    const relayPort = (relay.address() as AddressInfo).port;
    const enroll = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const payload = JSON.stringify({ token, csr: csrPem });
      const req = request(
        { host: '127.0.0.1', port: relayPort, path: '/v1/enroll', method: 'POST', ca: ts.server.caCertPem, agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
    expect(enroll.status).toBe(200);
    expect(coalesced).toBeGreaterThan(100); // a whole ClientHello went with the header
    const cert = (JSON.parse(enroll.body) as { certificate: string }).certificate;
    const ws = new WebSocket(`wss://127.0.0.1:${relayPort}/v1/connect`, { perMessageDeflate: false, ca: ts.server.caCertPem, cert, key: keyPem });
    cleanups.push(() => ws.terminate());
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    await waitFor('the agent connection', () => connections.length === 1);
    expect(connections[0]!.remoteAddress).toBe('198.51.100.200');
  }, 30_000);

  it('a LOCAL header (the balancer\'s health check) is served as the balancer itself', async () => {
    const ts = await startTestServer({ proxyProtocol: { from: [] } }, { features: [] });
    cleanups.push(() => ts.stop());
    const local = encodeProxyV2({ command: 'local' });
    const res = await requestVia(ts, local, '/healthz');
    expect(res.status).toBe(200);
    expect(res.body).toContain('"status":"ok"');
  }, 30_000);

  it('without a valid header (a direct TLS client, a v1 header), from a peer outside the list, or with a header cut short: closed and counted', async () => {
    const ts = await startTestServer({ proxyProtocol: { from: ['127.0.0.0/8'] }, clientHelloTimeoutMs: 500 }, { features: [] });
    cleanups.push(() => ts.stop());
    const refusals = await withRefusals(ts);
    await expect(requestVia(ts, null, '/healthz')).rejects.toThrow();
    await expect(requestVia(ts, Buffer.from('PROXY TCP4 192.0.2.1 127.0.0.1 5555 8443\r\n'), '/healthz')).rejects.toThrow();
    // Half a header, then silence: the first-byte deadline covers the header.
    const half = await rawTo(ts.server.address().port, header('192.0.2.1').subarray(0, 20));
    await closed(half);
    await waitFor('three refusals', () => refusals.length === 3);
    expect(refusals).toEqual(['PROXY_HEADER_INVALID', 'PROXY_HEADER_INVALID', 'PROXY_HEADER_TIMEOUT']);

    const elsewhere = await startTestServer({ proxyProtocol: { from: ['10.0.0.0/8', '2001:db8::/32'] } }, { features: [] });
    cleanups.push(() => elsewhere.stop());
    const refusedThere = await withRefusals(elsewhere);
    await expect(requestVia(elsewhere, header('192.0.2.1'), '/healthz')).rejects.toThrow();
    expect(refusedThere).toEqual(['PROXY_PEER_REFUSED']);
  }, 30_000);

  it('the first-byte gate\'s per-source cap applies to each client behind the balancer, not to the balancer', async () => {
    // A listed balancer: its connections count against their clients only (any peer: against the peer until the header is in).
    const ts = await startTestServer({ proxyProtocol: { from: ['127.0.0.1'] }, clientHelloTimeoutMs: 60_000 }, { features: [], timeouts: { maxAwaitingHelloPerSource: 1 } });
    cleanups.push(() => ts.stop());
    const refusals = await withRefusals(ts);
    const port = ts.server.address().port;
    // Header, then no ClientHello: each waits for its first byte as its client.
    const a = await rawTo(port, header('192.0.2.1'));
    const b = await rawTo(port, header('192.0.2.2'));
    const c = await rawTo(port, header('192.0.2.1', 40_001));
    await closed(c);
    await waitFor('one refusal', () => refusals.length === 1);
    expect(refusals).toEqual(['ML_ERR_OVERLOADED']);
    expect(a.destroyed || b.destroyed).toBe(false);
    // The first client's connection still completes its handshake and is served.
    const tls: TLSSocket = tlsConnect({ socket: a, ca: ts.server.caCertPem, host: '127.0.0.1' });
    cleanups.push(() => void tls.destroy());
    await new Promise<void>((resolve, reject) => {
      tls.once('secureConnect', () => resolve());
      tls.once('error', reject);
    });
    expect(tls.authorized).toBe(true);
  }, 30_000);
});

describe('ClientHelloGate with the PROXY stage, over real sockets', () => {
  async function gateServer(): Promise<{ port: number; results: Array<{ outcome: HelloOutcome; detail: HelloDetail; rest: Promise<Buffer> }> }> {
    const gate = new ClientHelloGate({ timeoutMs: () => 10_000, maxPerSource: 100, maxTotal: 100, proxy: { allowed: proxyPeerFilter(['127.0.0.1']), countPeer: false } });
    const results: Array<{ outcome: HelloOutcome; detail: HelloDetail; rest: Promise<Buffer> }> = [];
    const server = createTcpServer({ pauseOnConnect: true }, (socket) => {
      socket.on('error', () => {});
      gate.wait(socket, (outcome, detail) => {
        // What the TLS server would read: everything after the header, to the client's end.
        const rest = new Promise<Buffer>((resolve) => {
          const chunks: Buffer[] = [];
          socket.on('data', (c: Buffer) => chunks.push(c));
          socket.on('end', () => resolve(Buffer.concat(chunks)));
          socket.on('close', () => resolve(Buffer.concat(chunks)));
          socket.resume();
        });
        results.push({ outcome, detail, rest });
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    cleanups.push(() => gate.close());
    return { port: (server.address() as AddressInfo).port, results };
  }

  it('consumes exactly the header, however the bytes are split on the wire', async () => {
    const { port, results } = await gateServer();
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 600 }), fc.array(fc.integer({ min: 1, max: 80 }), { minLength: 1, maxLength: 12 }), fc.uint8Array({ maxLength: 100 }), async (payload, cuts, tlv) => {
        const before = results.length;
        const head = encodeProxyV2({ command: 'proxy', source: { address: '203.0.113.5', port: 1234 }, destination: { address: '127.0.0.1', port } }, Buffer.from(tlv));
        const bytes = Buffer.concat([head, Buffer.from(payload)]);
        const client = tcpConnect(port, '127.0.0.1');
        client.setNoDelay(true);
        await new Promise<void>((r) => client.once('connect', () => r()));
        let at = 0;
        for (const cut of cuts) {
          if (at >= bytes.length) break;
          client.write(bytes.subarray(at, at + cut));
          at += cut;
          await new Promise((r) => setTimeout(r, 2));
        }
        client.end(bytes.subarray(at));
        await waitFor('the gate', () => results.length === before + 1);
        const { outcome, detail, rest } = results[before]!;
        expect(outcome).toBe('ready');
        expect(detail.client).toEqual({ address: '203.0.113.5', port: 1234 });
        expect((await rest).equals(Buffer.from(payload))).toBe(true);
        client.destroy();
      }),
      { numRuns: 40 },
    );
  }, 60_000);
});
