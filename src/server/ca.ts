import { createPrivateKey, createPublicKey, generateKeyPair, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import forge from 'node-forge';
import { spkiPinOf, type CaPin } from '../contract/ca-pin.js';
import { isLegacySealed, openSealed, seal, type SealingSecret } from './ca-key-crypto.js';
import type { Store } from './store/store.js';
import {
  altNames,
  authorityKeyIdentifier,
  octetString,
  randomSerial,
  signCertificate,
  spkiDerOf,
  subjectKeyIdentifier,
  type DnAttribute,
} from './x509.js';

/**
 * The internal CA: an RSA key (node:crypto) and a self-signed certificate. Issues node client
 * certificates and the server's TLS certificate. Private-key operations stay in node:crypto.
 */

export type CaKeyType = 'rsa2048' | 'rsa4096';

const CA_LIFETIME_MS = 10 * 365 * 86_400_000;
/** Client certs are backdated so a node whose clock runs a little behind accepts them at once. */
const BACKDATE_MS = 5 * 60_000;
/** The server certificate is re-issued at every start and rotated in-process well before this. */
export const SERVER_CERT_LIFETIME_MS = 90 * 86_400_000;

export interface IssuedCertificate {
  pem: string;
  serial: string;
  notBefore: number;
  notAfter: number;
  /**
   * PEM of the CA certificate that signed this one. Enrollment answers name it as `caCertificate`;
   * knowing it here saves re-parsing the new certificate (OpenSSL 3 decoding, ~0.2 ms) and a signature
   * check against every trusted CA on each enrollment.
   */
  issuerPem: string;
}

function generateRsa(bits: number): Promise<KeyObject> {
  return new Promise((resolve, reject) => {
    generateKeyPair('rsa', { modulusLength: bits, publicExponent: 0x10001 }, (err, _pub, priv) =>
      err ? reject(err) : resolve(priv),
    );
  });
}
function generateP256(): Promise<KeyObject> {
  return new Promise((resolve, reject) => {
    generateKeyPair('ec', { namedCurve: 'prime256v1' }, (err, _pub, priv) => (err ? reject(err) : resolve(priv)));
  });
}

export class CertificateAuthority {
  readonly certPem: string;
  readonly cert: X509Certificate;
  /** `sha256:<hex>` of the CA SubjectPublicKeyInfo: what agents pin (src/contract/ca-pin.ts). */
  readonly pin: CaPin;
  private readonly key: KeyObject;
  private readonly subject: DnAttribute[];
  private readonly ski: Buffer;

  private constructor(key: KeyObject, certPem: string) {
    this.key = key;
    this.certPem = certPem;
    this.cert = new X509Certificate(certPem);
    this.pin = spkiPinOf(this.cert);
    // The CA is RSA, so forge can parse it; reuse its subject attributes so issuer DNs encode identically.
    const forgeCert = forge.pki.certificateFromPem(certPem);
    this.subject = forgeCert.subject.attributes.map((a) => ({ type: a.type as string, value: a.value as string }));
    this.ski = subjectKeyIdentifier(spkiDerOf(key));
    if (!this.cert.checkPrivateKey(key)) throw new Error('CA key does not match the CA certificate');
  }

  /** A new CA (key + self-signed certificate). Not persisted: see loadOrCreateCa. */
  static async create(options: { keyType: CaKeyType; commonName?: string }): Promise<CertificateAuthority> {
    const key = await generateRsa(options.keyType === 'rsa4096' ? 4096 : 2048);
    const spki = spkiDerOf(key);
    const ski = subjectKeyIdentifier(spki);
    const subject: DnAttribute[] = [
      { name: 'organizationName', value: 'meshlink' },
      { name: 'commonName', value: options.commonName ?? `meshlink CA ${randomBytes(4).toString('hex')}` },
    ];
    const now = Date.now();
    const signed = await signCertificate(
      {
        serialDerHex: randomSerial().derHex,
        subject,
        issuer: subject,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + CA_LIFETIME_MS),
        subjectSpkiDer: spki,
        extensions: [
          { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
          { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
          { name: 'subjectKeyIdentifier', value: octetString(ski) },
        ],
      },
      key,
    );
    return new CertificateAuthority(key, signed.pem);
  }

  static fromPem(certPem: string, keyPem: string | Buffer): CertificateAuthority {
    return new CertificateAuthority(createPrivateKey(keyPem), certPem);
  }

  /** PKCS#8 DER of the private key, for encrypted storage and for tests that must check it never leaks. */
  exportKeyPkcs8Der(): Buffer {
    return this.key.export({ type: 'pkcs8', format: 'der' });
  }

  /** True when `cert` carries a valid signature by this CA's key. */
  signed(cert: X509Certificate): boolean {
    try {
      return cert.checkIssued(this.cert) && cert.verify(this.cert.publicKey);
    } catch {
      return false;
    }
  }

  /**
   * A client certificate: CN = node id, clientAuth EKU, keyUsage digitalSignature (+keyEncipherment for
   * RSA), random 128-bit serial, NotBefore backdated 5 minutes. `validity` overrides are for tests and
   * tools (e.g. an already-expired certificate).
   */
  async issueClientCertificate(options: {
    nodeId: string;
    subjectSpkiDer: Buffer;
    /** Saves re-decoding the key when the caller already knows it (CSR parsing does). */
    keyType?: 'rsa' | 'ec';
    lifetimeMs: number;
    validity?: { notBefore: Date; notAfter: Date };
  }): Promise<IssuedCertificate> {
    const keyType = options.keyType ?? createPublicKey({ key: options.subjectSpkiDer, format: 'der', type: 'spki' }).asymmetricKeyType;
    const now = Date.now();
    const notBefore = options.validity?.notBefore ?? new Date(now - BACKDATE_MS);
    const notAfter = options.validity?.notAfter ?? new Date(now + options.lifetimeMs);
    const serial = randomSerial();
    const signed = await signCertificate(
      {
        serialDerHex: serial.derHex,
        subject: [{ name: 'commonName', value: options.nodeId }],
        issuer: this.subject,
        notBefore,
        notAfter,
        subjectSpkiDer: options.subjectSpkiDer,
        extensions: [
          { name: 'basicConstraints', cA: false, critical: true },
          { name: 'keyUsage', digitalSignature: true, keyEncipherment: keyType === 'rsa', critical: true },
          { name: 'extKeyUsage', clientAuth: true },
          { name: 'subjectKeyIdentifier', value: octetString(subjectKeyIdentifier(options.subjectSpkiDer)) },
          { name: 'authorityKeyIdentifier', value: authorityKeyIdentifier(this.ski) },
        ],
      },
      this.key,
    );
    return { pem: signed.pem, serial: serial.serial, notBefore: signed.notBefore, notAfter: signed.notAfter, issuerPem: this.certPem };
  }

  /**
   * The server's TLS certificate with a fresh P-256 key (fast handshakes; the agents pin the CA, not
   * this leaf). SANs: localhost, 127.0.0.1, ::1, the host name, and every operator-given name.
   * The key lives only in memory: it is re-issued at every start.
   */
  async issueServerCertificate(extraNames: readonly string[]): Promise<{ certPem: string; keyPem: string; chainPem: string; notAfter: number }> {
    const key = await generateP256();
    const spki = spkiDerOf(key);
    const host = osHostname();
    const names = ['localhost', '127.0.0.1', '::1', host, ...extraNames];
    const now = Date.now();
    const signed = await signCertificate(
      {
        serialDerHex: randomSerial().derHex,
        subject: [{ name: 'commonName', value: host || 'localhost' }],
        issuer: this.subject,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + SERVER_CERT_LIFETIME_MS),
        subjectSpkiDer: spki,
        extensions: [
          { name: 'basicConstraints', cA: false, critical: true },
          { name: 'keyUsage', digitalSignature: true, critical: true },
          { name: 'extKeyUsage', serverAuth: true },
          { name: 'subjectAltName', altNames: altNames(names) },
          { name: 'subjectKeyIdentifier', value: octetString(subjectKeyIdentifier(spki)) },
          { name: 'authorityKeyIdentifier', value: authorityKeyIdentifier(this.ski) },
        ],
      },
      this.key,
    );
    return {
      certPem: signed.pem,
      keyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string,
      chainPem: signed.pem + this.certPem,
      notAfter: signed.notAfter,
    };
  }
}

/**
 * Loads the CA from the store, or creates and stores one when the store has none. A CA that exists
 * but does not decrypt is ML_ERR_CA_PASSPHRASE: never silently replaced. A CA key sealed by an earlier
 * release (bound to the store's path, ca-key-crypto.ts) is re-sealed with `secret` at once, in one
 * durable write: from then on only the key file (and passphrase) opens it, at any path.
 */
export async function loadOrCreateCa(
  store: Store,
  options: { keyType: CaKeyType; secret: SealingSecret },
): Promise<{ ca: CertificateAuthority; created: boolean; migrated: boolean }> {
  const row = await store.getCa();
  if (row) {
    const pkcs8 = await openSealed(row.keyBlob, row.kdfSalt, options.secret, resolve(store.path));
    const migrated = isLegacySealed(row.keyBlob);
    if (migrated) {
      const resealed = await seal(pkcs8, options.secret);
      await store.replaceCaKey(row.keyBlob, resealed.blob, resealed.salt);
    }
    const ca = CertificateAuthority.fromPem(row.certPem, createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }));
    return { ca, created: false, migrated };
  }
  const ca = await CertificateAuthority.create({ keyType: options.keyType });
  const { blob, salt } = await seal(ca.exportKeyPkcs8Der(), options.secret);
  await store.insertCa({ keyBlob: blob, kdfSalt: salt, certPem: ca.certPem, createdAt: Date.now() });
  return { ca, created: true, migrated: false };
}

/**
 * For tests and tools: a throwaway CA in memory (never stored) plus a helper that issues a client
 * certificate for a fresh key, e.g. "a certificate from another CA".
 */
export async function createThrowawayCa(keyType: CaKeyType = 'rsa2048'): Promise<{
  ca: CertificateAuthority;
  issueClient(nodeId: string, validity?: { notBefore: Date; notAfter: Date }): Promise<{ certPem: string; keyPem: string; serial: string }>;
}> {
  const ca = await CertificateAuthority.create({ keyType, commonName: 'throwaway test CA' });
  return {
    ca,
    async issueClient(nodeId, validity) {
      const key = await generateP256();
      const issued = await ca.issueClientCertificate({ nodeId, subjectSpkiDer: spkiDerOf(key), lifetimeMs: 86_400_000, ...(validity ? { validity } : {}) });
      return { certPem: issued.pem, keyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string, serial: issued.serial };
    },
  };
}
