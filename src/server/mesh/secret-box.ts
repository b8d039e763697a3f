import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { isLegacySealed, openSealed, seal, type SealingSecret } from '../ca-key-crypto.js';

/**
 * Mesh secrets at rest (event-signing keys, per-pair PSKs, stored event envelopes that carry PSKs).
 *
 * One random 32-byte master key is stored encrypted exactly like the CA key (ca-key-crypto.ts:
 * scrypt of the server key file and MESHLINK_CA_PASSPHRASE, AES-256-GCM), so the scrypt cost is paid
 * once per start. A master key sealed by an earlier release (path-bound) opens with the store's path
 * and comes back with `resealed`, which the caller stores in its place. Each secret is then sealed with AES-256-GCM under the master key, with a label as
 * associated data so a blob cannot be moved to another row (a PSK of pair A-B used for pair A-C).
 *
 * Sealed layout: iv(12) | tag(16) | ciphertext.
 */
export class SecretBox {
  private constructor(private readonly key: Buffer) {}

  static async createMaster(secret: SealingSecret): Promise<{ box: SecretBox; blob: Buffer; salt: Buffer }> {
    const key = randomBytes(32);
    const { blob, salt } = await seal(key, secret);
    return { box: new SecretBox(key), blob, salt };
  }

  /** Throws ML_ERR_CA_PASSPHRASE when the key file or passphrase differs from the one that sealed it. */
  static async openMaster(
    blob: Buffer,
    salt: Buffer,
    secret: SealingSecret,
    storePathAbs: string,
  ): Promise<{ box: SecretBox; resealed: { blob: Buffer; salt: Buffer } | null }> {
    const key = await openSealed(blob, salt, secret, storePathAbs);
    return { box: new SecretBox(key), resealed: isLegacySealed(blob) ? await seal(key, secret) : null };
  }

  seal(plain: Uint8Array, label: string): Buffer {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    c.setAAD(Buffer.from(label));
    const ct = Buffer.concat([c.update(plain), c.final()]);
    return Buffer.concat([iv, c.getAuthTag(), ct]);
  }

  open(sealed: Uint8Array, label: string): Buffer {
    const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    const d = createDecipheriv('aes-256-gcm', this.key, b.subarray(0, 12));
    d.setAAD(Buffer.from(label));
    d.setAuthTag(b.subarray(12, 28));
    return Buffer.concat([d.update(b.subarray(28)), d.final()]);
  }
}
