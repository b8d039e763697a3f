/**
 * Where the mux benches' receivers listen and their senders dial. Loopback by default; bench/wan.ts
 * runs the same benches between two network namespaces and sets BENCH_LISTEN (the receivers' bind
 * address) and BENCH_HOST (the address the sender dials).
 */
import { checkServerIdentity, type PeerCertificate } from 'node:tls';

export const BENCH_LISTEN = process.env.BENCH_LISTEN ?? '127.0.0.1';
export const BENCH_HOST = process.env.BENCH_HOST ?? '127.0.0.1';

/**
 * The test PKI's server certificate names 127.0.0.1 (certs/make-test-pki.sh). Reached at another
 * address, the chain is verified as always and the name is checked as that one.
 */
export function benchServerIdentity(_host: string, cert: PeerCertificate): Error | undefined {
  return checkServerIdentity('127.0.0.1', cert);
}
