/**
 * A minimal, real HTTPS implementation of the server's enrollment contract for agent tests:
 * GET /v1/ca, POST /v1/enroll, POST /v1/renew (mTLS). Real TLS on 127.0.0.1 with a CA generated at
 * test time. It is deliberately small and independent of src/server so the agent is tested against
 * the contract, not against code it shares. `misbehave` switches it into the faults an agent must
 * survive (wrong key in the certificate, foreign CA, rate limiting, oversized bodies...).
 */
import { X509Certificate, randomBytes, verify } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import forge from 'node-forge';
import { createTestCa, issueCertificate, rsaKeyPair, type TestCa } from './pki.js';
import { spkiPinOf } from '../../../src/contract/ca-pin.js';

export type Misbehaviour =
  | 'none'
  | 'wrong-key' // certificate for a key that is not the agent's
  | 'foreign-ca' // certificate and CA from a CA that is not pinned
  | 'unsigned-by-ca' // returns our CA but a certificate signed by another CA
  | 'rate-limit' // 429 with Retry-After
  | 'server-error' // 500 with a non-JSON body
  | 'huge-response' // a 200 body far beyond the agent's cap
  | 'no-ca'; // 404 on GET /v1/ca (not a meshlink server)

export interface EnrollServerOptions {
  /** token → node id it re-enrolls (null: a fresh node id). */
  readonly tokens?: ReadonlyMap<string, string | null>;
  /** NotAfter of issued certificates relative to now (may be negative to issue expired ones). */
  readonly certLifetimeMs?: number;
  readonly renewGraceMs?: number;
  /** Extra server certificate SANs; defaults to localhost and 127.0.0.1. */
  readonly serverNames?: readonly string[];
  /** Use a server certificate from this CA instead of the served one (TLS trust failure case). */
  readonly serverCertCa?: TestCa;
}

export interface RecordedRequest {
  readonly method: string;
  readonly path: string;
  readonly body: string;
}

export interface EnrollServer {
  readonly url: string;
  readonly port: number;
  readonly ca: TestCa;
  readonly caPin: string;
  readonly requests: RecordedRequest[];
  misbehave: Misbehaviour;
  certLifetimeMs: number;
  addToken(token: string, nodeId?: string | null): void;
  close(): Promise<void>;
}

const MAX_BODY = 64 * 1024;

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function fail(res: ServerResponse, status: number, code: string, message: string, headers?: Record<string, string>): void {
  sendJson(res, status, { code, message }, headers);
}

async function readBody(req: IncomingMessage): Promise<string | null> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    total += (chunk as Buffer).length;
    if (total > MAX_BODY) return null;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Parses a PEM CSR and checks its self-signature with node:crypto over the CertificationRequestInfo DER. */
function checkCsr(csrPem: string): { publicKeyPem: string; commonName: string } | null {
  try {
    const der = forge.util.decode64(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''));
    const seq = forge.asn1.fromDer(der);
    const parts = seq.value as forge.asn1.Asn1[];
    const [info, , sigBits] = parts;
    if (info === undefined || sigBits === undefined) return null;
    const infoDer = Buffer.from(forge.asn1.toDer(info).getBytes(), 'binary');
    const signature = Buffer.from((sigBits.value as string).slice(1), 'binary'); // drop unused-bits byte
    const csr = forge.pki.certificationRequestFromPem(csrPem);
    if (csr.publicKey === null) return null;
    const publicKeyPem = forge.pki.publicKeyToPem(csr.publicKey);
    if (!verify('sha256', infoDer, publicKeyPem, signature)) return null;
    const cn = csr.subject.getField('CN') as { value: string } | null;
    return { publicKeyPem, commonName: cn?.value ?? '' };
  } catch {
    return null;
  }
}

