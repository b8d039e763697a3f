import { makePki, type BenchPki } from '../../bench/lib/pki.js';

export type TestPki = BenchPki;

/** A throwaway CA, server and client certificate from certs/make-test-pki.sh (requires openssl). */
export function makeTestPki(): TestPki {
  return makePki();
}
