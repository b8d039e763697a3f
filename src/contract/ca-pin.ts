import { X509Certificate, createHash } from 'node:crypto';
import { z } from 'zod';
import { MeshlinkError } from '../errors.js';

/**
 * A CA pin is `sha256:<64 lower-case hex>`: the SHA-256 of the CA certificate's
 * SubjectPublicKeyInfo DER. Pinning the key (not the whole certificate) keeps a pin valid when the
 * server re-issues its CA certificate with the same key.
 *
 * One module for both roles: the server computes its own pin with spkiPinOf (printed by `server
 * token create`, stored as meta ca_pin), the agent checks the CA it is offered against the pins it
 * was given. The two must agree byte for byte, so there is one implementation.
 */
export const CA_PIN_PATTERN = /^sha256:[0-9a-f]{64}$/;

/** A validated pin string (canonical form, so pins compare with ===). */
export type CaPin = string;

export const caPinSchema = z
  .string()
  .regex(CA_PIN_PATTERN, 'a CA pin is "sha256:" followed by 64 lower-case hex digits');

/** Parses one pin; rejects anything but the canonical form so pins compare as plain strings. */
export function parseCaPin(raw: string): CaPin {
  const result = caPinSchema.safeParse(raw);
  if (!result.success) {
    // The input is operator-supplied and not secret, but cap what we echo.
    const shown = raw.length > 80 ? `${raw.slice(0, 80)}…` : raw;
    throw new MeshlinkError('ML_ERR_PIN_FORMAT', `invalid CA pin "${shown}": expected sha256:<64 lower-case hex digits>`);
  }
  return result.data;
}

/** Parses the certificate PEM, requiring exactly one certificate that is a CA. */
export function parseCaCertificate(caPem: string): X509Certificate {
  const blocks = caPem.match(/-----BEGIN CERTIFICATE-----/g) ?? [];
  if (blocks.length !== 1) {
    throw new MeshlinkError('ML_ERR_CA_CERT', `expected exactly one CA certificate in PEM, found ${blocks.length}`);
  }
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(caPem);
  } catch (err) {
    throw new MeshlinkError('ML_ERR_CA_CERT', 'the CA certificate is not a valid PEM X.509 certificate', { cause: err });
  }
  if (!cert.ca) {
    throw new MeshlinkError('ML_ERR_CA_CERT', 'the certificate offered as CA does not have the CA basic constraint');
  }
  return cert;
}

/** The SPKI DER of a certificate's public key (`x509.publicKey` is already a public KeyObject). */
export function spkiDerOf(cert: X509Certificate): Buffer {
  return cert.publicKey.export({ type: 'spki', format: 'der' });
}

/** `sha256:<hex>` of the SubjectPublicKeyInfo DER of the (single) certificate in `caPem`. */
export function spkiPinOf(caPem: string | X509Certificate): CaPin {
  const cert = typeof caPem === 'string' ? new X509Certificate(caPem) : caPem;
  return `sha256:${createHash('sha256').update(spkiDerOf(cert)).digest('hex')}`;
}

/** Throws ML_ERR_CA_PIN_MISMATCH naming the pin seen (a pin is public, safe to show). */
export function assertPinned(caPem: string, caPins: readonly string[]): CaPin {
  const seen = spkiPinOf(parseCaCertificate(caPem));
  if (!caPins.includes(seen)) {
    throw new MeshlinkError(
      'ML_ERR_CA_PIN_MISMATCH',
      `the server's CA has pin ${seen}, which is not among the ${caPins.length} pinned value(s); ` +
        'check the --ca-pin value printed by `meshlink server token create`',
    );
  }
  return seen;
}
