import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { createToken } from '../../src/server/tokens.js';
import { HAVE_OPENSSL, httpsRequest, makeCsr, makeOpensslCsr, opensslVerify, startTestServer, type TestServer } from './helpers.js';

describe('POST /v1/enroll over real TLS', () => {
  let ts: TestServer;
  beforeAll(async () => {
    ts = await startTestServer();
  });
  afterAll(async () => {
    await ts.stop();
  });

  const token = async () => (await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 })).token;
  const enroll = (body: unknown) => httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, body });

  it('GET /v1/ca returns the CA certificate whose pin the server reports', async () => {
    const res = await httpsRequest(`${ts.url}/v1/ca`, { ca: ts.server.caCertPem });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/x-pem-file');
    expect(new X509Certificate(res.body).fingerprint256).toBe(new X509Certificate(ts.server.caCertPem).fingerprint256);
    expect(ts.server.caPin).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  it('enrolls with a node:crypto+forge CSR; the certificate is for our key, CN = node id, clientAuth', async () => {
    const { csrPem, keyPem } = await makeCsr('web-1');
    const res = await enroll({ token: await token(), csr: csrPem, agentVersion: '0.1.0' });
    expect(res.status).toBe(200);
    const body = res.json<{ nodeId: string; certificate: string; caCertificate: string; notAfter: string }>();
    expect(body.caCertificate).toBe(ts.server.caCertPem);
    const cert = new X509Certificate(body.certificate);
    expect(cert.subject).toBe(`CN=${body.nodeId}`);
    expect(cert.checkPrivateKey((await import('node:crypto')).createPrivateKey(keyPem))).toBe(true);
    expect(cert.verify(new X509Certificate(body.caCertificate).publicKey)).toBe(true);
    expect(cert.keyUsage).toContain('1.3.6.1.5.5.7.3.2');
    expect(Date.parse(body.notAfter)).toBe(Date.parse(cert.validTo));
    // 30 days by default, NotBefore backdated ~5 minutes
    expect(Date.parse(cert.validTo) - Date.now()).toBeGreaterThan(29.9 * 86_400_000);
    expect(Date.now() - Date.parse(cert.validFrom)).toBeGreaterThan(4 * 60_000);
    expect(BigInt('0x' + cert.serialNumber) > 0n).toBe(true);
    const node = await ts.server.store.getNode(body.nodeId);
    expect(node?.hostname).toBe('web-1');
    expect(node?.agentVersion).toBe('0.1.0');
  });

  it.skipIf(!HAVE_OPENSSL)('enrolls with a CSR from `openssl req`, and `openssl verify` accepts the issued certificate', async () => {
    const { csrPem } = await makeOpensslCsr('db-7');
    const res = await enroll({ token: await token(), csr: csrPem });
    expect(res.status).toBe(200);
    const body = res.json<{ nodeId: string; certificate: string; caCertificate: string }>();
    expect((await ts.server.store.getNode(body.nodeId))?.hostname).toBe('db-7');
    expect(await opensslVerify(body.caCertificate, body.certificate)).toMatch(/: OK/);
  });

  it.skipIf(!HAVE_OPENSSL)('accepts an EC P-256 CSR from openssl and issues for that key', async () => {
    const { csrPem } = await makeOpensslCsr('ec-1', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']);
    const res = await enroll({ token: await token(), csr: csrPem });
    expect(res.status).toBe(200);
    const cert = new X509Certificate(res.json<{ certificate: string }>().certificate);
    expect(cert.publicKey.asymmetricKeyType).toBe('ec');
    expect(await opensslVerify(ts.server.caCertPem, cert.toString())).toMatch(/: OK/);
  });

  it('a used token is refused with 401 the second time', async () => {
    const t = await token();
    const first = await enroll({ token: t, csr: (await makeCsr('a')).csrPem });
    expect(first.status).toBe(200);
    const second = await enroll({ token: t, csr: (await makeCsr('b')).csrPem });
    expect(second.status).toBe(401);
    expect(second.json()).toMatchObject({ code: 'ML_ERR_TOKEN_INVALID' });
  });

  it('an expired token is refused with 401 and nothing is recorded', async () => {
    const { token: t } = await createToken(ts.server.store, { ttlMs: 1_000, now: Date.now() - 2_000 });
    const before = (await ts.server.store.listLiveNodes()).length;
    const res = await enroll({ token: t, csr: (await makeCsr('late')).csrPem });
    expect(res.status).toBe(401);
    expect(res.json()).toMatchObject({ code: 'ML_ERR_TOKEN_INVALID' });
    expect((await ts.server.store.listLiveNodes()).length).toBe(before);
  });

  it('an unknown token is 401', async () => {
    const res = await enroll({ token: 'A'.repeat(22), csr: (await makeCsr('x')).csrPem });
    expect(res.status).toBe(401);
  });

  it('20 concurrent redemptions of one token: exactly one 200, nineteen 401, one node', async () => {
    const t = await token();
    const csrs = await Promise.all(Array.from({ length: 20 }, (_, i) => makeCsr(`race-${i}`)));
    const before = (await ts.server.store.listLiveNodes()).length;
    const results = await Promise.all(csrs.map((c) => enroll({ token: t, csr: c.csrPem })));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s === 401)).toHaveLength(19);
    expect((await ts.server.store.listLiveNodes()).length).toBe(before + 1);
  });

  it('a CSR whose signature does not match its content is 400 ML_ERR_CSR_INVALID and does not burn the token', async () => {
    const { csrPem } = await makeCsr('tamper-me');
    const der = Buffer.from(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const at = der.indexOf(Buffer.from('tamper-me'));
    expect(at).toBeGreaterThan(0);
    der[at] = 'T'.charCodeAt(0); // change the subject, keep the structure valid
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    const t = await token();
    const res = await enroll({ token: t, csr: tampered });
    expect(res.status).toBe(400);
    expect(res.json()).toMatchObject({ code: 'ML_ERR_CSR_INVALID' });
    const ok = await enroll({ token: t, csr: csrPem });
    expect(ok.status).toBe(200);
  });

  it.skipIf(!HAVE_OPENSSL)('an RSA-1024 CSR is refused with ML_ERR_CSR_KEY', async () => {
    const { csrPem } = await makeOpensslCsr('weak', ['-newkey', 'rsa:1024']);
    const res = await enroll({ token: await token(), csr: csrPem });
    expect(res.status).toBe(400);
    expect(res.json()).toMatchObject({ code: 'ML_ERR_CSR_KEY' });
  });

  it('bad JSON and unknown fields are 400; a body over 64 KiB is 413', async () => {
    const bad = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, rawBody: '{nope' });
    expect(bad.status).toBe(400);
    expect(bad.json()).toMatchObject({ code: 'ML_ERR_BAD_REQUEST' });
    const extra = await enroll({ token: await token(), csr: 'x', admin: true });
    expect(extra.status).toBe(400);
    const big = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, rawBody: JSON.stringify({ token: 'x', csr: 'A'.repeat(70_000) }) });
    expect(big.status).toBe(413);
    expect(big.json()).toMatchObject({ code: 'ML_ERR_BODY_TOO_LARGE' });
  });

  it('unknown paths are 404 and wrong methods 405, as JSON', async () => {
    expect((await httpsRequest(`${ts.url}/nope`, { ca: ts.server.caCertPem })).status).toBe(404);
    const m = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem });
    expect(m.status).toBe(405);
    expect(m.json()).toMatchObject({ code: 'ML_ERR_METHOD' });
    expect((await httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem })).json()).toEqual({ status: 'ok' });
  });

  it('a re-enrollment token bound to a node id keeps the node id', async () => {
    const first = await enroll({ token: await token(), csr: (await makeCsr('keeper')).csrPem });
    const nodeId = first.json<{ nodeId: string }>().nodeId;
    const { token: t } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000, nodeId });
    const again = await enroll({ token: t, csr: (await makeCsr('keeper')).csrPem });
    expect(again.status).toBe(200);
    expect(again.json<{ nodeId: string }>().nodeId).toBe(nodeId);
  });
});

