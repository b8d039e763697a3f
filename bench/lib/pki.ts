import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface BenchPki {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  cleanup(): void;
}

/** The repository root: this file runs compiled (dist/bench/lib) and from source (bench/lib). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'certs', 'make-test-pki.sh'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find certs/make-test-pki.sh above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
}
const root = repoRoot();

/** A throwaway CA, server and client certificate (certs/make-test-pki.sh, needs openssl). */
export function makePki(dir?: string): BenchPki {
  const d = dir ?? mkdtempSync(join(tmpdir(), 'meshlink-bench-pki-'));
  if (!dir) execFileSync('bash', [join(root, 'certs/make-test-pki.sh'), d]);
  const read = (f: string): string => readFileSync(join(d, f), 'utf8');
  return {
    dir: d,
    ca: read('ca.pem'),
    serverCert: read('server.pem'),
    serverKey: read('server.key'),
    clientCert: read('client.pem'),
    clientKey: read('client.key'),
    cleanup: () => rmSync(d, { recursive: true, force: true }),
  };
}
