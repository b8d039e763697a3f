import { generateKeyPair, sign, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import forge from 'node-forge';
import { promisify } from 'node:util';

/**
 * Key pair and PKCS#10 CSR for the agent. Key generation and the signature are node:crypto (OpenSSL);
 * node-forge only assembles and serialises the ASN.1, so the private key never enters pure JS.
 */

const generateKeyPairAsync = promisify(generateKeyPair);

export const KEY_TYPES = ['rsa2048', 'rsa3072', 'rsa4096'] as const;
export type KeyType = (typeof KEY_TYPES)[number];

const MODULUS_BITS: Record<KeyType, number> = { rsa2048: 2048, rsa3072: 3072, rsa4096: 4096 };

export interface AgentKeyPair {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** PKCS#8 PEM, unencrypted; written only with mode 0600. */
  readonly privateKeyPem: string;
  readonly publicKeyPem: string;
}

/** RSA key pair generated in libuv's threadpool (the async form never blocks the event loop). */
export async function generateAgentKeyPair(keyType: KeyType = 'rsa2048'): Promise<AgentKeyPair> {
  const { privateKey, publicKey } = await generateKeyPairAsync('rsa', { modulusLength: MODULUS_BITS[keyType] });
  return Object.freeze({
    privateKey,
    publicKey,
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  });
}

export interface CsrSubject {
  /** Becomes the subject CN and the first DNS SAN. */
  readonly hostname: string;
  /** Extra SANs: IP literals become IP SANs, everything else a DNS SAN. */
  readonly sans: readonly string[];
}

/** Ordered, de-duplicated SAN list: hostname first, then extra names. */
export function sanList(subject: CsrSubject): string[] {
  return [...new Set([subject.hostname, ...subject.sans])];
}

// forge's typings omit getCertificationRequestInfo, which is public API in lib/x509.js.
const pki = forge.pki as typeof forge.pki & {
  getCertificationRequestInfo(csr: forge.pki.CertificateSigningRequest): forge.asn1.Asn1;
};

/**
 * Builds a CSR whose CertificationRequestInfo is DER-encoded by forge and signed by node:crypto with
 * sha256WithRSAEncryption. The signed ASN.1 object is cached on the CSR so the serialised request
 * contains exactly the bytes that were signed.
 */
export function createCsrPem(keys: Pick<AgentKeyPair, 'privateKey' | 'publicKeyPem'>, subject: CsrSubject): string {
  const csr = pki.createCertificationRequest();
  csr.publicKey = pki.publicKeyFromPem(keys.publicKeyPem);
  csr.setSubject([{ name: 'commonName', value: subject.hostname }]);
  const altNames = sanList(subject).map((name) =>
    isIP(name) !== 0 ? { type: 7, ip: name } : { type: 2, value: name },
  );
  csr.setAttributes([{ name: 'extensionRequest', extensions: [{ name: 'subjectAltName', altNames }] }]);

  const info = pki.getCertificationRequestInfo(csr);
  const infoDer = Buffer.from(forge.asn1.toDer(info).getBytes(), 'binary');
  const signature = sign('sha256', infoDer, keys.privateKey);

  csr.certificationRequestInfo = info;
  csr.signatureOid = pki.oids.sha256WithRSAEncryption ?? '1.2.840.113549.1.1.11';
  csr.signature = signature.toString('binary');
  return pki.certificationRequestToPem(csr);
}
