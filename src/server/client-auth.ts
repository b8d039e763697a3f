import type { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { CertificateAuthority } from './ca.js';
import type { RevocationList } from './revocation.js';
import type { Store } from './store/store.js';
import { normalizeSerial, pemToDer } from './x509.js';
import { MeshlinkError } from '../errors.js';

/**
 * Decides whether the client certificate on a TLS socket identifies a live node. Used before the
 * /v1/connect upgrade (no grace) and by /v1/renew (grace for certificates that expired offline).
 *
 * The TLS server runs with `requestCert: true, rejectUnauthorized: false` so that enrollment works
 * without a certificate; the handshake still proves the peer holds the certificate's private key.
 * `socket.authorized` alone is not relied upon for the expired case: OpenSSL reports only one
 * verification error, so "expired" could hide "unknown issuer". Hence the explicit checks: signed by
 * this CA, byte-identical to a certificate this server issued, not revoked, node not removed, in time.
 */

export interface AuthenticatedPeer {
  nodeId: string;
  hostname: string;
  certSerial: string;
  certNotAfter: number;
  cert: X509Certificate;
}

export interface ClientAuthContext {
  store: Store;
  ca: Pick<CertificateAuthority, 'signed'>;
  revocations: RevocationList;
}

/** Verification errors that our own checks below cover; anything else from OpenSSL is a 401. */
const TOLERATED_TLS_ERRORS = new Set(['CERT_HAS_EXPIRED']);

export async function authenticateClient(
  ctx: ClientAuthContext,
  socket: TLSSocket,
  options: { now?: number; expiredGraceMs?: number } = {},
): Promise<AuthenticatedPeer> {
  const now = options.now ?? Date.now();
  const peer = socket.getPeerX509Certificate();
  if (!peer) throw new MeshlinkError('ML_ERR_CLIENT_CERT', 'a client certificate is required');
  // `authorized` means OpenSSL verified the chain to the gateway's only trusted CA, ours; checking the
  // signature again costs a verification per connect (a tenth of the connect path in a reconnect storm).
  // An unauthorized certificate is checked by hand: OpenSSL names one error only.
  if (!socket.authorized) {
    if (!ctx.ca.signed(peer)) throw new MeshlinkError('ML_ERR_CLIENT_CERT', 'the client certificate was not issued by this CA');
    const reason = String(socket.authorizationError ?? 'unknown');
    if (!TOLERATED_TLS_ERRORS.has(reason)) {
      throw new MeshlinkError('ML_ERR_CLIENT_CERT', `the client certificate did not verify (${reason})`);
    }
  }
  const serial = normalizeSerial(peer.serialNumber);
  const row = await ctx.store.getCert(serial);
  if (!row || !pemToDer(row.pem).equals(peer.raw)) {
    throw new MeshlinkError('ML_ERR_CLIENT_CERT', 'the client certificate is not one this server issued');
  }
  if (row.revokedAt !== null || ctx.revocations.has(serial)) {
    throw new MeshlinkError('ML_ERR_CERT_REVOKED', 'the client certificate is revoked');
  }
  const node = await ctx.store.getNode(row.nodeId);
  if (!node || node.removedAt !== null) throw new MeshlinkError('ML_ERR_CERT_REVOKED', 'the node was removed');
  if (now < row.notBefore) throw new MeshlinkError('ML_ERR_CERT_FORBIDDEN', 'the client certificate is not yet valid');
  const grace = options.expiredGraceMs ?? 0;
  if (now > row.notAfter + grace) {
    throw new MeshlinkError(
      'ML_ERR_CERT_EXPIRED',
      grace > 0 ? 'the client certificate expired longer ago than the renewal grace; re-enroll with a token bound to the node id' : 'the client certificate has expired',
    );
  }
  return { nodeId: node.id, hostname: node.hostname, certSerial: serial, certNotAfter: row.notAfter, cert: peer };
}
