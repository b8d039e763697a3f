import { MeshlinkError } from '../errors.js';
import { createHash, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { z } from 'zod';
import type { Logger } from '../util/logger.js';
import type { CertificateAuthority, IssuedCertificate } from './ca.js';
import { authenticateClient } from './client-auth.js';
import { ENROLL_BODY_CAP, readJson, sendError, sendJson } from './http-json.js';
import { parseCsr, CSR_MAX_PEM_BYTES, type ParsedCsr } from './csr.js';
import type { TokenBuckets } from '../util/token-bucket.js';
import type { RevocationList } from './revocation.js';
import type { EnrollmentCommit, Store } from './store/store.js';
import type { EnrollmentEvents } from './feature.js';
import { findUsableToken, hashToken } from './tokens.js';

/**
 * POST /v1/enroll, GET /v1/ca, POST /v1/renew, and issueNodeCertificate (also used in-band for
 * `cert.renew`). Response shape for enroll and renew: {nodeId, certificate, caCertificate, notAfter}.
 */

/** How long after a token was redeemed a retry with the same CSR gets the same certificate again. */
export const ENROLL_REPLAY_WINDOW_MS = 15 * 60_000;

function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

const HOSTNAME_RE = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$/;

const enrollBodySchema = z
  .object({
    token: z.string().min(1).max(256),
    csr: z.string().min(1).max(CSR_MAX_PEM_BYTES),
    hostname: z.string().regex(HOSTNAME_RE, 'a host name (letters, digits, . - _; at most 253)').optional(),
    agentVersion: z.string().min(1).max(64).regex(/^[\x21-\x7e]+$/, 'printable ASCII').optional(),
  })
  .strict();

const renewBodySchema = z.object({ csr: z.string().min(1).max(CSR_MAX_PEM_BYTES) }).strict();

export interface CertificateResponse {
  nodeId: string;
  certificate: string;
  caCertificate: string;
  notAfter: string;
}

export interface EnrollmentDeps {
  store: Store;
  ca: CertificateAuthority;
  revocations: RevocationList;
  /** Failed requests per source address (a burst of N, then N a minute). */
  limiter: TokenBuckets;
  logger: Logger;
  certLifetimeMs: number;
  renewGraceMs: number;
}

export class EnrollmentService implements EnrollmentEvents {
  readonly #commitHooks = new Set<(commit: EnrollmentCommit) => void>();

  constructor(private readonly deps: EnrollmentDeps) {}

  onCommit(hook: (commit: EnrollmentCommit) => void): () => void {
    this.#commitHooks.add(hook);
    return () => this.#commitHooks.delete(hook);
  }

  private response(nodeId: string, issued: IssuedCertificate): CertificateResponse {
    return {
      nodeId,
      certificate: issued.pem,
      caCertificate: this.deps.ca.certPem,
      notAfter: new Date(issued.notAfter).toISOString(),
    };
  }

  /**
   * Issues and records a new certificate for a live node from a PEM CSR (key and signature checked).
   * `validity` overrides the configured lifetime: for tests and tools only.
   */
  async issueNodeCertificate(
    nodeId: string,
    csrPem: string,
    options: { validity?: { notBefore: Date; notAfter: Date } } = {},
  ): Promise<CertificateResponse & { serial: string }> {
    const csr = parseCsr(csrPem);
    const node = this.deps.store.getNode(nodeId);
    if (!node || node.removedAt !== null) throw new MeshlinkError('ML_ERR_CERT_REVOKED', `node ${nodeId} is unknown or removed`);
    const issued = await this.deps.ca.issueClientCertificate({
      nodeId,
      subjectSpkiDer: csr.spkiDer,
      keyType: csr.keyType,
      lifetimeMs: this.deps.certLifetimeMs,
      ...(options.validity ? { validity: options.validity } : {}),
    });
    // The node may have been removed while we signed; the FK and this check keep the store consistent.
    const again = this.deps.store.getNode(nodeId);
    if (!again || again.removedAt !== null) throw new MeshlinkError('ML_ERR_CERT_REVOKED', `node ${nodeId} was removed`);
    this.deps.store.insertCert(nodeId, { serial: issued.serial, notBefore: issued.notBefore, notAfter: issued.notAfter, pem: issued.pem });
    return { ...this.response(nodeId, issued), serial: issued.serial };
  }

  /**
   * A token is spent when the agent has its certificate, not when the server sent it: an answer lost
   * on the way (the enroll command killed, the connection dropped) would otherwise burn the token and
   * leave a node nobody holds. So a retry with the same token and the same CSR (the agent keeps its
   * key and CSR until it has committed the certificate: agent/enroll.ts) within ENROLL_REPLAY_WINDOW_MS
   * gets the very certificate issued the first time, for the same node: no second node, no new serial.
   * This gives nothing to whoever else holds the token: the certificate is only usable with the private
   * key of that CSR, which never left the agent. A different CSR is refused like a used token.
   */
  #replay(body: z.output<typeof enrollBodySchema>, now: number): CertificateResponse | null {
    const row = this.deps.store.getToken(hashToken(body.token));
    if (!row || row.consumedAt === null || !row.certSerial || !row.csrSha256) return null;
    if (now - row.consumedAt > ENROLL_REPLAY_WINDOW_MS || row.csrSha256 !== sha256Hex(body.csr)) return null;
    const cert = this.deps.store.getCert(row.certSerial);
    if (!cert || cert.revokedAt !== null) return null;
    const node = this.deps.store.getNode(cert.nodeId);
    if (!node || node.removedAt !== null) return null;
    this.deps.logger.info({ nodeId: cert.nodeId, certSerial: cert.serial }, 'enrollment retried with the same CSR: the same certificate again');
    return { nodeId: cert.nodeId, certificate: cert.pem, caCertificate: this.deps.ca.certPem, notAfter: new Date(cert.notAfter).toISOString() };
  }

  async enroll(body: z.output<typeof enrollBodySchema>): Promise<CertificateResponse> {
    const now = Date.now();
    const again = this.#replay(body, now);
    if (again) return again;
    const token = findUsableToken(this.deps.store, body.token, now);
    const csr: ParsedCsr = parseCsr(body.csr);
    const hostname = body.hostname ?? csr.commonName ?? csr.dnsNames[0];
    if (!hostname || !HOSTNAME_RE.test(hostname)) {
      throw new MeshlinkError('ML_ERR_BAD_REQUEST', 'no valid hostname: send "hostname" or put it in the CSR common name');
    }
    const existing = token.nodeId !== null;
    const nodeId = token.nodeId ?? randomUUID();
    if (existing) {
      const node = this.deps.store.getNode(nodeId);
      if (!node || node.removedAt !== null) throw new MeshlinkError('ML_ERR_TOKEN_INVALID', 'the token is bound to a node that was removed');
    }
    const issued = await this.deps.ca.issueClientCertificate({
      nodeId,
      subjectSpkiDer: csr.spkiDer,
      keyType: csr.keyType,
      lifetimeMs: this.deps.certLifetimeMs,
    });
    // Atomic: consume token + node + cert, and the features' rows (their commit hooks). Losing a race
    // here discards the signed certificate unseen.
    const runHooks = (commit: EnrollmentCommit): void => {
      for (const hook of this.#commitHooks) hook(commit);
    };
    const won = this.deps.store.commitEnrollment({
      tokenHash: hashToken(body.token),
      now: Date.now(),
      node: { id: nodeId, hostname, agentVersion: body.agentVersion ?? null, existing },
      cert: { serial: issued.serial, notBefore: issued.notBefore, notAfter: issued.notAfter, pem: issued.pem },
      csrSha256: sha256Hex(body.csr),
    }, runHooks);
    if (!won) throw new MeshlinkError('ML_ERR_TOKEN_INVALID', 'the enrollment token is unknown, already used, or expired');
    this.deps.logger.info({ nodeId, hostname, certSerial: issued.serial, reenroll: existing }, 'node enrolled');
    return this.response(nodeId, issued);
  }

  async renew(socket: TLSSocket, body: z.output<typeof renewBodySchema>): Promise<CertificateResponse> {
    const peer = authenticateClient(this.deps, socket, { expiredGraceMs: this.deps.renewGraceMs });
    const result = await this.issueNodeCertificate(peer.nodeId, body.csr);
    this.deps.logger.info({ nodeId: peer.nodeId, oldSerial: peer.certSerial, certSerial: result.serial }, 'certificate renewed over HTTPS');
    const { serial: _serial, ...response } = result;
    return response;
  }

  // --- HTTP handlers ---

  /** Wraps a failing-request-counting handler: 429 before any work when the address is over its budget. */
  private async limited(req: IncomingMessage, res: ServerResponse, work: () => Promise<unknown>): Promise<void> {
    const address = req.socket.remoteAddress ?? 'unknown';
    const wait = this.deps.limiter.retryAfterSec(address);
    if (wait > 0) {
      sendError(res, new MeshlinkError('ML_ERR_RATE_LIMITED', 'too many failed requests from this address', { retryAfterSec: wait }));
      return;
    }
    try {
      sendJson(res, 200, await work());
    } catch (err) {
      if (err instanceof MeshlinkError && err.status < 500) {
        this.deps.limiter.charge(address);
        this.deps.logger.info({ path: req.url, remoteAddress: address, code: err.code, reason: err.message }, 'request refused');
      } else {
        this.deps.logger.error({ path: req.url, err }, 'request failed');
      }
      sendError(res, err);
    }
  }

  handleEnroll(req: IncomingMessage, res: ServerResponse): Promise<void> {
    return this.limited(req, res, async () => this.enroll(await readJson(req, ENROLL_BODY_CAP, enrollBodySchema)));
  }

  handleRenew(req: IncomingMessage, res: ServerResponse): Promise<void> {
    return this.limited(req, res, async () => {
      const body = await readJson(req, ENROLL_BODY_CAP, renewBodySchema);
      return this.renew(req.socket as TLSSocket, body);
    });
  }

  handleCa(_req: IncomingMessage, res: ServerResponse): void {
    const pem = this.deps.ca.certPem;
    res.writeHead(200, { 'content-type': 'application/x-pem-file', 'content-length': String(Buffer.byteLength(pem)), 'cache-control': 'no-store' });
    res.end(pem);
  }
}
