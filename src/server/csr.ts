import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import forge from 'node-forge';
import { MeshlinkError } from '../errors.js';

/**
 * PKCS#10 CSR checks. The self-signature is verified with node:crypto over the exact
 * CertificationRequestInfo bytes as received: they are sliced out of the DER with a tiny TLV reader
 * (never re-serialised, which could "repair" a tampered request). forge.asn1 is used only to read the
 * subject and the extensionRequest attribute.
 *
 * Accepted keys: RSA >= 2048 bits and EC P-256. Signature algorithms: sha256/384/512 with RSA, and
 * ECDSA with SHA-256/384/512.
 */

export const CSR_MAX_PEM_BYTES = 16 * 1024;

export interface ParsedCsr {
  /** SubjectPublicKeyInfo DER, exactly as in the request. */
  spkiDer: Buffer;
  publicKey: KeyObject;
  keyType: 'rsa' | 'ec';
  commonName: string | undefined;
  dnsNames: string[];
  ipAddresses: string[];
}

const SIG_ALGS: Record<string, { hash: string; key: 'rsa' | 'ec' }> = {
  '1.2.840.113549.1.1.11': { hash: 'sha256', key: 'rsa' },
  '1.2.840.113549.1.1.12': { hash: 'sha384', key: 'rsa' },
  '1.2.840.113549.1.1.13': { hash: 'sha512', key: 'rsa' },
  '1.2.840.10045.4.3.2': { hash: 'sha256', key: 'ec' },
  '1.2.840.10045.4.3.3': { hash: 'sha384', key: 'ec' },
  '1.2.840.10045.4.3.4': { hash: 'sha512', key: 'ec' },
};
const OID_COMMON_NAME = '2.5.4.3';
const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';

function invalid(message: string, cause?: unknown): MeshlinkError {
  return new MeshlinkError('ML_ERR_CSR_INVALID', message, cause === undefined ? undefined : { cause });
}

interface Tlv {
  tag: number;
  /** Whole element (header + content). */
  start: number;
  end: number;
  contentStart: number;
}

/** Reads one DER TLV at `offset` (single-byte tags and definite lengths only, as DER requires). */
function readTlv(der: Buffer, offset: number, limit: number): Tlv {
  if (offset + 2 > limit) throw invalid('CSR DER is truncated');
  const tag = der[offset]!;
  if ((tag & 0x1f) === 0x1f) throw invalid('CSR DER uses a multi-byte tag');
  let len = der[offset + 1]!;
  let pos = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3) throw invalid('CSR DER has an unsupported length encoding');
    if (pos + n > limit) throw invalid('CSR DER is truncated');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[pos + i]!;
    pos += n;
  }
  if (pos + len > limit) throw invalid('CSR DER is truncated');
  return { tag, start: offset, end: pos + len, contentStart: pos };
}

const OID_RSA_ENCRYPTION_DER = Buffer.from('06092a864886f70d0101010500', 'hex'); // OID 1.2.840.113549.1.1.1, NULL
const OID_EC_P256_DER = Buffer.from('06072a8648ce3d020106082a8648ce3d030107', 'hex'); // id-ecPublicKey, prime256v1

/**
 * The two key shapes the server accepts (RSA, EC P-256), read from the SPKI DER into a JWK; null for
 * anything else (node:crypto's DER import then decides, and the caller refuses what it does not accept).
 *
 * Why not always `createPublicKey({format: 'der'})`: OpenSSL 3's decoder framework costs ~150 µs per
 * key on an idle core and 0.6–1.8 ms while the CA's RSA signatures run in libuv's pool (lock
 * contention, measured with bench:enroll's load), on every enrollment's main thread. A JWK import
 * builds the key from its numbers directly (7–50 µs). The SPKI bytes are still what the certificate
 * carries (spkiDer, verbatim), and the CSR's signature is verified with this key, so a JWK that did not
 * match those bytes could not pass.
 */
function spkiAsJwk(spki: Buffer): { kty: 'RSA'; n: string; e: string } | { kty: 'EC'; crv: 'P-256'; x: string; y: string } | null {
  try {
    return readSpkiJwk(spki);
  } catch {
    return null; // malformed: the DER import gives the error
  }
}

