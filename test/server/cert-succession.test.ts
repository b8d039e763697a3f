import { X509Certificate } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { attachSession } from '../../src/net/ws-session.js';
import type { CloseInfo, RemoteError, Session } from '../../src/protocol/session.js';
import { CertificateSuccession } from '../../src/server/cert-succession.js';
import { RENEWALS_PER_MINUTE } from '../../src/server/enroll.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { normalizeSerial } from '../../src/server/x509.js';
import { createLogger } from '../../src/util/logger.js';
import { dialConnect, enrollNode, httpsRequest, makeCsr, startTestServer, type TestServer } from './helpers.js';

/**
 * One live certificate per node (issue 17 item 5; docs/SERVER.md, "Certificates of a node"), against
 * a real server: real TLS on loopback, a real SQLite store, agents as protocol sessions over /v1/connect.
 * Before: renewal and re-enrollment left every earlier certificate valid, a node could hold any number
 * of sessions (operations went to the newest), and cert.renew had no limit.
 */

interface Held {
  session: Session;
  closed: Promise<CloseInfo>;
  streams: number;
}

let ts: TestServer;
beforeEach(async () => {
  ts = await startTestServer();
});
afterEach(async () => {
  await ts.stop();
});

/** A session on /v1/connect with this certificate, after the handshake. */
async function connectWith(cert: string, key: string): Promise<Held> {
  const ws = await dialConnect(ts.url, { ca: ts.server.caCertPem, cert, key });
  if (ws.kind !== 'open') throw new Error(`connect refused: ${JSON.stringify(ws.kind === 'refused' ? ws : ws.error.message)}`);
  const session = attachSession(ws.ws, { role: 'agent' });
  const held: Held = { session, closed: new Promise((r) => session.once('close', r)), streams: 0 };
  session.on('stream', (stream) => {
    held.streams++;
    session.reject(stream, 'ML_ERR_UNSUPPORTED', 'test');
  });
  await session.handshake({ agentVersion: 'test' });
  return held;
}

const serialOf = (pem: string): string => normalizeSerial(new X509Certificate(pem).serialNumber);

async function renewOver(held: Held): Promise<{ certificate: string; keyPem: string }> {
  const { csrPem, keyPem } = await makeCsr('succ-node');
  const res = await held.session.request('cert.renew', { csr: csrPem }, { timeoutMs: 30_000 });
  return { certificate: res.certificate, keyPem };
}

describe('renewal: the predecessor lives until the successor connects', () => {
  it('the first session on the renewed certificate replaces the old one (4409), and the old certificate is refused from then on', async () => {
    const first = await enrollNode(ts, 'succ-node');
    const old = await connectWith(first.certPem, first.keyPem);
    const renewed = await renewOver(old);

    // The overlap: until the successor's first session, the predecessor still connects.
    const overlap = await dialConnect(ts.url, { ca: ts.server.caCertPem, cert: first.certPem, key: first.keyPem });
    expect(overlap.kind).toBe('open');
    if (overlap.kind === 'open') overlap.ws.terminate();

    const fresh = await connectWith(renewed.certificate, renewed.keyPem);
    const info = await old.closed;
    expect(info.code).toBe(4409);
    expect((info.error as RemoteError | undefined)?.remoteCode).toBe('ML_ERR_SESSION_REPLACED');

    // Operations go to the holder of the newest certificate only: the old session is gone.
    const current = ts.server.sessions!.current(first.nodeId);
    expect(current?.info.certSerial).toBe(serialOf(renewed.certificate));
    expect(ts.server.sessions!.snapshot().filter((a) => a.nodeId === first.nodeId)).toHaveLength(1);

    const again = await dialConnect(ts.url, { ca: ts.server.caCertPem, cert: first.certPem, key: first.keyPem });
    expect(again.kind).toBe('refused');
    if (again.kind === 'refused') {
      expect(again.status).toBe(403);
      expect(JSON.parse(again.body)).toMatchObject({ code: 'ML_ERR_CERT_REVOKED' });
    }
    expect((await ts.server.store.getCert(serialOf(first.certPem)))?.revokedAt).not.toBeNull();
    expect((await ts.server.store.getCert(serialOf(renewed.certificate)))?.revokedAt).toBeNull();
    expect(fresh.session.state).toBe('open');
    expect(old.streams).toBe(0);
    fresh.session.close();
  });

  it('a reconnect on the same certificate is not a replacement', async () => {
    const node = await enrollNode(ts, 'succ-node');
    const a = await connectWith(node.certPem, node.keyPem);
    const b = await connectWith(node.certPem, node.keyPem);
    expect(a.session.state).toBe('open');
    expect(b.session.state).toBe('open');
    expect((await ts.server.store.getCert(serialOf(node.certPem)))?.revokedAt).toBeNull();
    a.session.close();
    b.session.close();
  });
});