describe('failure rate limit', () => {
  let ts: TestServer;
  beforeAll(async () => {
    ts = await startTestServer({ enrollFailuresPerMinute: 10 });
  });
  afterAll(async () => {
    await ts.stop();
  });

  it('after 10 failures in a minute the address gets 429 with Retry-After for bad tokens, and a valid token is still accepted', async () => {
    const csr = (await makeCsr('rl')).csrPem;
    for (let i = 0; i < 10; i++) {
      const r = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, body: { token: 'B'.repeat(22), csr } });
      expect(r.status).toBe(401);
    }
    // Brute force stays limited: every further wrong guess from the address is 429, not 401.
    for (const guess of ['C'.repeat(22), 'D'.repeat(22), 'B'.repeat(22)]) {
      const limited = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, body: { token: guess, csr } });
      expect(limited.status).toBe(429);
      expect(limited.json()).toMatchObject({ code: 'ML_ERR_RATE_LIMITED' });
      const retryAfter = Number(limited.headers['retry-after']);
      expect(retryAfter).toBeGreaterThanOrEqual(1);
      expect(retryAfter).toBeLessThanOrEqual(60);
    }
    // Someone else behind the same address (one NAT) with a valid token enrolls.
    const good = (await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 })).token;
    const accepted = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, body: { token: good, csr } });
    expect(accepted.status).toBe(200);
    expect(accepted.json()).toHaveProperty('nodeId');
    // Spent now: the same token again is a failure like any other, so 429.
    expect((await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, body: { token: good, csr } })).status).toBe(429);
    // GET /v1/ca is not limited
    expect((await httpsRequest(`${ts.url}/v1/ca`, { ca: ts.server.caCertPem })).status).toBe(200);
  });
});
