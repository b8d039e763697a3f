import { createPublicKey, generateKeyPairSync, sign } from 'node:crypto';
import forge from 'node-forge';

/**
 * EC P-256 key + CSR for simulated agents (RSA keygen for 10,000 agents would take minutes). forge
 * builds the ASN.1 (it cannot hold EC keys itself, so the SubjectPublicKeyInfo is spliced in as DER);
 * node:crypto signs (ECDSA with SHA-256).
 */
const asn1 = forge.asn1;
const OID_ECDSA_SHA256 = '1.2.840.10045.4.3.2';
const OID_CN = '2.5.4.3';

export function makeEcCsr(hostname: string): { csrPem: string; keyPem: string } {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const info = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, String.fromCharCode(0)),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [
        asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
          asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_CN).getBytes()),
          asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTF8, false, hostname),
        ]),
      ]),
    ]),
    asn1.fromDer(forge.util.createBuffer(spki.toString('binary'))),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, []),
  ]);
  const infoDer = Buffer.from(asn1.toDer(info).getBytes(), 'binary');
  const signature = sign('sha256', infoDer, privateKey);
  const csr = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    info,
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_ECDSA_SHA256).getBytes())]),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, String.fromCharCode(0) + signature.toString('binary')),
  ]);
  const der = Buffer.from(asn1.toDer(csr).getBytes(), 'binary').toString('base64');
  const csrPem = `-----BEGIN CERTIFICATE REQUEST-----\n${der.match(/.{1,64}/g)!.join('\n')}\n-----END CERTIFICATE REQUEST-----\n`;
  return { csrPem, keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
}
