import type { Logger } from '../util/logger.js';
import type { RevocationList } from './revocation.js';
import type { Store } from './store/store.js';

/**
 * A node has one live certificate at a time (docs/SERVER.md, "Certificates of a node"). Without this,
 * every certificate ever issued to a node stayed valid until its NotAfter, so whoever held a
 * superseded one (a copied state dir, an old backup) could keep a session and receive the operations
 * meant for the real agent.
 *
 * - Re-enrollment revokes every earlier certificate of the node, in the enrollment's transaction
 *   (enroll.ts), and their sockets close with 4401.
 * - Renewal overlaps: the predecessor stays valid until the first session on its successor opens
 *   (make-before-break needs the old session while the new one connects). That open revokes every
 *   certificate of the node issued before the successor, here; the session host then closes the
 *   node's sessions on other serials with ML_ERR_SESSION_REPLACED (4409). An agent that never
 *   connects with its successor keeps the predecessor until the predecessor's own NotAfter; a renewal
 *   whose answer was lost is thus never locked out.
 * - Expired certificates are pruned: once NotAfter plus the renewal grace has passed (no path accepts
 *   them any more), the row is deleted, except each node's newest (the listing shows it), and the
 *   serial leaves the in-memory revocation list.
 */

/** How often expired certificates are looked for (and once at start). */
export const CERT_PRUNE_INTERVAL_MS = 60 * 60_000;

export interface CertificateSuccessionDeps {
  store: Store;
  revocations: RevocationList;
  logger: Logger;
  /** The server's renewal grace: an expired certificate is kept this long for POST /v1/renew. */
  renewGraceMs: number;
}

export class CertificateSuccession {
  #timer: NodeJS.Timeout | null = null;

  constructor(private readonly deps: CertificateSuccessionDeps) {}

  /**
   * A session on `serial` opened: every certificate of the node issued before it is revoked now (in
   * the store and in the revocation list, so no new connection presents one). Returns those serials.
   */
  async sessionOpened(nodeId: string, serial: string, now = Date.now()): Promise<string[]> {
    const revoked = await this.deps.store.revokeCertsIssuedBefore(nodeId, serial, now);
    if (revoked.length > 0) {
      this.deps.revocations.add(revoked);
      this.deps.logger.info({ nodeId, certSerial: serial, revokedSerials: revoked }, 'superseded certificates revoked');
    }
    return revoked;
  }

  /** Deletes certificates past NotAfter + grace (in batches) and forgets their revocations. Returns how many. */
  async prune(now = Date.now()): Promise<number> {
    let total = 0;
    for (;;) {
      const serials = await this.deps.store.pruneExpiredCerts(now - this.deps.renewGraceMs);
      this.deps.revocations.remove(serials);
      total += serials.length;
      if (serials.length < 1_000) break;
    }
    if (total > 0) this.deps.logger.info({ pruned: total }, 'expired certificates pruned');
    return total;
  }

  /** Prunes now and then every CERT_PRUNE_INTERVAL_MS until stop(). */
  start(intervalMs = CERT_PRUNE_INTERVAL_MS): void {
    this.#safePrune();
    this.#timer = setInterval(() => this.#safePrune(), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  #pruning = false;

  #safePrune(): void {
    if (this.#pruning) return; // a slow store: the next tick prunes what this one leaves
    this.#pruning = true;
    this.prune()
      .catch((err: unknown) => this.deps.logger.error({ err }, 'pruning expired certificates failed'))
      .finally(() => (this.#pruning = false));
  }
}
