import { execFileSync, spawnSync } from 'node:child_process';
import { verify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCsrPem, generateAgentKeyPair, type AgentKeyPair } from '../../src/agent/csr.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

/** CertificationRequestInfo DER and signature bytes taken from the encoded CSR, not rebuilt. */
function splitCsr(pem: string): { infoDer: Buffer; signature: Buffer; sigOid: string } {
  const seq = forge.asn1.fromDer(forge.util.decode64(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '')));
  const [info, alg, sig] = seq.value as forge.asn1.Asn1[];
  const oid = forge.asn1.derToOid(((alg?.value as forge.asn1.Asn1[])[0]?.value as string) ?? '');
  return {
    infoDer: Buffer.from(forge.asn1.toDer(info!).getBytes(), 'binary'),
    signature: Buffer.from((sig!.value as string).slice(1), 'binary'),
    sigOid: oid,
  };
}

describe('createCsrPem', () => {
  let keys: AgentKeyPair;
  let dir: string;
  beforeAll(async () => {
    keys = await generateAgentKeyPair();
    dir = mkdtempSync(join(tmpdir(), 'meshlink-csr-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('generates RSA 2048 by default and exports PKCS#8', () => {
    expect(keys.privateKey.asymmetricKeyType).toBe('rsa');
    expect(keys.privateKey.asymmetricKeyDetails?.modulusLength).toBe(2048);
    expect(keys.privateKeyPem).toContain('-----BEGIN PRIVATE KEY-----');
  });

  it('is signed by node:crypto with sha256WithRSA and verifies with node:crypto', () => {
    const pem = createCsrPem(keys, { hostname: 'node-1.example', sans: [] });
    const { infoDer, signature, sigOid } = splitCsr(pem);
    expect(sigOid).toBe('1.2.840.113549.1.1.11');
    expect(verify('sha256', infoDer, keys.publicKeyPem, signature)).toBe(true);
    // A flipped bit in the signed bytes must fail: the check is real.
    infoDer.writeUInt8(infoDer.readUInt8(infoDer.length - 1) ^ 0x01, infoDer.length - 1);
    expect(verify('sha256', infoDer, keys.publicKeyPem, signature)).toBe(false);
  });

  it('carries CN = hostname and DNS/IP SANs for hostname and every extra name, de-duplicated', () => {
    const pem = createCsrPem(keys, { hostname: 'node-1.example', sans: ['10.1.2.3', 'alt.example', 'node-1.example', 'fd00::1'] });
    const csr = forge.pki.certificationRequestFromPem(pem);
    expect(csr.verify()).toBe(true);
    expect((csr.subject.getField('CN') as { value: string }).value).toBe('node-1.example');
    const ext = csr.getAttribute({ name: 'extensionRequest' }) as unknown as { extensions: { name: string; altNames: { type: number; value?: string; ip?: string }[] }[] };
    const san = ext.extensions.find((e) => e.name === 'subjectAltName');
    expect(san?.altNames.map((a) => (a.type === 7 ? `IP:${a.ip}` : `DNS:${a.value}`))).toEqual([
      'DNS:node-1.example',
      'IP:10.1.2.3',
      'DNS:alt.example',
      // forge renders IPv6 in full form
      expect.stringMatching(/^IP:fd00:(0:){0,6}:?0*1$|^IP:fd00::1$/),
    ]);
  });

  it.skipIf(!hasOpenssl)('passes `openssl req -verify` and openssl sees the SANs', () => {
    const file = join(dir, 'req.pem');
    writeFileSync(file, createCsrPem(keys, { hostname: 'node-1.example', sans: ['192.0.2.7', 'alt.example'] }));
    const result = spawnSync('openssl', ['req', '-in', file, '-verify', '-noout'], { encoding: 'utf8' });
    expect(result.status).toBe(0);
    expect(`${result.stdout}${result.stderr}`).toMatch(/verify OK/i);
    const text = execFileSync('openssl', ['req', '-in', file, '-noout', '-text'], { encoding: 'utf8' });
    expect(text).toContain('Subject: CN = node-1.example');
    expect(text).toMatch(/DNS:node-1\.example, IP Address:192\.0\.2\.7, DNS:alt\.example/);
  });

  it.skipIf(!hasOpenssl)('openssl rejects a CSR whose signature was tampered with', () => {
    const pem = createCsrPem(keys, { hostname: 'node-1.example', sans: [] });
    const der = Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    der.writeUInt8(der.readUInt8(der.length - 5) ^ 0xff, der.length - 5); // inside the signature bit string
    const file = join(dir, 'bad.pem');
    writeFileSync(file, `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE REQUEST-----\n`);
    const result = spawnSync('openssl', ['req', '-in', file, '-verify', '-noout'], { encoding: 'utf8' });
    expect(`${result.stdout}${result.stderr}`).not.toMatch(/verify OK/i);
  });
});