export async function startEnrollServer(options: EnrollServerOptions = {}): Promise<EnrollServer> {
  const ca = await createTestCa('agent-test CA');
  const otherCa = await createTestCa('not the pinned CA');
  const serverKeys = await rsaKeyPair();
  const serverCertCa = options.serverCertCa ?? ca;
  const serverCert = issueCertificate(serverCertCa, {
    publicKeyPem: serverKeys.publicKeyPem,
    commonName: 'localhost',
    names: options.serverNames ?? ['localhost', '127.0.0.1'],
    usage: 'server',
  });
  const tokens = new Map(options.tokens ?? []);
  const consumed = new Set<string>();
  const renewGraceMs = options.renewGraceMs ?? 7 * 86_400_000;
  const caX509 = new X509Certificate(ca.certPem);

  const state: EnrollServer = {
    url: '',
    port: 0,
    ca,
    caPin: spkiPinOf(ca.certPem),
    requests: [],
    misbehave: 'none',
    certLifetimeMs: options.certLifetimeMs ?? 30 * 86_400_000,
    addToken(token, nodeId = null) {
      tokens.set(token, nodeId);
    },
    close: async () => {},
  };

  function issue(res: ServerResponse, nodeId: string, publicKeyPem: string): void {
    if (state.misbehave === 'huge-response') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`{"pad":"${'x'.repeat(600 * 1024)}"}`);
      return;
    }
    const notAfter = new Date(Date.now() + state.certLifetimeMs);
    const notBefore = new Date(Math.min(Date.now(), notAfter.getTime()) - 5 * 60_000);
    let issuer = ca;
    let key = publicKeyPem;
    let returnedCa = ca.certPem;
    if (state.misbehave === 'wrong-key') key = serverKeys.publicKeyPem;
    if (state.misbehave === 'foreign-ca') {
      issuer = otherCa;
      returnedCa = otherCa.certPem;
    }
    if (state.misbehave === 'unsigned-by-ca') issuer = otherCa;
    const certificate = issueCertificate(issuer, { publicKeyPem: key, commonName: nodeId, notBefore, notAfter, usage: 'client' });
    sendJson(res, 200, { nodeId, certificate, caCertificate: returnedCa, notAfter: notAfter.toISOString() });
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'https://x').pathname;
    const body = req.method === 'POST' ? await readBody(req) : '';
    state.requests.push({ method: req.method ?? '', path, body: body ?? '' });
    if (body === null) return fail(res, 413, 'ML_ERR_BODY_TOO_LARGE', 'request body too large');

    if (req.method === 'GET' && path === '/v1/ca' && state.misbehave !== 'no-ca') {
      res.writeHead(200, { 'content-type': 'application/x-pem-file' });
      res.end(ca.certPem);
      return;
    }
    if (req.method !== 'POST' || (path !== '/v1/enroll' && path !== '/v1/renew')) {
      return fail(res, 404, 'ML_ERR_NOT_FOUND', 'no such endpoint');
    }
    if (state.misbehave === 'rate-limit') return fail(res, 429, 'ML_ERR_RATE_LIMITED', 'too many failed attempts', { 'retry-after': '17' });
    if (state.misbehave === 'server-error') {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal trouble');
      return;
    }
    let json: { token?: unknown; csr?: unknown };
    try {
      json = JSON.parse(body) as typeof json;
    } catch {
      return fail(res, 400, 'ML_ERR_BAD_REQUEST', 'body is not JSON');
    }
    if (typeof json.csr !== 'string') return fail(res, 400, 'ML_ERR_BAD_REQUEST', 'csr missing');
    const csr = checkCsr(json.csr);
    if (csr === null) return fail(res, 400, 'ML_ERR_BAD_CSR', 'CSR does not parse or its signature is wrong');

    if (path === '/v1/enroll') {
      if (typeof json.token !== 'string' || !tokens.has(json.token) || consumed.has(json.token)) {
        return fail(res, 401, 'ML_ERR_TOKEN_INVALID', 'token unknown, used or expired');
      }
      consumed.add(json.token);
      const nodeId = tokens.get(json.token) ?? `node-${randomBytes(6).toString('hex')}`;
      return issue(res, nodeId, csr.publicKeyPem);
    }

    // /v1/renew: the client certificate authenticates; an expired one is fine within the grace.
    const peer = (req.socket as TLSSocket).getPeerCertificate(false);
    if (peer === null || peer.raw === undefined) return fail(res, 401, 'ML_ERR_NO_CLIENT_CERT', 'a client certificate is required');
    const client = new X509Certificate(peer.raw);
    if (!client.verify(caX509.publicKey)) return fail(res, 401, 'ML_ERR_CLIENT_CERT_UNTRUSTED', 'client certificate not issued by this CA');
    if (Date.parse(client.validTo) + renewGraceMs < Date.now()) {
      return fail(res, 403, 'ML_ERR_RENEW_GRACE_EXCEEDED', 'certificate expired beyond the renewal grace; re-enroll');
    }
    const nodeId = /CN=([^\n,]+)/.exec(client.subject)?.[1] ?? '';
    return issue(res, nodeId, csr.publicKeyPem);
  }

  const server: Server = createServer(
    {
      key: serverKeys.privateKeyPem,
      cert: serverCert + serverCertCa.certPem,
      requestCert: true,
      rejectUnauthorized: false,
      ca: [ca.certPem],
    },
    (req, res) => {
      handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) fail(res, 500, 'ML_ERR_INTERNAL', String(err));
      });
    },
  );
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return Object.assign(state, {
    url: `https://127.0.0.1:${port}`,
    port,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
}
