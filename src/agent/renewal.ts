import { createPrivateKey } from 'node:crypto';
import type { Session } from '../protocol/session.js';
import type { Logger } from '../util/logger.js';
import { createCsrPem, generateAgentKeyPair, KEY_TYPES, type KeyType } from './csr.js';
import { renewViaHttps, verifyIssued } from './enroll.js';
import { saveRenewedCertificate, trustAfter, type Identity } from './identity.js';
import type { ProxyConfig } from './proxy.js';

/**
 * When to renew (docs/AGENT.md, "Renewal"): at whichever comes first of
 * - `renewBeforeMs` before NotAfter (default 7 days), and
 * - `lifetimeFraction` of the lifetime (default two thirds),
 * but never before half the lifetime, so that a short-lived certificate (shorter than the margin) is
 * not renewed the moment it arrives. For a 30-day certificate that is day 20; for a 60-second one,
 * second 30.
 *
 * The lifetime is counted from `start` = the later of NotBefore and the time the agent received the
 * certificate, because the server backdates NotBefore by a few minutes against clock skew.
 */
export interface RenewPolicy {
  renewBeforeMs: number;
  lifetimeFraction: number;
}

export const DEFAULT_RENEW_POLICY: RenewPolicy = Object.freeze({ renewBeforeMs: 7 * 86_400_000, lifetimeFraction: 2 / 3 });

export function renewalDueAt(start: number, notAfter: number, policy: RenewPolicy = DEFAULT_RENEW_POLICY): number {
  const lifetime = Math.max(0, notAfter - start);
  const byMargin = notAfter - policy.renewBeforeMs;
  const byFraction = start + lifetime * policy.lifetimeFraction;
  return Math.max(start + lifetime / 2, Math.min(byMargin, byFraction));
}

/**
 * In-band renewal (cert.renew on the live session): a fresh key of the same type, a CSR, the
 * server's answer verified against the pinned CA and our new key, then committed to the state dir
 * crash-safely (a new generation, one symlink switch). Returns the identity to connect with; the
 * runner then opens a new connection with it before closing the old one (make-before-break).
 */
export async function renewInBand(session: Session, identity: Identity): Promise<Identity> {
  const keys = await generateAgentKeyPair(keyTypeOf(identity.keyPem));
  const csr = createCsrPem(keys, { hostname: identity.hostname, sans: identity.sans });
  const res = await session.request('cert.renew', { csr }, { timeoutMs: IN_BAND_TIMEOUT_MS });
  // The answer came on this session, whose server certificate verified against our pinned CAs: its
  // bundle may add the next CA of a rotation (adoptCaBundle), which may have signed the new certificate.
  const trust = trustAfter(identity, res.caBundle, res.certificate);
  const verified = verifyIssued({ nodeId: identity.nodeId, certificate: res.certificate, caCertificate: res.caCertificate, notAfter: res.notAfter }, trust?.caPins ?? identity.caPins, keys.publicKeyPem);
  return saveRenewedCertificate(identity.stateDir, keys.privateKeyPem, verified.certPem, verified.caPem, trust);
}

/**
 * Renewal of a certificate that expired while the agent was offline: POST /v1/renew over mTLS
 * presenting the expired certificate, accepted by the server within its grace period (enroll.ts).
 * An EnrollError means the server refuses for good (re-enrollment is the way back).
 */
export function renewExpired(identity: Identity, logger: Logger, proxy?: ProxyConfig): Promise<Identity> {
  return renewViaHttps(identity, { logger, ...(proxy === undefined ? {} : { proxy }) });
}

/** How long until `identity` is due for renewal, counted from when this process got it. */
export function renewalDelayMs(identity: Identity, certReceivedAt: number, policy: RenewPolicy, now = Date.now()): number {
  const start = Math.max(identity.cert.notBefore.getTime(), certReceivedAt);
  return Math.max(0, renewalDueAt(start, identity.cert.notAfter.getTime(), policy) - now);
}

/** After a failed in-band renewal the old certificate still holds: retry in a minute, or at half the time left. */
export function renewalRetryMs(identity: Identity, now = Date.now()): number {
  const left = identity.cert.notAfter.getTime() - now;
  return Math.max(1_000, Math.min(60_000, left / 2));
}

const IN_BAND_TIMEOUT_MS = 60_000;

function keyTypeOf(keyPem: string): KeyType {
  const bits = createPrivateKey(keyPem).asymmetricKeyDetails?.modulusLength;
  const candidate = `rsa${bits ?? 2048}`;
  return (KEY_TYPES as readonly string[]).includes(candidate) ? (candidate as KeyType) : 'rsa2048';
}
