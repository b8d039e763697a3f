import { execFileSync } from 'node:child_process';
import { X509Certificate, createHash, createPublicKey } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CertificateAuthority } from '../../src/server/ca.js';
import { parseCsr } from '../../src/server/csr.js';
import { HAVE_OPENSSL, makeCsr, makeOpensslCsr, opensslVerify, tempDir } from './helpers.js';

describe('internal CA', () => {
  it.skipIf(!HAVE_OPENSSL)('caPin equals sha256 of the SPKI DER as computed by openssl', async () => {
    const ca = await CertificateAuthority.create({ keyType: 'rsa2048' });
    const dir = await tempDir();
    try {
      await writeFile(join(dir.path, 'ca.pem'), ca.certPem);
      const pub = execFileSync('openssl', ['x509', '-in', join(dir.path, 'ca.pem'), '-noout', '-pubkey']);
      const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pub });
      expect(ca.pin).toBe('sha256:' + createHash('sha256').update(der).digest('hex'));
      const text = execFileSync('openssl', ['x509', '-in', join(dir.path, 'ca.pem'), '-noout', '-text'], { encoding: 'utf8' });
      expect(text).toMatch(/CA:TRUE/);
      expect(text).toMatch(/Certificate Sign/);
    } finally {
      await dir.cleanup();
    }
  });

  it.skipIf(!HAVE_OPENSSL)('server certificate: serverAuth, SANs localhost/127.0.0.1/::1/hostname/--san (IPs as IP type), verifies', async () => {
    const ca = await CertificateAuthority.create({ keyType: 'rsa2048' });
    const server = await ca.issueServerCertificate(['mesh.example.org', '10.9.8.7']);
    const x = new X509Certificate(server.certPem);
    expect(x.subjectAltName).toContain('DNS:localhost');
    expect(x.subjectAltName).toContain('IP Address:127.0.0.1');
    expect(x.subjectAltName).toContain('IP Address:0:0:0:0:0:0:0:1');
    expect(x.subjectAltName).toContain('DNS:mesh.example.org');
    expect(x.subjectAltName).toContain('IP Address:10.9.8.7');
    expect(x.checkHost('mesh.example.org')).toBe('mesh.example.org');
    expect(x.checkIP('10.9.8.7')).toBe('10.9.8.7');
    expect(await opensslVerify(ca.certPem, server.certPem, 'sslserver')).toMatch(/: OK/);
    expect(server.chainPem.startsWith(server.certPem) && server.chainPem.endsWith(ca.certPem)).toBe(true);
  });

  it('client certificate: 128-bit positive serials that differ, NotBefore backdated, configured lifetime', async () => {
    const ca = await CertificateAuthority.create({ keyType: 'rsa2048' });
    const csr = parseCsr((await makeCsr('h')).csrPem);
    const a = await ca.issueClientCertificate({ nodeId: 'n', subjectSpkiDer: csr.spkiDer, lifetimeMs: 3_600_000 });
    const b = await ca.issueClientCertificate({ nodeId: 'n', subjectSpkiDer: csr.spkiDer, lifetimeMs: 3_600_000 });
    expect(a.serial).not.toBe(b.serial);
    expect(a.serial.length).toBeGreaterThanOrEqual(30);
    expect(BigInt('0x' + a.serial) < 1n << 128n).toBe(true);
    expect(a.notAfter - Date.now()).toBeGreaterThan(3_500_000);
    expect(Date.now() - a.notBefore).toBeGreaterThanOrEqual(4 * 60_000);
    const x = new X509Certificate(a.pem);
    expect(x.publicKey.export({ type: 'spki', format: 'der' }).equals(csr.spkiDer)).toBe(true);
    expect(ca.signed(x)).toBe(true);
  });
});

describe('CSR checks', () => {
  it('reads CN and DNS SANs from a forge-built CSR', async () => {
    const c = parseCsr((await makeCsr('web-1', ['web-1', 'web-1.lan'])).csrPem);
    expect(c).toMatchObject({ commonName: 'web-1', dnsNames: ['web-1', 'web-1.lan'], keyType: 'rsa' });
  });

  it.skipIf(!HAVE_OPENSSL)('refuses EC P-384 with ML_ERR_CSR_KEY', async () => {
    const { csrPem } = await makeOpensslCsr('p384', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384']);
    expect(() => parseCsr(csrPem)).toThrow(expect.objectContaining({ code: 'ML_ERR_CSR_KEY' }));
  });

  it.skipIf(!HAVE_OPENSSL)('reads the key of RSA and EC P-256 CSRs as the SPKI bytes say; refuses small RSA and RSA-PSS keys', async () => {
    // parseCsr builds RSA and P-256 keys from their numbers (a JWK), not through OpenSSL's DER decoder:
    // the key must be the very one the SPKI carries.
    const cases: Array<[string, string[], 'rsa' | 'ec']> = [
      ['rsa', ['-newkey', 'rsa:2048'], 'rsa'],
      ['rsa3072', ['-newkey', 'rsa:3072'], 'rsa'],
      ['p256', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], 'ec'],
    ];
    for (const [name, args, keyType] of cases) {
      const { csrPem, keyPem } = await makeOpensslCsr(name, args);
      const c = parseCsr(csrPem);
      expect(c.keyType).toBe(keyType);
      expect(c.publicKey.export({ type: 'spki', format: 'der' })).toEqual(c.spkiDer);
      expect(c.spkiDer).toEqual(createPublicKey(keyPem).export({ type: 'spki', format: 'der' }));
    }
    const forged = parseCsr((await makeCsr('forge')).csrPem);
    expect(forged.publicKey.export({ type: 'spki', format: 'der' })).toEqual(forged.spkiDer);
    const keyError = expect.objectContaining({ code: 'ML_ERR_CSR_KEY' });
    expect(() => parseCsr(execCsr('small', ['-newkey', 'rsa:1024']))).toThrow(keyError);
    expect(() => parseCsr(execCsr('pss', ['-newkey', 'rsa-pss', '-pkeyopt', 'rsa_keygen_bits:2048']))).toThrow(keyError);
  });

  it('refuses garbage, two PEM blocks, a certificate instead of a CSR, and a truncated DER', async () => {
    const { csrPem } = await makeCsr('x');
    const invalid = expect.objectContaining({ code: 'ML_ERR_CSR_INVALID' });
    expect(() => parseCsr('hello')).toThrow(invalid);
    expect(() => parseCsr(csrPem + csrPem)).toThrow(invalid);
    const ca = await CertificateAuthority.create({ keyType: 'rsa2048' });
    expect(() => parseCsr(ca.certPem.replace(/CERTIFICATE/g, 'CERTIFICATE REQUEST'))).toThrow(invalid);
    const der = Buffer.from(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const cut = `-----BEGIN CERTIFICATE REQUEST-----\n${der.subarray(0, der.length - 10).toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    expect(() => parseCsr(cut)).toThrow(invalid);
  });
});

/** A CSR from the openssl CLI, its key thrown away: for keys parseCsr must refuse (1024-bit RSA, RSA-PSS). */
function execCsr(hostname: string, keyArgs: string[]): string {
  return execFileSync('openssl', ['req', '-new', ...keyArgs, '-nodes', '-subj', `/CN=${hostname}`, '-keyout', '/dev/null'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}
