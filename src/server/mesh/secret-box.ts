import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { decryptCaKey, encryptCaKey } from '../ca-key-crypto.js';

/**
 * Mesh secrets at rest (event-signing keys, per-pair PSKs, stored event envelopes that carry PSKs).
 *
 * One random 32-byte master key is stored encrypted exactly like the CA key (ca-key-crypto.ts:
 * scrypt of the store path and MESHLINK_CA_PASSPHRASE, AES-256-GCM), so the scrypt cost is paid once
 * per start. Each secret is then sealed with AES-256-GCM under the master key, with a label as
 * associated data so a blob cannot be moved to another row (a PSK of pair A-B used for pair A-C).
 *
 * Sealed layout: iv(12) | tag(16) | ciphertext.
 */
export class SecretBox {
  private constructor(private readonly key: Buffer) {}

  static async createMaster(storePathAbs: string, passphrase: string): Promise<{ box: SecretBox; blob: Buffer; salt: Buffer }> {
    const key = randomBytes(32);
    const { blob, salt } = await encryptCaKey(key, storePathAbs, passphrase);
    return { box: new SecretBox(key), blob, salt };
  }

  /** Throws ML_ERR_CA_PASSPHRASE when the passphrase (or store path) differs from the one that sealed it. */
  static async openMaster(blob: Buffer, salt: Buffer, storePathAbs: string, passphrase: string): Promise<SecretBox> {
    return new SecretBox(await decryptCaKey(blob, salt, storePathAbs, passphrase));
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