function readSpkiJwk(spki: Buffer): { kty: 'RSA'; n: string; e: string } | { kty: 'EC'; crv: 'P-256'; x: string; y: string } | null {
  const outer = readTlv(spki, 0, spki.length);
  if (outer.tag !== 0x30 || outer.end !== spki.length) return null;
  const alg = readTlv(spki, outer.contentStart, outer.end);
  const bits = readTlv(spki, alg.end, outer.end);
  if (alg.tag !== 0x30 || bits.tag !== 0x03 || bits.end !== outer.end || spki[bits.contentStart] !== 0) return null;
  const algBody = spki.subarray(alg.contentStart, alg.end);
  const key = spki.subarray(bits.contentStart + 1, bits.end);
  if (algBody.equals(OID_EC_P256_DER)) {
    if (key.length !== 65 || key[0] !== 0x04) return null; // uncompressed point only
    return { kty: 'EC', crv: 'P-256', x: key.subarray(1, 33).toString('base64url'), y: key.subarray(33).toString('base64url') };
  }
  if (!algBody.equals(OID_RSA_ENCRYPTION_DER)) return null;
  const seq = readTlv(key, 0, key.length);
  if (seq.tag !== 0x30 || seq.end !== key.length) return null;
  const n = readTlv(key, seq.contentStart, seq.end);
  const e = readTlv(key, n.end, seq.end);
  if (n.tag !== 0x02 || e.tag !== 0x02 || e.end !== seq.end) return null;
  const magnitude = (int: Tlv): Buffer | null => {
    const body = key.subarray(int.contentStart, int.end);
    if (body.length === 0 || body[0]! & 0x80) return null; // negative
    if (body[0] === 0) return body.length > 1 && body[1]! & 0x80 ? body.subarray(1) : null; // minimal DER only
    return body;
  };
  const nBytes = magnitude(n);
  const eBytes = magnitude(e);
  if (!nBytes || !eBytes) return null;
  return { kty: 'RSA', n: nBytes.toString('base64url'), e: eBytes.toString('base64url') };
}

function pemToDer(pem: string): Buffer {
  const m = /^\s*-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END (NEW )?CERTIFICATE REQUEST-----\s*$/.exec(pem);
  if (!m) throw invalid('csr must be exactly one PEM "CERTIFICATE REQUEST" block');
  const der = Buffer.from(m[2]!.replace(/\s+/g, ''), 'base64');
  if (der.length < 64) throw invalid('CSR is too short');
  return der;
}

function asn1Children(node: forge.asn1.Asn1 | undefined): forge.asn1.Asn1[] {
  return node && Array.isArray(node.value) ? (node.value as forge.asn1.Asn1[]) : [];
}
function oidOf(node: forge.asn1.Asn1 | undefined): string | undefined {
  return node && node.type === forge.asn1.Type.OID && typeof node.value === 'string' ? forge.asn1.derToOid(node.value) : undefined;
}

