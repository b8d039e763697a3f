import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import { request, type Dispatcher } from 'undici';
import { z } from 'zod';
import type { Logger } from '../util/logger.js';
import { parseEnrollOptions, type EnrollOptionsInput } from './config.js';
import { createCsrPem, generateAgentKeyPair, KEY_TYPES, type KeyType } from './csr.js';
import { adoptCaBundle, assertStateDirUsable, isEnrolled, loadIdentity, saveEnrollment, saveRenewedCertificate, trustAfter, type Identity } from './identity.js';
import { assertPinned, parseCaCertificate, spkiDerOf, spkiPinOf } from '../contract/ca-pin.js';
import { codeFromWire, MeshlinkError, type ExitClass } from '../errors.js';
import { zodErrorText } from '../util/zod-error.js';
import { enrollEventKeysSchema } from '../contract/mesh-events.js';
import { writePinnedEventKeys } from './state/event-keys.js';
import { DIRECT, proxyFor, type ProxyConfig } from './proxy.js';
import { clearPendingEnrollment, loadPendingEnrollment, savePendingEnrollment } from './state/pending-enrollment.js';
import { proxyErrorOf, serverDispatcher } from './proxy-dial.js';

/**
 * The agent side of the server's HTTPS enrollment endpoints: GET /v1/ca, POST /v1/enroll and
 * POST /v1/renew. Trust is bootstrapped from the operator's CA pin: the CA is fetched without
 * verification, accepted only if its SPKI hash is pinned, and from then on it is the only trust root.
 */

/** Caps on what we read from the server; a well-behaved response is a few KiB. */
const MAX_CA_BYTES = 64 * 1024;
const MAX_RESPONSE_BYTES = 256 * 1024;
const MAX_SERVER_MESSAGE_CHARS = 500;

/**
 * The server refused an enrollment or renewal. A subclass because it carries what a code cannot: the
 * code is the server's own (any code, possibly one this build does not know), and `status` is the HTTP
 * status actually received, which decides the exit class (5xx: server unavailable, else refused).
 */
