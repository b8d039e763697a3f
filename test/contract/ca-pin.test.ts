import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertPinned, parseCaCertificate, parseCaPin, spkiPinOf } from '../../src/contract/ca-pin.js';
import { createTestCa, issueCertificate, rsaKeyPair, type TestCa } from '../agent/helpers/pki.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
const HEX64 = 'ab'.repeat(32);

describe('parseCaPin', () => {
  it('accepts the canonical form', () => {
    expect(parseCaPin(`sha256:${HEX64}`)).toBe(`sha256:${HEX64}`);
  });

  it.each([
    ['upper-case hex', `sha256:${HEX64.toUpperCase()}`],
    ['missing prefix', HEX64],
    ['other algorithm', `sha1:${HEX64}`],
    ['too short', `sha256:${HEX64.slice(2)}`],
    ['too long', `sha256:${HEX64}00`],
    ['non-hex', `sha256:${'zz'.repeat(32)}`],
    ['trailing space', `sha256:${HEX64} `],
    ['empty', ''],
  ])('rejects %s with ML_ERR_PIN_FORMAT', (_name, raw) => {
    expect(() => parseCaPin(raw)).toThrowError(expect.objectContaining({ code: 'ML_ERR_PIN_FORMAT' }) as Error);
  });
});

describe('spkiPinOf', () => {
  let ca: TestCa;
  let dir: string;
  beforeAll(async () => {
    ca = await createTestCa();
    dir = mkdtempSync(join(tmpdir(), 'meshlink-pin-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('has the canonical pin format and is stable', () => {
    const pin = spkiPinOf(ca.certPem);
    expect(pin).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(spkiPinOf(ca.certPem)).toBe(pin);
  });

  it.skipIf(!hasOpenssl)('equals openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256', () => {
    const certFile = join(dir, 'ca.pem');
    writeFileSync(certFile, ca.certPem);
    const pubPem = execFileSync('openssl', ['x509', '-in', certFile, '-noout', '-pubkey']);
    const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pubPem });
    const digest = execFileSync('openssl', ['dgst', '-sha256', '-hex'], { input: der }).toString();
    const hex = /([0-9a-f]{64})\s*$/.exec(digest)?.[1];
    expect(hex).toBeDefined();
    expect(spkiPinOf(ca.certPem)).toBe(`sha256:${hex}`);
  });

  it('differs between CAs and is the same for a re-issued CA cert with the same key', async () => {
    const other = await createTestCa();
    expect(spkiPinOf(other.certPem)).not.toBe(spkiPinOf(ca.certPem));
  });

  it('assertPinned names the pin it saw on mismatch', async () => {
    const other = await createTestCa();
    const seen = spkiPinOf(other.certPem);
    expect(() => assertPinned(other.certPem, [spkiPinOf(ca.certPem)])).toThrowError(expect.objectContaining({
      code: 'ML_ERR_CA_PIN_MISMATCH',
      message: expect.stringContaining(seen) as string,
    }) as Error);
    expect(assertPinned(other.certPem, [spkiPinOf(ca.certPem), seen])).toBe(seen);
  });

  it('parseCaCertificate refuses a leaf certificate and concatenated PEMs', async () => {
    const keys = await rsaKeyPair();
    const leaf = issueCertificate(ca, { publicKeyPem: keys.publicKeyPem, commonName: 'leaf', usage: 'client' });
    expect(() => parseCaCertificate(leaf)).toThrowError(expect.objectContaining({ code: 'ML_ERR_CA_CERT' }) as Error);
    expect(() => parseCaCertificate(ca.certPem + ca.certPem)).toThrowError(expect.objectContaining({ code: 'ML_ERR_CA_CERT' }) as Error);
    expect(() => parseCaCertificate('not a pem')).toThrowError(expect.objectContaining({ code: 'ML_ERR_CA_CERT' }) as Error);
  });
});