describe('re-enrollment', () => {
  it('revokes every earlier certificate of the node at once: its live session closes with 4401 and it cannot connect again', async () => {
    const first = await enrollNode(ts, 'succ-node');
    const old = await connectWith(first.certPem, first.keyPem);
    const renewed = await renewOver(old); // a second, unused certificate of the node

    const { token } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000, nodeId: first.nodeId });
    const { csrPem, keyPem } = await makeCsr('succ-node');
    const res = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, body: { token, csr: csrPem } });
    expect(res.status).toBe(200);
    const reenrolled = res.json<{ nodeId: string; certificate: string }>();
    expect(reenrolled.nodeId).toBe(first.nodeId);

    expect((await old.closed).code).toBe(4401);
    for (const [cert, key] of [[first.certPem, first.keyPem], [renewed.certificate, renewed.keyPem]] as const) {
      const dial = await dialConnect(ts.url, { ca: ts.server.caCertPem, cert, key });
      expect(dial.kind).toBe('refused');
      if (dial.kind === 'refused') expect(dial.status).toBe(403);
    }
    const fresh = await connectWith(reenrolled.certificate, keyPem);
    expect(ts.server.sessions!.current(first.nodeId)?.info.certSerial).toBe(serialOf(reenrolled.certificate));
    fresh.session.close();
  });
});

describe('cert.renew on a revoked session', () => {
  it('is refused with ML_ERR_CERT_REVOKED in the moment between the revocation and the close', async () => {
    const node = await enrollNode(ts, 'succ-node');
    const held = await connectWith(node.certPem, node.keyPem);
    const before = (await ts.server.store.fleetTotals()).certs;
    // The revocation is recorded; the socket is not closed yet (the registry waits for the node's notice).
    ts.server.live.revocations.add([serialOf(node.certPem)]);
    const { csrPem } = await makeCsr('succ-node');
    const refused = await held.session.request('cert.renew', { csr: csrPem }, { timeoutMs: 30_000 }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'ML_ERR_REMOTE', remoteCode: 'ML_ERR_CERT_REVOKED' });
    expect((await ts.server.store.fleetTotals()).certs).toBe(before);
  });
});

describe('cert.renew is limited per node', () => {
  it(`200 renewals in a burst: ${RENEWALS_PER_MINUTE} certificates, then ML_ERR_RATE_LIMITED with a retry time`, async () => {
    const node = await enrollNode(ts, 'succ-node');
    const held = await connectWith(node.certPem, node.keyPem);
    const { csrPem } = await makeCsr('succ-node');
    const before = (await ts.server.store.fleetTotals()).certs;
    const outcomes = await Promise.allSettled(
      Array.from({ length: 200 }, () => held.session.request('cert.renew', { csr: csrPem }, { timeoutMs: 60_000 })),
    );
    const ok = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason as unknown] : []));
    expect(ok).toHaveLength(RENEWALS_PER_MINUTE);
    expect(refused).toHaveLength(200 - RENEWALS_PER_MINUTE);
    for (const err of refused) expect(err).toMatchObject({ code: 'ML_ERR_REMOTE', remoteCode: 'ML_ERR_RATE_LIMITED' });
    expect((await ts.server.store.fleetTotals()).certs - before).toBe(RENEWALS_PER_MINUTE);
    expect(held.session.state).toBe('open');

    // The same budget covers POST /v1/renew.
    const https = await httpsRequest(`${ts.url}/v1/renew`, { ca: ts.server.caCertPem, cert: node.certPem, key: node.keyPem, body: { csr: csrPem } });
    expect(https.status).toBe(429);
    expect(JSON.parse(https.body)).toMatchObject({ code: 'ML_ERR_RATE_LIMITED' });
    expect(Number(https.headers['retry-after'])).toBeGreaterThan(0);
    held.session.close();
  });
});

describe('expired certificates are pruned', () => {
  it('past NotAfter + grace: rows deleted (the newest of each node kept), revocations forgotten, totals unchanged', async () => {
    const node = await enrollNode(ts, 'succ-node');
    const store = ts.server.store;
    const { csrPem } = await makeCsr('succ-node');
    const now = Date.now();
    const grace = ts.server.config.renewGraceMs;
    const longAgo = { notBefore: new Date(now - grace - 3 * 86_400_000), notAfter: new Date(now - grace - 86_400_000) };
    const expired = await ts.server.enrollment.issueNodeCertificate(node.nodeId, csrPem, { validity: longAgo });
    const inGrace = await ts.server.enrollment.issueNodeCertificate(node.nodeId, csrPem, { validity: { notBefore: new Date(now - 86_400_000), notAfter: new Date(now - 60_000) } });
    const newest = await ts.server.enrollment.issueNodeCertificate(node.nodeId, csrPem);
    const revocations = ts.server.live.revocations;
    await store.revokeCertsIssuedBefore(node.nodeId, inGrace.serial, now);
    revocations.add([expired.serial, serialOf(node.certPem)]);
    const totals = await store.fleetTotals();

    const succession = new CertificateSuccession({ store, revocations, logger: createLogger({ name: 't', level: 'silent' }), renewGraceMs: grace });
    expect(await succession.prune(now)).toBe(1);
    expect(await store.getCert(expired.serial)).toBeUndefined();
    expect(revocations.has(expired.serial)).toBe(false);
    expect(await store.getCert(inGrace.serial)).toBeDefined();
    expect(await store.getCert(newest.serial)).toBeDefined();
    expect(await store.getCert(serialOf(node.certPem))).toBeDefined(); // revoked, but not expired
    expect(await store.fleetTotals()).toEqual(totals);

    // A node's newest certificate stays even when it has expired (the listing shows it).
    expect(await succession.prune(now + 1_000 * 86_400_000)).toBe(2);
    expect(await store.getCert(newest.serial)).toBeDefined();
    expect(await store.fleetTotals()).toEqual(totals);
  });
});