export class EnrollError extends MeshlinkError {
  /** HTTP status of the refusal. */
  override readonly status: number;
  override readonly exit: ExitClass;
  /** Seconds the server asked us to wait (429), if it said. */
  readonly retryAfterSeconds: number | undefined;
  constructor(code: string, status: number, message: string, retryAfterSeconds?: number) {
    super(codeFromWire(code), message, retryAfterSeconds === undefined ? {} : { retryAfterSec: retryAfterSeconds });
    this.name = 'EnrollError';
    this.status = status;
    this.exit = status >= 500 ? 'serverUnavailable' : 'enrollRefused';
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

const issuedResponseSchema = z.object({
  nodeId: z.string().min(1).max(128),
  certificate: z.string().min(1).max(32 * 1024),
  caCertificate: z.string().min(1).max(MAX_CA_BYTES),
  /** Every CA the server trusts (two during a CA rotation); absent from older servers. */
  caBundle: z.array(z.string().min(1).max(MAX_CA_BYTES)).min(1).max(4).optional(),
  notAfter: z.string().datetime({ offset: true }),
  /** Enrollment only: the mesh's event-signing keys, this agent's first trust (docs/MESH.md, "Trust model"). */
  eventKeys: enrollEventKeysSchema.optional(),
});
export type IssuedResponse = z.infer<typeof issuedResponseSchema>;

const serverErrorSchema = z.object({ code: z.string().regex(/^[A-Z][A-Z0-9_]{2,63}$/), message: z.string() });

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

interface HttpResult {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** OpenSSL / Node codes that mean "the peer is not who the trust anchor says". */
const TLS_TRUST_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

function errorCodeOf(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e !== null && typeof e === 'object' && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && !code.startsWith('UND_ERR_SOCKET')) return code;
    // AbortSignal.timeout() rejects with a DOMException whose numeric code says nothing useful.
    if ((e as { name?: unknown }).name === 'TimeoutError') return 'TIMEOUT';
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function transportError(err: unknown, url: string, proxy: ProxyConfig): MeshlinkError {
  if (err instanceof MeshlinkError) return err;
  const code = errorCodeOf(err) ?? 'unknown';
  if (TLS_TRUST_CODES.has(code)) {
    return new MeshlinkError(
      'ML_ERR_SERVER_TLS',
      `TLS verification of ${url} against the pinned CA failed (${code}): the server's certificate is not issued by that CA for this host name`,
      { cause: err },
    );
  }
  const endpoint = proxyFor(url, proxy);
  const viaProxy = endpoint === null ? null : proxyErrorOf(err, endpoint, new URL(url).host);
  if (viaProxy !== null) return viaProxy;
  const detail = err instanceof Error ? err.message : String(err);
  return new MeshlinkError('ML_ERR_SERVER_UNREACHABLE', `cannot reach ${url} (${code}): ${detail}`, { cause: err });
}

async function readCapped(body: Dispatcher.ResponseData['body'], maxBytes: number, url: string): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
    total += buf.length;
    if (total > maxBytes) {
      body.destroy();
      throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', `response from ${url} exceeds ${maxBytes} bytes`);
    }
    chunks.push(buf);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function httpCall(
  dispatcher: Dispatcher,
  url: string,
  init: { method: 'GET' | 'POST'; json?: unknown; maxBytes: number; timeoutMs: number; proxy: ProxyConfig },
): Promise<HttpResult> {
  try {
    const response = await request(url, {
      dispatcher,
      method: init.method,
      headers: init.json === undefined ? { accept: '*/*' } : { 'content-type': 'application/json', accept: 'application/json' },
      body: init.json === undefined ? undefined : JSON.stringify(init.json),
      headersTimeout: init.timeoutMs,
      bodyTimeout: init.timeoutMs,
      signal: AbortSignal.timeout(init.timeoutMs),
    });
    const declared = Number(response.headers['content-length']);
    if (Number.isFinite(declared) && declared > init.maxBytes) {
      response.body.destroy();
      throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', `response from ${url} announces ${declared} bytes, more than ${init.maxBytes}`);
    }
    const body = await readCapped(response.body, init.maxBytes, url);
    return { status: response.statusCode, headers: response.headers, body };
  } catch (err) {
    throw transportError(err, url, init.proxy);
  }
}

/** Server text is untrusted: strip control characters and cap the length before showing it. */
function sanitizeServerText(text: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return clean.length > MAX_SERVER_MESSAGE_CHARS ? `${clean.slice(0, MAX_SERVER_MESSAGE_CHARS)}…` : clean;
}

function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined) return undefined;
  if (/^\d{1,9}$/.test(raw.trim())) return Number(raw.trim());
  const at = Date.parse(raw);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

/** Maps a non-200 answer to EnrollError carrying the server's own code when it sent one. */
function refusal(result: HttpResult, what: string): EnrollError {
  let code = result.status >= 500 ? 'ML_ERR_SERVER' : 'ML_ERR_ENROLL_REFUSED';
  let message = `HTTP ${result.status}`;
  try {
    const parsed = serverErrorSchema.safeParse(JSON.parse(result.body));
    if (parsed.success) {
      code = parsed.data.code;
      message = sanitizeServerText(parsed.data.message);
    }
  } catch {
    // not JSON: keep the generic code, the status says enough
  }
  const retryAfter = result.status === 429 ? parseRetryAfter(result.headers['retry-after']) : undefined;
  const wait = retryAfter === undefined ? '' : ` (retry after ${retryAfter}s)`;
  return new EnrollError(code, result.status, `${what} refused by the server (HTTP ${result.status}): ${message}${wait}`, retryAfter);
}

function parseIssued(result: HttpResult, url: string): IssuedResponse {
  let json: unknown;
  try {
    json = JSON.parse(result.body);
  } catch (err) {
    throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', `response from ${url} is not JSON`, { cause: err });
  }
  const parsed = issuedResponseSchema.safeParse(json);
  if (!parsed.success) {
    throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', `response from ${url} is malformed (${zodErrorText(parsed.error, { root: 'body', all: true })})`);
  }
  return parsed.data;
}

// ---------------------------------------------------------------------------------------------
// Verification of what the server issued

export interface VerifiedIssue {
  readonly nodeId: string;
  readonly certPem: string;
  readonly caPem: string;
  readonly cert: X509Certificate;
}

/**
 * The certificate must be signed by the returned CA, that CA must be pinned, and the certificate's
 * key must be ours: otherwise a server (or whoever answered) could hand us an identity we cannot use
 * or one that chains to a CA we never agreed to.
 */
export function verifyIssued(issued: IssuedResponse, caPins: readonly string[], publicKeyPem: string): VerifiedIssue {
  let ca: X509Certificate;
  let cert: X509Certificate;
  try {
    ca = parseCaCertificate(issued.caCertificate);
    cert = new X509Certificate(issued.certificate);
  } catch (err) {
    throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', 'the issued certificate or CA certificate does not parse', { cause: err });
  }
  const caPin = spkiPinOf(ca);
  if (!caPins.includes(caPin)) {
    throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', `the CA returned with the certificate (pin ${caPin}) is not pinned`);
  }
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
    throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', 'the issued certificate is not signed by the returned CA');
  }
  const ours = createPublicKey(publicKeyPem).export({ type: 'spki', format: 'der' });
  if (!spkiDerOf(cert).equals(ours)) {
    throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', 'the issued certificate does not carry the public key we sent');
  }
  return { nodeId: issued.nodeId, certPem: issued.certificate, caPem: issued.caCertificate, cert };
}

// ---------------------------------------------------------------------------------------------
// Enrollment

export interface EnrollResult {
  readonly identity: Identity;
  /** The pin of the CA we accepted. */
  readonly caPin: string;
}

function defaultLogger(logger: Logger | undefined): Pick<Logger, 'info' | 'debug' | 'warn'> {
  const noop = (): void => {};
  return logger ?? { info: noop, debug: noop, warn: noop };
}

/** Fetches GET /v1/ca without trusting anything and checks its pin. Returns the CA PEM. */
export async function fetchPinnedCa(
  server: string,
  caPins: readonly string[],
  timeoutMs: number,
  proxy: ProxyConfig = DIRECT,
): Promise<{ caPem: string; caPin: string }> {
  // No trust yet: the pin check below is what makes the answer trustworthy.
  const untrusting = serverDispatcher(server, proxy, { rejectUnauthorized: false }, timeoutsOf(timeoutMs));
  const url = `${server}/v1/ca`;
  try {
    const result = await httpCall(untrusting, url, { method: 'GET', maxBytes: MAX_CA_BYTES, timeoutMs, proxy });
    if (result.status !== 200) {
      throw new MeshlinkError('ML_ERR_CA_CERT', `GET ${url} answered HTTP ${result.status} instead of the CA certificate; is this a meshlink server?`);
    }
    const caPem = result.body;
    const caPin = assertPinned(caPem, caPins);
    return { caPem, caPin };
  } finally {
    await untrusting.close().catch(() => {});
  }
}

function timeoutsOf(timeoutMs: number): { connectMs: number; headersMs: number; bodyMs: number } {
  return { connectMs: timeoutMs, headersMs: timeoutMs, bodyMs: timeoutMs };
}

/**
 * Whether `server` answers GET /healthz with a certificate of this agent's CA (the only trust root):
 * what the agent checks before it follows a new public URL the server announces in `welcome`.
 */
export async function reachesServer(server: string, caPem: string, proxy: ProxyConfig = DIRECT, timeoutMs = 10_000): Promise<boolean> {
  const dispatcher = pinnedDispatcher(server, proxy, caPem, timeoutMs);
  try {
    return (await httpCall(dispatcher, `${server}/healthz`, { method: 'GET', maxBytes: 4096, timeoutMs, proxy })).status === 200;
  } catch {
    return false;
  } finally {
    await dispatcher.close().catch(() => {});
  }
}

/** A dispatcher to `server` whose only trust root is `caPem`, optionally presenting a client certificate. */
function pinnedDispatcher(server: string, proxy: ProxyConfig, caPem: string, timeoutMs: number, client?: { certPem: string; keyPem: string }): Dispatcher {
  return serverDispatcher(
    server,
    proxy,
    { ca: caPem, rejectUnauthorized: true, ...(client === undefined ? {} : { cert: client.certPem, key: client.keyPem }) },
    timeoutsOf(timeoutMs),
  );
}

/**
 * Enrolls this host: checks the state dir is free (unless force), fetches and pins the CA, makes a
 * key and CSR, redeems the token, verifies what came back and commits it to the state dir. Nothing is
 * written unless every step succeeded.
 */
export async function enroll(
  input: EnrollOptionsInput,
  context: { logger?: Logger; agentVersion?: string; proxy?: ProxyConfig } = {},
): Promise<EnrollResult> {
  const options = parseEnrollOptions(input);
  const proxy = context.proxy ?? DIRECT;
  const log = defaultLogger(context.logger);

  // Before anything touches the network: a state dir we could not write would burn the token.
  await assertStateDirUsable(options.stateDir);
  if (!options.force && (await isEnrolled(options.stateDir))) {
    const existing = await loadIdentity(options.stateDir).catch(() => null);
    const who = existing === null ? '' : ` as node ${existing.nodeId}`;
    throw new MeshlinkError(
      'ML_ERR_ALREADY_ENROLLED',
      `${options.stateDir} is already enrolled${who}; pass --force to replace that identity`,
    );
  }

  // Key generation runs in the threadpool while we talk to the server.
  const keysPromise = generateAgentKeyPair(options.keyType);
  keysPromise.catch(() => {}); // awaited below; avoid an unhandled rejection if the CA fetch fails first

  const via = proxyFor(options.server, proxy);
  if (via !== null) log.info({ proxy: via.display, source: via.source }, 'reaching the server through a proxy');
  const { caPem, caPin } = await fetchPinnedCa(options.server, options.caPins, options.timeoutMs, proxy);
  log.info({ server: options.server, caPin }, 'server CA matches pin');

  // A retry of an enrollment whose answer was lost sends the same key's CSR (state/pending-enrollment.ts).
  const pending = await loadPendingEnrollment(options.stateDir, options.server, options.token);
  const keys = pending?.keys ?? (await keysPromise);
  const csr = pending?.csrPem ?? createCsrPem(keys, { hostname: options.hostname, sans: options.sans });
  if (pending === null) await savePendingEnrollment(options.stateDir, options.server, options.token, keys, csr);

  const trusted = pinnedDispatcher(options.server, proxy, caPem, options.timeoutMs);
  const url = `${options.server}/v1/enroll`;
  let result: HttpResult;
  try {
    result = await httpCall(trusted, url, {
      method: 'POST',
      json: {
        token: options.token,
        csr,
        hostname: options.hostname,
        ...(context.agentVersion === undefined ? {} : { agentVersion: context.agentVersion }),
      },
      maxBytes: MAX_RESPONSE_BYTES,
      timeoutMs: options.timeoutMs,
      proxy,
    });
  } catch (err) {
    // An answer too large is an answer, not a lost one: keep nothing. A transport failure keeps the pending key.
    if (err instanceof MeshlinkError && err.code === 'ML_ERR_ENROLL_RESPONSE') await clearPendingEnrollment(options.stateDir);
    throw err;
  } finally {
    await trusted.close().catch(() => {});
  }
  // An answer came: the pending key is only for a lost one. Nothing stays in the state dir after a refusal.
  let response: ReturnType<typeof parseIssued>;
  let issued: VerifiedIssue;
  try {
    if (result.status !== 200) throw refusal(result, 'enrollment');
    response = parseIssued(result, url);
    issued = verifyIssued(response, options.caPins, keys.publicKeyPem);
  } catch (err) {
    await clearPendingEnrollment(options.stateDir);
    throw err;
  }
  // The bundle (two CAs during a rotation) came over TLS verified with the pinned CA we fetched.
  const trust = adoptCaBundle({ caPins: options.caPins, caPem: issued.caPem }, response.caBundle, issued.certPem);
  const identity = await saveEnrollment(options.stateDir, {
    identity: {
      version: 1,
      nodeId: issued.nodeId,
      server: options.server,
      caPins: [...new Set([...options.caPins, ...(trust?.caPins ?? [])])],
      hostname: options.hostname,
      sans: [...options.sans],
      enrolledAt: new Date().toISOString(),
    },
    keyPem: keys.privateKeyPem,
    certPem: issued.certPem,
    caPem: trust?.caPem ?? issued.caPem,
  });
  // After the identity commits (saveEnrollment prepares the state dir). A crash in between leaves an
  // agent with no pinned key, which pins its first welcome's keys instead (docs/MESH.md).
  if (response.eventKeys) await writePinnedEventKeys(options.stateDir, issued.nodeId, response.eventKeys);
  await clearPendingEnrollment(options.stateDir);
  log.info({ nodeId: identity.nodeId, certSerial: identity.cert.serial, certNotAfter: identity.cert.notAfter.toISOString() }, 'enrolled');
  return { identity, caPin };
}

// ---------------------------------------------------------------------------------------------
// Renewal over HTTPS (the way back for a certificate that expired while the agent was offline)

function keyTypeOf(keyPem: string): KeyType {
  const bits = createPrivateKey(keyPem).asymmetricKeyDetails?.modulusLength;
  const candidate = `rsa${bits ?? 2048}`;
  return (KEY_TYPES as readonly string[]).includes(candidate) ? (candidate as KeyType) : 'rsa2048';
}

/**
 * POST /v1/renew over mTLS with the current (possibly recently expired) certificate and a CSR for a
 * fresh key; the result is committed with saveRenewedCertificate. The server decides whether the
 * certificate is still within its renewal grace; a refusal is an EnrollError with the server's code.
 */
export async function renewViaHttps(
  identity: Identity,
  options: { keyType?: KeyType; timeoutMs?: number; logger?: Logger; proxy?: ProxyConfig } = {},
): Promise<Identity> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const proxy = options.proxy ?? DIRECT;
  const log = defaultLogger(options.logger);
  const keys = await generateAgentKeyPair(options.keyType ?? keyTypeOf(identity.keyPem));
  const csr = createCsrPem(keys, { hostname: identity.hostname, sans: identity.sans });
  const dispatcher = pinnedDispatcher(identity.server, proxy, identity.caPem, timeoutMs, { certPem: identity.certPem, keyPem: identity.keyPem });
  const url = `${identity.server}/v1/renew`;
  let result: HttpResult;
  try {
    result = await httpCall(dispatcher, url, { method: 'POST', json: { csr }, maxBytes: MAX_RESPONSE_BYTES, timeoutMs, proxy });
  } finally {
    await dispatcher.close().catch(() => {});
  }
  if (result.status !== 200) throw refusal(result, 'renewal');
  const answer = parseIssued(result, url);
  // Over mTLS to a server our pinned CAs verified: its bundle may add a rotation's next CA.
  const trust = trustAfter(identity, answer.caBundle, answer.certificate);
  const issued = verifyIssued(answer, trust?.caPins ?? identity.caPins, keys.publicKeyPem);
  if (issued.nodeId !== identity.nodeId) {
    throw new MeshlinkError('ML_ERR_ENROLL_RESPONSE', `renewal returned node id ${issued.nodeId}, expected ${identity.nodeId}`);
  }
  const renewed = await saveRenewedCertificate(identity.stateDir, keys.privateKeyPem, issued.certPem, issued.caPem, trust);
  log.info({ nodeId: renewed.nodeId, certSerial: renewed.cert.serial, certNotAfter: renewed.cert.notAfter.toISOString() }, 'certificate renewed');
  return renewed;
}
