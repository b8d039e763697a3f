import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IdentityFile } from '../../../src/agent/identity.js';
import { spkiPinOf } from '../../../src/contract/ca-pin.js';
import { createTestCa, issueCertificate, rsaKeyPair, type TestCa } from './pki.js';

export interface CertPair {
  readonly keyPem: string;
  readonly certPem: string;
}

export async function makePair(ca: TestCa, nodeId: string, notAfter?: Date): Promise<CertPair> {
  const keys = await rsaKeyPair();
  return {
    keyPem: keys.privateKeyPem,
    certPem: issueCertificate(ca, { publicKeyPem: keys.publicKeyPem, commonName: nodeId, usage: 'client', ...(notAfter ? { notAfter } : {}) }),
  };
}

export function identityFor(ca: TestCa, nodeId = 'node-test-1'): IdentityFile {
  return {
    version: 1,
    nodeId,
    server: 'https://127.0.0.1:8443',
    caPins: [spkiPinOf(ca.certPem)],
    hostname: 'host-a.example',
    sans: ['10.0.0.5'],
    enrolledAt: new Date().toISOString(),
  };
}

export interface TempDirs {
  make(prefix?: string): string;
  cleanup(): void;
}

export function tempDirs(): TempDirs {
  const made: string[] = [];
  return {
    make(prefix = 'meshlink-agent-') {
      const dir = mkdtempSync(join(tmpdir(), prefix));
      made.push(dir);
      return dir;
    },
    cleanup() {
      for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
    },
  };
}

export { createTestCa };
