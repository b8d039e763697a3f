import { execFileSync } from 'node:child_process';
import { createPublicKey, generateKeyPair, sign, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import WebSocket from 'ws';
import { createLogger } from '../../src/util/logger.js';
import { parseServerConfig, type ServerConfigInput } from '../../src/server/config.js';
import { startServer, type RunningServer, type StartServerOptions } from '../../src/server/server.js';

export const HAVE_OPENSSL = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

export async function tempDir(prefix = 'ml-srv-'): Promise<{ path: string; cleanup(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  // A server on this dir as its data dir keeps its key file beside it (`<dir>.key`, src/server/key-file.ts).
  return { path, cleanup: async () => { await rm(path, { recursive: true, force: true }); await rm(`${path}.key`, { force: true }); } };
}

export interface TestServer {
  server: RunningServer;
  dataDir: string;
  url: string;
  stop(): Promise<void>;
}

/** A real server on 127.0.0.1:0 with a real SQLite file in a temp dir (RSA-2048 CA to keep tests fast). */
export async function startTestServer(
  overrides: Partial<ServerConfigInput> = {},
  options: StartServerOptions & { dataDir?: string } = {},
): Promise<TestServer> {
  const dir = options.dataDir ? undefined : await tempDir();
  const dataDir = options.dataDir ?? dir!.path;
  const config = parseServerConfig({
    dataDir,
    listen: { host: '127.0.0.1', port: 0 },
    caKeyType: 'rsa2048',
    logLevel: 'silent',
    enrollFailuresPerMinute: 100_000,
    ...overrides,
  });
  const server = await startServer(config, { logger: createLogger({ name: 'test', level: 'silent' }), ...options });
  return {
    server,
    dataDir,
    url: `https://127.0.0.1:${server.address().port}`,
    async stop() {
      await server.close();
      await dir?.cleanup();
    },
  };
}

function generate(type: 'rsa' | 'ec'): Promise<KeyObject> {
  return new Promise((resolve, reject) => {
    const cb = (err: Error | null, _pub: KeyObject, priv: KeyObject) => (err ? reject(err) : resolve(priv));
    if (type === 'rsa') generateKeyPair('rsa', { modulusLength: 2048 }, cb);
    else generateKeyPair('ec', { namedCurve: 'prime256v1' }, cb);
  });
}

/**
 * An agent-style CSR: RSA key from node:crypto, CSR structure from forge, signature by node:crypto
 * over forge's CertificationRequestInfo DER.
 */
export async function makeCsr(hostname: string, sans: string[] = []): Promise<{ csrPem: string; keyPem: string }> {
  const key = await generate('rsa');
  const pubPem = createPublicKey(key).export({ type: 'spki', format: 'pem' }) as string;
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.publicKeyFromPem(pubPem);
  csr.setSubject([{ name: 'commonName', value: hostname }]);
  if (sans.length > 0) {
    csr.setAttributes([{ name: 'extensionRequest', extensions: [{ name: 'subjectAltName', altNames: sans.map((value) => ({ type: 2, value })) }] }]);
  }
  const pki = forge.pki as unknown as { getCertificationRequestInfo(c: forge.pki.CertificateSigningRequest): forge.asn1.Asn1 };
  const info = pki.getCertificationRequestInfo(csr);
  const der = Buffer.from(forge.asn1.toDer(info).getBytes(), 'binary');
  const signature = sign('sha256', der, key);
  const c = csr as unknown as { signatureOid: string; signature: string; certificationRequestInfo: forge.asn1.Asn1 };
  c.signatureOid = forge.pki.oids.sha256WithRSAEncryption!;
  c.signature = signature.toString('binary');
  c.certificationRequestInfo = info;
  return { csrPem: forge.pki.certificationRequestToPem(csr), keyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string };
}

/** A CSR made by the openssl CLI (`openssl req -new -newkey ... -nodes -subj /CN=host`). */
export async function makeOpensslCsr(hostname: string, keyArgs: string[] = ['-newkey', 'rsa:2048']): Promise<{ csrPem: string; keyPem: string }> {
  const dir = await tempDir('ml-csr-');
  try {
    execFileSync('openssl', ['req', '-new', ...keyArgs, '-nodes', '-subj', `/CN=${hostname}`, '-keyout', join(dir.path, 'k.pem'), '-out', join(dir.path, 'r.pem')], { stdio: 'ignore' });
    return { csrPem: await readFile(join(dir.path, 'r.pem'), 'utf8'), keyPem: await readFile(join(dir.path, 'k.pem'), 'utf8') };
  } finally {
    await dir.cleanup();
  }
}

export function opensslVerify(caPem: string, certPem: string, purpose = 'sslclient'): Promise<string> {
  return (async () => {
    const dir = await tempDir('ml-verify-');
    try {
      await writeFile(join(dir.path, 'ca.pem'), caPem);
      await writeFile(join(dir.path, 'cert.pem'), certPem);
      return execFileSync('openssl', ['verify', '-purpose', purpose, '-CAfile', join(dir.path, 'ca.pem'), join(dir.path, 'cert.pem')], { encoding: 'utf8' });
    } finally {
      await dir.cleanup();
    }
  })();
}

export interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json<T = Record<string, unknown>>(): T;
}

/** HTTPS request over a fresh connection (no keep-alive), verifying the server against `ca`. */
export function httpsRequest(
  url: string,
  options: { method?: string; body?: unknown; rawBody?: Buffer | string; ca: string; cert?: string; key?: string; timeoutMs?: number },
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const payload = options.rawBody ?? (options.body === undefined ? undefined : JSON.stringify(options.body));
    const req = request(
      url,
      {
        method: options.method ?? (payload === undefined ? 'GET' : 'POST'),
        ca: options.ca,
        ...(options.cert ? { cert: options.cert, key: options.key } : {}),
        agent: false,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: <T>() => JSON.parse(body) as T });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (options.timeoutMs !== undefined) req.setTimeout(options.timeoutMs, () => req.destroy(new Error(`no answer within ${options.timeoutMs} ms`)));
    req.end(payload);
  });
}

export type WsOutcome = { kind: 'open'; ws: WebSocket } | { kind: 'refused'; status: number; body: string } | { kind: 'error'; error: Error };

/** Dials /v1/connect with an optional client certificate; reports open, an HTTP refusal, or an error. */
export function dialConnect(url: string, tls: { ca: string; cert?: string; key?: string }): Promise<WsOutcome> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${url.replace('https:', 'wss:')}/v1/connect`, {
      ca: tls.ca,
      ...(tls.cert ? { cert: tls.cert, key: tls.key } : {}),
      perMessageDeflate: false,
      handshakeTimeout: 10_000,
    });
    ws.once('open', () => resolve({ kind: 'open', ws }));
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ kind: 'refused', status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    ws.once('error', (error) => resolve({ kind: 'error', error }));
  });
}

/** Enrolls through the real HTTP endpoint; returns the agent's key, cert and node id. */
export async function enrollNode(ts: TestServer, hostname: string): Promise<{ nodeId: string; certPem: string; keyPem: string; caPem: string }> {
  const { createEnrollmentToken } = await import('../../src/server/nodes.js');
  const { token } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 });
  const { csrPem, keyPem } = await makeCsr(hostname);
  const res = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, body: { token, csr: csrPem } });
  if (res.status !== 200) throw new Error(`enroll failed: ${res.status} ${res.body}`);
  const body = res.json<{ nodeId: string; certificate: string; caCertificate: string }>();
  return { nodeId: body.nodeId, certPem: body.certificate, keyPem, caPem: body.caCertificate };
}
