import { createHash, createPublicKey, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import forge from 'node-forge';

/**
 * Certificate construction: node-forge builds the TBSCertificate ASN.1, node:crypto signs it.
 *
 * Why not `forge.pki.certificateToPem(cert)` after setting `cert.signature`: forge re-derives the
 * SubjectPublicKeyInfo from a forge RSA key object, so it can only certify RSA keys and it would
 * re-encode the requester's key. Instead the SPKI DER from the CSR is spliced into the TBS verbatim
 * (the subject key bytes are exactly what the requester proved possession of), the TBS is DER-encoded
 * once, signed with `crypto.sign` in its callback form (runs on libuv's threadpool, so an RSA-4096
 * signature never blocks the event loop), and the outer Certificate SEQUENCE is assembled here.
 */

const { asn1 } = forge;
const OID_SHA256_WITH_RSA = '1.2.840.113549.1.1.11';
/** Index of subjectPublicKeyInfo in a v3 TBSCertificate: version, serial, signature, issuer, validity, subject, spki. */
const TBS_SPKI_INDEX = 6;

export type DnAttribute = { name?: string; shortName?: string; type?: string; value: string };

export interface CertificateTemplate {
  /** Serial as DER INTEGER content bytes in hex (see randomSerial). */
  serialDerHex: string;
  subject: DnAttribute[];
  issuer: DnAttribute[];
  notBefore: Date;
  notAfter: Date;
  /** DER SubjectPublicKeyInfo of the key being certified. */
  subjectSpkiDer: Buffer;
  /** forge extension objects; key-dependent values (SKI/AKI) must be precomputed by the caller. */
  extensions: object[];
}

export interface SignedCertificate {
  der: Buffer;
  pem: string;
  /** Validity as encoded (UTCTime/GeneralizedTime carry whole seconds), ms since the epoch. */
  notBefore: number;
  notAfter: number;
}

function signAsync(data: Buffer, key: KeyObject): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    sign('sha256', data, key, (err, signature) => (err ? reject(err) : resolve(signature)));
  });
}

function binary(buf: Buffer): string {
  return buf.toString('binary');
}

function parseDer(der: Buffer): forge.asn1.Asn1 {
  // decodeBitStrings:false keeps BIT STRING contents as raw bytes so re-encoding is byte-identical.
  const fromDer = asn1.fromDer as unknown as (b: string, o: { strict: boolean; decodeBitStrings: boolean }) => forge.asn1.Asn1;
  return fromDer(binary(der), { strict: true, decodeBitStrings: false });
}

/** A forge RSA key only so forge can build the TBS skeleton; its SPKI is replaced before encoding. */
const PLACEHOLDER_KEY = forge.pki.setRsaPublicKey(new forge.jsbn.BigInteger('1'), new forge.jsbn.BigInteger('3'));

/** Builds and signs a certificate. The issuer key must be RSA (the CA is RSA-2048/4096). */
export async function signCertificate(t: CertificateTemplate, issuerKey: KeyObject): Promise<SignedCertificate> {
  if (issuerKey.asymmetricKeyType !== 'rsa') throw new Error('issuer key must be RSA');
  const cert = forge.pki.createCertificate();
  cert.serialNumber = t.serialDerHex;
  cert.validity.notBefore = t.notBefore;
  cert.validity.notAfter = t.notAfter;
  cert.setSubject(t.subject as forge.pki.CertificateField[]);
  cert.setIssuer(t.issuer as forge.pki.CertificateField[]);
  cert.publicKey = PLACEHOLDER_KEY;
  cert.setExtensions(t.extensions);
  (cert as unknown as { siginfo: { algorithmOid: string } }).siginfo.algorithmOid = OID_SHA256_WITH_RSA;

  // getTBSCertificate exists at runtime but is missing from @types/node-forge.
  const tbs = (forge.pki as unknown as { getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1 }).getTBSCertificate(cert);
  (tbs.value as forge.asn1.Asn1[])[TBS_SPKI_INDEX] = parseDer(t.subjectSpkiDer);
  const tbsDer = Buffer.from(asn1.toDer(tbs).getBytes(), 'binary');
  const signature = await signAsync(tbsDer, issuerKey);

  const certAsn1 = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    tbs,
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_SHA256_WITH_RSA).getBytes()),
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, ''),
    ]),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, '\u0000' + binary(signature)),
  ]);
  const der = Buffer.from(asn1.toDer(certAsn1).getBytes(), 'binary');
  const pem = derToPem(der, 'CERTIFICATE');
  // Not re-parsed with X509Certificate: OpenSSL 3 decoding costs more than the rest of this function
  // on the enrollment path; tests check the output with X509Certificate and `openssl verify`.
  return { der, pem, notBefore: floorToSecond(t.notBefore), notAfter: floorToSecond(t.notAfter) };
}

function floorToSecond(d: Date): number {
  return Math.floor(d.getTime() / 1000) * 1000;
}

/** DER bytes of a single-certificate PEM (no parsing beyond base64). */
export function pemToDer(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----(BEGIN|END) [A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

export function derToPem(der: Buffer, label: string): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/**
 * A random 128-bit positive serial. Returns the DER INTEGER content (a 0x00 byte is prepended when the
 * top bit is set, so the value stays positive) and the canonical lower-case hex used as the store key.
 */
export function randomSerial(): { derHex: string; serial: string } {
  // Bounded retry: a leading zero byte would make the DER encoding non-minimal (p = 1/256 per try).
  for (let i = 0; i < 16; i++) {
    const bytes = randomBytes(16);
    if (bytes[0] === 0) continue;
    const hex = bytes.toString('hex');
    return { derHex: (bytes[0]! & 0x80 ? '00' : '') + hex, serial: normalizeSerial(hex) };
  }
  throw new Error('could not draw a serial');
}

/** Canonical serial form: lower-case hex without leading zeros (matches X509Certificate.serialNumber modulo case/zeros). */
export function normalizeSerial(hex: string): string {
  const s = hex.toLowerCase().replace(/^0+/, '');
  return s === '' ? '0' : s;
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING contents. */
export function subjectKeyIdentifier(spkiDer: Buffer): Buffer {
  const spki = parseDer(spkiDer);
  const bitString = (spki.value as forge.asn1.Asn1[])[1];
  if (!bitString || typeof bitString.value !== 'string') throw new Error('malformed SubjectPublicKeyInfo');
  // First content byte is the unused-bits count.
  return createHash('sha1').update(Buffer.from(bitString.value.slice(1), 'binary')).digest();
}

export function spkiDerOf(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return pub.export({ type: 'spki', format: 'der' });
}

/** forge subjectAltName entries: IP literals as iPAddress (type 7), everything else as dNSName (type 2). */
export function altNames(names: readonly string[]): object[] {
  const seen = new Set<string>();
  const out: object[] = [];
  for (const name of names) {
    const key = name.toLowerCase();
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(isIP(name) ? { type: 7, ip: name } : { type: 2, value: name });
  }
  return out;
}

export function octetString(buf: Buffer): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, binary(buf));
}

/** AuthorityKeyIdentifier value: SEQUENCE { [0] keyIdentifier }. */
export function authorityKeyIdentifier(ski: Buffer): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, false, binary(ski)),
  ]);
}
