import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import type WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/admin-api/client.js';
import * as api from '../../src/admin-api/routes.js';
import { createThrowawayCa } from '../../src/server/ca.js';
import type { AgentConnectionInfo } from '../../src/server/hooks.js';
import { removeNode } from '../../src/server/nodes.js';
import { dialConnect, enrollNode, httpsRequest, makeCsr, startTestServer, type TestServer } from './helpers.js';

function closeOf(ws: WebSocket): Promise<{ code: number; at: number }> {
  return new Promise((resolve) => ws.once('close', (code) => resolve({ code, at: Date.now() })));
}

describe('GET /v1/connect: client-certificate checks before the upgrade', () => {
  let ts: TestServer;
  const connections: AgentConnectionInfo[] = [];
  beforeAll(async () => {
    ts = await startTestServer({}, { hooks: { onAgentConnection: (_ws, info) => connections.push(info) } });
  });
  afterAll(async () => {
    await ts.stop();
  });

  it('a valid certificate upgrades and the hook gets node id, hostname, serial, NotAfter, address', async () => {
    const node = await enrollNode(ts, 'gw-ok');
    const out = await dialConnect(ts.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
    expect(out.kind).toBe('open');
    const info = connections.find((c) => c.nodeId === node.nodeId);
    expect(info).toMatchObject({ nodeId: node.nodeId, hostname: 'gw-ok', remoteAddress: '127.0.0.1' });
    const cert = new X509Certificate(node.certPem);
    expect(info?.certSerial).toBe(cert.serialNumber.toLowerCase().replace(/^0+/, ''));
    expect(info?.certNotAfter).toBe(Date.parse(cert.validTo));
    expect(ts.server.live.registry.hasConnection(node.nodeId)).toBe(true);
    // last_seen is written in batches, within a second (src/server/presence.ts).
    const seenBy = Date.now() + 3_000;
    while ((await ts.server.store.getNode(node.nodeId))?.lastSeen == null && Date.now() < seenBy) await new Promise((r) => setTimeout(r, 50));
    expect((await ts.server.store.getNode(node.nodeId))?.lastSeen).not.toBeNull();
    if (out.kind === 'open') {
      const closed = closeOf(out.ws);
      out.ws.close();
      await closed;
    }
  });

  it('no client certificate → 401 ML_ERR_CLIENT_CERT, no upgrade', async () => {
    const out = await dialConnect(ts.url, { ca: ts.server.caCertPem });
    expect(out).toMatchObject({ kind: 'refused', status: 401 });
    if (out.kind === 'refused') expect(JSON.parse(out.body)).toMatchObject({ code: 'ML_ERR_CLIENT_CERT' });
  });

  it('a certificate from another CA (same CN as a real node) → 401', async () => {
    const node = await enrollNode(ts, 'gw-victim');
    const other = await createThrowawayCa();
    const forged = await other.issueClient(node.nodeId);
    const out = await dialConnect(ts.url, { ca: ts.server.caCertPem, cert: forged.certPem, key: forged.keyPem });
    expect(out).toMatchObject({ kind: 'refused', status: 401 });
  });

  it('an expired certificate → 403', async () => {
    const node = await enrollNode(ts, 'gw-expired');
    const { csrPem, keyPem } = await makeCsr('gw-expired');
    const past = await ts.server.enrollment.issueNodeCertificate(node.nodeId, csrPem, {
      validity: { notBefore: new Date(Date.now() - 3 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000) },
    });
    const out = await dialConnect(ts.url, { ca: ts.server.caCertPem, cert: past.certificate, key: keyPem });
    expect(out).toMatchObject({ kind: 'refused', status: 403 });
    if (out.kind === 'refused') expect(JSON.parse(out.body)).toMatchObject({ code: 'ML_ERR_CERT_EXPIRED' });
  });

  it('a revoked certificate (node removed) → 403', async () => {
    const node = await enrollNode(ts, 'gw-revoked');
    await removeNode(ts.server.store, node.nodeId, ts.server.live);
    const out = await dialConnect(ts.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
    expect(out).toMatchObject({ kind: 'refused', status: 403 });
    if (out.kind === 'refused') expect(JSON.parse(out.body)).toMatchObject({ code: 'ML_ERR_CERT_REVOKED' });
  });

  it('a serial in the revocation list is refused with 403 even while its node is live', async () => {
    const node = await enrollNode(ts, 'gw-serial');
    const serial = new X509Certificate(node.certPem).serialNumber.toLowerCase().replace(/^0+/, '');
    ts.server.live.revocations.add([serial]);
    const out = await dialConnect(ts.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
    expect(out).toMatchObject({ kind: 'refused', status: 403 });
    if (out.kind === 'refused') expect(JSON.parse(out.body)).toMatchObject({ code: 'ML_ERR_CERT_REVOKED' });
    expect((await ts.server.store.getNode(node.nodeId))?.removedAt).toBeNull();
  });

  it('removal through the admin socket closes the live socket with 4401 (the time is printed, not asserted)', async () => {
    const node = await enrollNode(ts, 'gw-live');
    const out = await dialConnect(ts.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
    expect(out.kind).toBe('open');
    if (out.kind !== 'open') return;
    const closed = closeOf(out.ws);
    const t0 = Date.now();
    const result = await new AdminClient(ts.server.adminSocketPath).call(api.removeNode, { node: 'gw-live' });
    expect(result).toMatchObject({ id: node.nodeId, closedConnections: 1 });
    expect(result.revokedSerials).toHaveLength(1);
    const { code, at } = await closed;
    expect(code).toBe(4401);
    console.log(`removal → 4401 close: ${at - t0} ms`);
    expect(ts.server.live.registry.hasConnection(node.nodeId)).toBe(false);
  });

  it('a socket is closed with 4402 when its certificate reaches NotAfter', async () => {
    const node = await enrollNode(ts, 'gw-short');
    const { csrPem, keyPem } = await makeCsr('gw-short');
    const short = await ts.server.enrollment.issueNodeCertificate(node.nodeId, csrPem, {
      validity: { notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 2_500) },
    });
    const out = await dialConnect(ts.url, { ca: ts.server.caCertPem, cert: short.certificate, key: keyPem });
    expect(out.kind).toBe('open');
    if (out.kind !== 'open') return;
    const { code, at } = await closeOf(out.ws);
    expect(code).toBe(4402);
    expect(at).toBeGreaterThanOrEqual(Date.parse(short.notAfter));
  });

  it('POST /v1/renew: valid cert → new cert; expired within grace → new cert; beyond grace → 403; none → 401', async () => {
    const node = await enrollNode(ts, 'gw-renew');
    const renew = async (cert: string | undefined, key: string | undefined) =>
      httpsRequest(`${ts.url}/v1/renew`, { ca: ts.server.caCertPem, body: { csr: (await makeCsr('gw-renew')).csrPem }, ...(cert ? { cert, key } : {}) });

    const fresh = await renew(node.certPem, node.keyPem);
    expect(fresh.status).toBe(200);
    expect(fresh.json()).toMatchObject({ nodeId: node.nodeId });

    const { csrPem, keyPem } = await makeCsr('gw-renew');
    const recent = await ts.server.enrollment.issueNodeCertificate(node.nodeId, csrPem, {
      validity: { notBefore: new Date(Date.now() - 31 * 86_400_000), notAfter: new Date(Date.now() - 3_600_000) },
    });
    const inGrace = await renew(recent.certificate, keyPem);
    expect(inGrace.status).toBe(200);
    const renewed = new X509Certificate(inGrace.json<{ certificate: string }>().certificate);
    expect(Date.parse(renewed.validTo)).toBeGreaterThan(Date.now());

    const old = await ts.server.enrollment.issueNodeCertificate(node.nodeId, csrPem, {
      validity: { notBefore: new Date(Date.now() - 40 * 86_400_000), notAfter: new Date(Date.now() - 8 * 86_400_000) },
    });
    const tooOld = await renew(old.certificate, keyPem);
    expect(tooOld.status).toBe(403);
    expect(tooOld.json()).toMatchObject({ code: 'ML_ERR_CERT_EXPIRED' });

    expect((await renew(undefined, undefined)).status).toBe(401);

    const other = await createThrowawayCa();
    const forged = await other.issueClient(node.nodeId);
    expect((await renew(forged.certPem, forged.keyPem)).status).toBe(401);
  });
});

describe('unauthenticated sockets are dropped', () => {
  let ts: TestServer;
  beforeAll(async () => {
    ts = await startTestServer({}, { timeouts: { handshakeMs: 500, headersMs: 500, requestMs: 1_000, checkIntervalMs: 100 } });
  });
  afterAll(async () => {
    await ts.stop();
  });

  it('a TCP connection that stalls in its TLS handshake is closed after the handshake timeout', async () => {
    const t0 = Date.now();
    // One byte of a TLS record passes the first-byte deadline (client-hello.test.ts covers silence).
    const sock = netConnect(ts.server.address().port, '127.0.0.1', () => sock.write(Buffer.from([0x16])));
    sock.on('error', () => {});
    await new Promise<void>((resolve) => sock.once('close', () => resolve()));
    const elapsed = Date.now() - t0;
    // At least the 500 ms timeout (so it is the timeout, not a refusal); no upper bound, which only load decides.
    expect(elapsed).toBeGreaterThanOrEqual(400);
  }, 30_000);

  it('a TLS client that sends headers slowly (slowloris) is cut off after the headers timeout', async () => {
    const sock = tlsConnect({ host: '127.0.0.1', port: ts.server.address().port, ca: ts.server.caCertPem, servername: 'localhost' });
    sock.on('error', () => {});
    await new Promise<void>((resolve) => sock.once('secureConnect', () => resolve()));
    const t0 = Date.now();
    sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    const drip = setInterval(() => sock.write('X-a: b\r\n'), 100);
    await new Promise<void>((resolve) => sock.once('close', () => resolve()));
    clearInterval(drip);
    // The drip never ends, so only the headers timeout can close it; it must not be closed before that timeout.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
  }, 30_000);
});
