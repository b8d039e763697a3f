import { MeshlinkError } from '../errors.js';
import { createHash, randomUUID, X509Certificate } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { z } from 'zod';
import type { Logger } from '../util/logger.js';
import type { CertificateAuthority, IssuedCertificate } from './ca.js';
import { authenticateClient } from './client-auth.js';
import { ENROLL_BODY_CAP, readJson, sendError, sendJson } from './http-json.js';
import { parseCsr, CSR_MAX_PEM_BYTES, type ParsedCsr } from './csr.js';
import { TokenBuckets } from '../util/token-bucket.js';
import type { RevocationList } from './revocation.js';
import type { EnrollmentCommit, Store } from './store/store.js';
import type { Queryable } from './store/database.js';
import type { EnrollmentEvents } from './feature.js';
import { AuditLog } from './audit-log.js';
import { findUsableToken, hashToken, isUsableToken } from './tokens.js';

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
  /** The CA that signed `certificate`. */
  caCertificate: string;
  /** Every CA the server trusts (two during a CA rotation, ca-rotation.ts); the agent keeps them all. */
  caBundle: string[];
  notAfter: string;
}

/** What enrollment needs of the CA: the issuing one, and the trusted set (CaRing; a lone CA is its own set). */
export type IssuingCa = Pick<CertificateAuthority, 'certPem' | 'issueClientCertificate' | 'signed'> & {
  readonly trusted?: readonly CertificateAuthority[];
};

export interface EnrollmentDeps {
  store: Store;
  ca: IssuingCa;
  revocations: RevocationList;
  /** Failed requests per source address (a burst of N, then N a minute). */
  limiter: TokenBuckets;
  logger: Logger;
  certLifetimeMs: number;
  renewGraceMs: number;
  /**
   * Renewals per node (in-band `cert.renew` and POST /v1/renew together): a burst of this many, then
   * one per 60/N seconds (default RENEWALS_PER_MINUTE). Beyond it: ML_ERR_RATE_LIMITED.
   */
  renewalsPerMinute?: number;
  /** The client's address of a request's socket (behind a PROXY-protocol balancer: the header's); default its peer. */
  clientAddress?: (socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }) => string;
  /** Closes the live sockets of certificates a re-enrollment revoked (the connection registry: 4401). */
  onRevoked?: (serials: readonly string[]) => void;
}

/**
 * Renewals a node may make: 6 in a burst, then one every 10 s. An agent renews once per two thirds
 * of its certificate's lifetime (at least 60 s), retrying a failed renewal after a minute at the
 * soonest, so a well-behaved agent never meets the limit; one that asks 200 times in a second gets
 * 6 certificates and then 429s (docs/SERVER.md, "Certificates of a node").
 */
export const RENEWALS_PER_MINUTE = 6;

export class EnrollmentService implements EnrollmentEvents {
  readonly #commitHooks = new Set<(commit: EnrollmentCommit, tx: Queryable) => Promise<void>>();

  readonly #renewals: TokenBuckets;
  readonly #responseFields: Array<() => Record<string, unknown>> = [];

  constructor(private readonly deps: EnrollmentDeps) {
    this.#renewals = new TokenBuckets({ perMinute: deps.renewalsPerMinute ?? RENEWALS_PER_MINUTE });
  }

  /** The lifetime of certificates issued from now on (the server's SIGHUP reload). */
  setCertLifetime(ms: number): void {
    this.deps.certLifetimeMs = ms;
  }

  onCommit(hook: (commit: EnrollmentCommit, tx: Queryable) => Promise<void>): () => void {
    this.#commitHooks.add(hook);
    return () => this.#commitHooks.delete(hook);
  }

  addResponseFields(contributor: () => Record<string, unknown>): void {
    this.#responseFields.push(contributor);
  }

