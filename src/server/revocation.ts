import type { Store } from './store/store.js';

/**
 * Revoked certificate serials, checked in memory on every /v1/connect (no CRL, no OCSP). Loaded from
 * the store at start and updated in the same call that writes a revocation, so it takes effect for
 * the next handshake; live sockets are closed by the connection registry.
 */
export class RevocationList {
  private readonly serials = new Set<string>();

  static async load(store: Store): Promise<RevocationList> {
    const list = new RevocationList();
    list.add(await store.revokedSerials());
    return list;
  }

  add(serials: Iterable<string>): void {
    for (const s of serials) this.serials.add(s);
  }

  /** Forgets serials whose certificates were pruned (past NotAfter + grace: refused by time alone). */
  remove(serials: Iterable<string>): void {
    for (const s of serials) this.serials.delete(s);
  }

  has(serial: string): boolean {
    return this.serials.has(serial);
  }

  get size(): number {
    return this.serials.size;
  }
}