export function parseCsr(pem: string): ParsedCsr {
  if (pem.length > CSR_MAX_PEM_BYTES) throw invalid(`CSR is larger than ${CSR_MAX_PEM_BYTES} bytes`);
  const der = pemToDer(pem);

  // CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm, signature BIT STRING }
  const outer = readTlv(der, 0, der.length);
  if (outer.tag !== 0x30 || outer.end !== der.length) throw invalid('CSR is not a single DER SEQUENCE');
  const info = readTlv(der, outer.contentStart, outer.end);
  const algId = readTlv(der, info.end, outer.end);
  const sigBits = readTlv(der, algId.end, outer.end);
  if (info.tag !== 0x30 || algId.tag !== 0x30 || sigBits.tag !== 0x03 || sigBits.end !== outer.end) {
    throw invalid('CSR structure is not CertificationRequest');
  }
  const infoDer = der.subarray(info.start, info.end);
  if (der[sigBits.contentStart] !== 0) throw invalid('CSR signature BIT STRING has unused bits');
  const signature = der.subarray(sigBits.contentStart + 1, sigBits.end);

  // CertificationRequestInfo ::= SEQUENCE { version, subject, subjectPKInfo, [0] attributes }
  const version = readTlv(der, info.contentStart, info.end);
  const subject = readTlv(der, version.end, info.end);
  const spki = readTlv(der, subject.end, info.end);
  if (version.tag !== 0x02 || subject.tag !== 0x30 || spki.tag !== 0x30) throw invalid('CSR info structure is malformed');
  const spkiDer = Buffer.from(der.subarray(spki.start, spki.end));

  let publicKey: KeyObject;
  try {
    const jwk = spkiAsJwk(spkiDer);
    publicKey = jwk ? createPublicKey({ key: jwk, format: 'jwk' }) : createPublicKey({ key: spkiDer, format: 'der', type: 'spki' });
  } catch (err) {
    throw new MeshlinkError('ML_ERR_CSR_KEY', 'the CSR public key cannot be read', { cause: err });
  }
  const keyType = publicKey.asymmetricKeyType;
  const details = publicKey.asymmetricKeyDetails ?? {};
  if (keyType === 'rsa') {
    if ((details.modulusLength ?? 0) < 2048) {
      throw new MeshlinkError('ML_ERR_CSR_KEY', `RSA key of ${details.modulusLength ?? 0} bits: at least 2048 required`);
    }
  } else if (keyType === 'ec') {
    if (details.namedCurve !== 'prime256v1') {
      throw new MeshlinkError('ML_ERR_CSR_KEY', `EC curve ${details.namedCurve ?? 'unknown'} is not supported: use P-256 or RSA >= 2048`);
    }
  } else {
    throw new MeshlinkError('ML_ERR_CSR_KEY', `key type ${keyType ?? 'unknown'} is not supported: use RSA >= 2048 or EC P-256`);
  }

  let algAsn1: forge.asn1.Asn1;
  let infoAsn1: forge.asn1.Asn1;
  try {
    algAsn1 = forge.asn1.fromDer(der.subarray(algId.start, algId.end).toString('binary'));
    infoAsn1 = forge.asn1.fromDer(infoDer.toString('binary'));
  } catch (err) {
    throw invalid('CSR ASN.1 cannot be parsed', err);
  }
  const algOid = oidOf(asn1Children(algAsn1)[0]);
  const alg = algOid ? SIG_ALGS[algOid] : undefined;
  if (!alg) throw invalid(`CSR signature algorithm ${algOid ?? '?'} is not supported`);
  if (alg.key !== keyType) throw invalid('CSR signature algorithm does not match its key type');

  let ok = false;
  try {
    ok = verify(alg.hash, infoDer, publicKey, signature);
  } catch (err) {
    throw invalid('CSR signature cannot be verified', err);
  }
  if (!ok) throw invalid('CSR signature does not verify: the request was altered or not signed by its key');

  const [, subjectAsn1, , attributesAsn1] = asn1Children(infoAsn1);
  const names = readSubjectAltNames(attributesAsn1);
  return {
    spkiDer,
    publicKey,
    keyType,
    commonName: readCommonName(subjectAsn1),
    dnsNames: names.dns,
    ipAddresses: names.ip,
  };
}

function readCommonName(subject: forge.asn1.Asn1 | undefined): string | undefined {
  for (const rdn of asn1Children(subject)) {
    for (const atv of asn1Children(rdn)) {
      const [type, value] = asn1Children(atv);
      if (oidOf(type) === OID_COMMON_NAME && value && typeof value.value === 'string') {
        return forge.util.decodeUtf8(value.value);
      }
    }
  }
  return undefined;
}

function readSubjectAltNames(attributes: forge.asn1.Asn1 | undefined): { dns: string[]; ip: string[] } {
  const dns: string[] = [];
  const ip: string[] = [];
  for (const attr of asn1Children(attributes)) {
    const [type, values] = asn1Children(attr);
    if (oidOf(type) !== OID_EXTENSION_REQUEST) continue;
    for (const extensions of asn1Children(values)) {
      for (const ext of asn1Children(extensions)) {
        const parts = asn1Children(ext);
        if (oidOf(parts[0]) !== OID_SUBJECT_ALT_NAME) continue;
        const octets = parts[parts.length - 1];
        if (!octets || typeof octets.value !== 'string') continue;
        let seq: forge.asn1.Asn1;
        try {
          seq = forge.asn1.fromDer(octets.value);
        } catch (err) {
          throw invalid('CSR subjectAltName cannot be parsed', err);
        }
        for (const gn of asn1Children(seq)) {
          if (gn.tagClass !== forge.asn1.Class.CONTEXT_SPECIFIC || typeof gn.value !== 'string') continue;
          if (gn.type === 2) dns.push(gn.value);
          else if (gn.type === 7) {
            const text = (forge.util as unknown as { bytesToIP(b: string): string | null }).bytesToIP(gn.value);
            if (text && isIP(text)) ip.push(text);
          }
        }
      }
    }
  }
  return { dns, ip };
}