  /**
   * The trusted CA certificates, and the one among them that signed `certPem` (`issuerPem` when the
   * caller knows it: a certificate just issued; a stored one is parsed and checked).
   */
  #cas(certPem: string, issuerPem?: string): { caCertificate: string; caBundle: string[] } {
    const trusted = this.deps.ca.trusted;
    if (!trusted) return { caCertificate: issuerPem ?? this.deps.ca.certPem, caBundle: [this.deps.ca.certPem] };
    if (issuerPem !== undefined) return { caCertificate: issuerPem, caBundle: trusted.map((ca) => ca.certPem) };
    const cert = new X509Certificate(certPem);
    const signer = trusted.find((ca) => ca.signed(cert));
    return { caCertificate: signer?.certPem ?? this.deps.ca.certPem, caBundle: trusted.map((ca) => ca.certPem) };
  }

  private response(nodeId: string, issued: IssuedCertificate): CertificateResponse {
    return {
      nodeId,
      certificate: issued.pem,
      ...this.#cas(issued.pem, issued.issuerPem),
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
    const node = await this.deps.store.getNode(nodeId);
    if (!node || node.removedAt !== null) throw new MeshlinkError('ML_ERR_CERT_REVOKED', `node ${nodeId} is unknown or removed`);
    const issued = await this.deps.ca.issueClientCertificate({
      nodeId,
      subjectSpkiDer: csr.spkiDer,
      keyType: csr.keyType,
      lifetimeMs: this.deps.certLifetimeMs,
      ...(options.validity ? { validity: options.validity } : {}),
    });
    // The node may have been removed while we signed: the insert is refused then, and a removal racing
    // the insert revokes what it inserted (Store.insertCertIfLive).
    const stored = await this.deps.store.insertCertIfLive(nodeId, { serial: issued.serial, notBefore: issued.notBefore, notAfter: issued.notAfter, pem: issued.pem });
    if (!stored) throw new MeshlinkError('ML_ERR_CERT_REVOKED', `node ${nodeId} was removed`);
    return { ...this.response(nodeId, issued), serial: issued.serial };
  }

  /**
   * A renewal by a connected node (`cert.renew`) or one presenting its certificate (/v1/renew): the
   * node's renewal budget first, so a flood costs no signature.
   */
  renewNodeCertificate(nodeId: string, csrPem: string): Promise<CertificateResponse & { serial: string }> {
    if (!this.#renewals.take(nodeId)) {
      const retryAfterSec = this.#renewals.retryAfterSec(nodeId);
      return Promise.reject(new MeshlinkError('ML_ERR_RATE_LIMITED', `too many certificate renewals for node ${nodeId}; retry in ${retryAfterSec} s`, { retryAfterSec }));
    }
    return this.issueNodeCertificate(nodeId, csrPem);
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
  async #replay(body: z.output<typeof enrollBodySchema>, now: number): Promise<CertificateResponse | null> {
    const row = await this.deps.store.getToken(hashToken(body.token));
    if (!row || row.consumedAt === null || !row.certSerial || !row.csrSha256) return null;
    if (now - row.consumedAt > ENROLL_REPLAY_WINDOW_MS || row.csrSha256 !== sha256Hex(body.csr)) return null;
    const cert = await this.deps.store.getCert(row.certSerial);
    if (!cert || cert.revokedAt !== null) return null;
    const node = await this.deps.store.getNode(cert.nodeId);
    if (!node || node.removedAt !== null) return null;
    this.deps.logger.info({ nodeId: cert.nodeId, certSerial: cert.serial }, 'enrollment retried with the same CSR: the same certificate again');
    return { nodeId: cert.nodeId, certificate: cert.pem, ...this.#cas(cert.pem), notAfter: new Date(cert.notAfter).toISOString() };
  }

  /**
   * `remoteAddress`: the client's (behind a PROXY-protocol balancer, the header's), for the audit
   * record every new enrollment gets (`enroll`, the node, its host name, the address and the token id).
   */
  async enroll(body: z.output<typeof enrollBodySchema>, remoteAddress: string | null = null): Promise<CertificateResponse> {
    const now = Date.now();
    const again = await this.#replay(body, now);
    if (again) return this.#withResponseFields(again);
    const token = await findUsableToken(this.deps.store, body.token, now);
    const csr: ParsedCsr = parseCsr(body.csr);
    const hostname = body.hostname ?? csr.commonName ?? csr.dnsNames[0];
    if (!hostname || !HOSTNAME_RE.test(hostname)) {
      throw new MeshlinkError('ML_ERR_BAD_REQUEST', 'no valid hostname: send "hostname" or put it in the CSR common name');
    }
    const existing = token.nodeId !== null;
    const nodeId = token.nodeId ?? randomUUID();
    if (existing) {
      const node = await this.deps.store.getNode(nodeId);
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
    let superseded: string[] = [];
    const runHooks = async (commit: EnrollmentCommit, tx: Queryable): Promise<void> => {
      // Re-enrollment: the node's earlier certificates end with this commit (cert-succession.ts).
      if (existing) superseded = await this.deps.store.revokeCertsIssuedBefore(nodeId, issued.serial, commit.now, tx);
      for (const hook of this.#commitHooks) await hook(commit, tx);
      // In the enrollment's transaction: no enrollment without its record, no extra commit.
      await AuditLog.of(this.deps.store).record({
        ts: commit.now,
        actor: null,
        operation: 'enroll',
        nodeId,
        target: hostname,
        result: 'ok',
        details: { remoteAddress, tokenId: token.id, reenroll: existing, certSerial: issued.serial },
      }, tx);
    };
    const won = await this.deps.store.commitEnrollment({
      tokenHash: hashToken(body.token),
      now: Date.now(),
      node: { id: nodeId, hostname, agentVersion: body.agentVersion ?? null, existing },
      cert: { serial: issued.serial, notBefore: issued.notBefore, notAfter: issued.notAfter, pem: issued.pem },
      csrSha256: sha256Hex(body.csr),
    }, runHooks);
    if (!won) throw new MeshlinkError('ML_ERR_TOKEN_INVALID', 'the enrollment token is unknown, already used, or expired');
    if (superseded.length > 0) {
      this.deps.revocations.add(superseded);
      this.deps.onRevoked?.(superseded);
    }
    this.deps.logger.info({ nodeId, hostname, certSerial: issued.serial, reenroll: existing, revokedSerials: superseded, remoteAddress }, 'node enrolled');
    return this.#withResponseFields(this.response(nodeId, issued));
  }

  /** The features' fields of an enrollment answer (the mesh's event keys); a retried one carries them too. */
  #withResponseFields(response: CertificateResponse): CertificateResponse {
    // Only the enrollment carries them: a renewal changes no trust (docs/MESH.md, "Trust model").
    for (const contribute of this.#responseFields) response = { ...contribute(), ...response };
    return response;
  }

  async renew(socket: TLSSocket, body: z.output<typeof renewBodySchema>): Promise<CertificateResponse> {
    const peer = await authenticateClient(this.deps, socket, { expiredGraceMs: this.deps.renewGraceMs });
    const result = await this.renewNodeCertificate(peer.nodeId, body.csr);
    this.deps.logger.info({ nodeId: peer.nodeId, oldSerial: peer.certSerial, certSerial: result.serial }, 'certificate renewed over HTTPS');
    const { serial: _serial, ...response } = result;
    return response;
  }

  // --- HTTP handlers ---

  #clientAddress(req: IncomingMessage): string {
    return this.deps.clientAddress?.(req.socket) ?? req.socket.remoteAddress ?? 'unknown';
  }

  /**
   * Wraps a failing-request-counting handler. An address over its failure budget gets 429 before any
   * work, unless the handler takes `overBudget` (enrollment): then it is handed `retryAfterSec` and
   * decides with a cheap check, so that one bad neighbour behind a NAT does not lock everyone out.
   */
  private async limited(req: IncomingMessage, res: ServerResponse, work: (retryAfterSec: number) => Promise<unknown>, mayPassOverBudget = false): Promise<void> {
    const address = this.#clientAddress(req);
    const wait = this.deps.limiter.retryAfterSec(address);
    if (wait > 0 && !mayPassOverBudget) {
      sendError(res, rateLimited(wait));
      return;
    }
    try {
      sendJson(res, 200, await work(wait));
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

  /**
   * Failed enrollments are limited per source address, but an address over its budget is refused only
   * for tokens that are not usable: a valid token from it is still accepted. The check is a hash and an
   * index lookup on a capped body, done before any CSR parsing or signing, so a source over budget
   * costs the server no more than a 429 would; guessing a token (128 random bits) stays hopeless,
   * and every wrong guess is charged again and answered 429 (docs/SERVER.md, "Rate limits").
   */
  handleEnroll(req: IncomingMessage, res: ServerResponse): Promise<void> {
    return this.limited(
      req,
      res,
      async (retryAfterSec) => {
        const body = await readJson(req, ENROLL_BODY_CAP, enrollBodySchema);
        if (retryAfterSec > 0 && !(await isUsableToken(this.deps.store, body.token, Date.now()))) throw rateLimited(retryAfterSec);
        return this.enroll(body, this.#clientAddress(req));
      },
      true,
    );
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

function rateLimited(retryAfterSec: number): MeshlinkError {
  return new MeshlinkError('ML_ERR_RATE_LIMITED', 'too many failed requests from this address', { retryAfterSec });
}
