/**
 * Throwaway PKI for agent tests, made at test time: node:crypto generates keys and signs, node-forge
 * only assembles certificates. Nothing here is committed material.
 */
import { generateKeyPair, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { promisify } from 'node:util';
import forge from 'node-forge';

const generateKeyPairAsync = promisify(generateKeyPair);
const pki = forge.pki as typeof forge.pki & { getTBSCertificate(cert: forge.pki.Certificate): forge.asn1.Asn1 };

export interface TestKeyPair {
  readonly privateKey: KeyObject;
  readonly privateKeyPem: string;
  readonly publicKeyPem: string;
}

export async function rsaKeyPair(bits = 2048): Promise<TestKeyPair> {
  const { privateKey, publicKey } = await generateKeyPairAsync('rsa', { modulusLength: bits });
  return {
    privateKey,
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

export interface TestCa {
  readonly keys: TestKeyPair;
  readonly certPem: string;
  readonly subject: forge.pki.CertificateField[];
}

export interface IssueOptions {
  readonly publicKeyPem: string;
  readonly commonName: string;
  readonly names?: readonly string[];
  readonly notBefore?: Date;
  readonly notAfter?: Date;
  readonly usage: 'server' | 'client';
}

function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive
  return bytes.toString('hex');
}

function signWith(cert: forge.pki.Certificate, key: KeyObject): string {
  cert.signatureOid = pki.oids.sha256WithRSAEncryption ?? '1.2.840.113549.1.1.11';
  (cert as unknown as { siginfo: { algorithmOid: string } }).siginfo.algorithmOid = cert.signatureOid;
  const tbs = pki.getTBSCertificate(cert);
  const signature = sign('sha256', Buffer.from(forge.asn1.toDer(tbs).getBytes(), 'binary'), key);
  (cert as unknown as { tbsCertificate: forge.asn1.Asn1 }).tbsCertificate = tbs;
  cert.signature = signature.toString('binary');
  return pki.certificateToPem(cert);
}

export async function createTestCa(commonName = 'meshlink test CA'): Promise<TestCa> {
  const keys = await rsaKeyPair(2048);
  const cert = pki.createCertificate();
  cert.publicKey = pki.publicKeyFromPem(keys.publicKeyPem);
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 365 * 86_400_000);
  const subject = [{ name: 'commonName', value: commonName }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  return { keys, certPem: signWith(cert, keys.privateKey), subject };
}

export function issueCertificate(ca: TestCa, options: IssueOptions): string {
  const cert = pki.createCertificate();
  cert.publicKey = pki.publicKeyFromPem(options.publicKeyPem);
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = options.notBefore ?? new Date(Date.now() - 5 * 60_000);
  cert.validity.notAfter = options.notAfter ?? new Date(Date.now() + 30 * 86_400_000);
  cert.setSubject([{ name: 'commonName', value: options.commonName }]);
  cert.setIssuer(ca.subject);
  const altNames = (options.names ?? []).map((n) => (isIP(n) !== 0 ? { type: 7, ip: n } : { type: 2, value: n }));
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    options.usage === 'server' ? { name: 'extKeyUsage', serverAuth: true } : { name: 'extKeyUsage', clientAuth: true },
    ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
  ]);
  return signWith(cert, ca.keys.privateKey);
}
