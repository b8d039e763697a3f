import { createCipheriv, createDecipheriv, randomBytes, scrypt } from 'node:crypto';
import { MeshlinkError } from '../errors.js';

/**
 * Encryption of the server's root secrets at rest (the CA private key, and the mesh master key that
 * seals PSKs and event-signing keys): AES-256-GCM under a key derived with scrypt (random 16-byte salt
 * stored beside the blob).
 *
 * Version 2 (every blob written now): the scrypt input is the server key file's 32 random bytes
 * (key-file.ts, kept outside the data dir) plus the optional MESHLINK_CA_PASSPHRASE. Nothing in the
 * database, nor its path, is part of the key: a copy of the store (a backup, a stolen disk image of the
 * data dir) reveals nothing without the key file, and a store restored at any path opens with it.
 *
 * Version 1 (written by earlier releases, read only to migrate): the scrypt input was the store's
 * absolute path plus the passphrase, so without a passphrase anyone with the file could recompute it.
 * `openSealed` still opens such a blob given that path, and the callers re-seal it as version 2 at once
 * (ca.ts, mesh/service.ts), so a v1 blob lives only until the first start of this release.
 *
 * GCM authenticates, so a wrong key file or passphrase is detected and reported as
 * ML_ERR_CA_PASSPHRASE, never mistaken for "no CA".
 *
 * Blob layout: version(1) | iv(12) | tag(16) | ciphertext.
 */
const V1 = 1;
const V2 = 2;
const AAD_V1 = Buffer.from('meshlink-ca-key-v1');
const AAD_V2 = Buffer.from('meshlink-sealed-v2');
// N=2^15, r=8: ~32 MiB and ~0.1 s, paid once per blob per server start.
const SCRYPT = { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const;
const MIN_BLOB = 1 + 12 + 16 + 1;

/**
 * What unlocks the store's secrets: the key file's bytes (never stored in the database) and the
 * optional passphrase. Built by key-file.ts; tests build one from random bytes.
 */
export class SealingSecret {
  readonly #material: Buffer;
  readonly #passphrase: string;

  constructor(keyFileBytes: Uint8Array, passphrase: string) {
    if (keyFileBytes.length !== 32) throw new Error('a sealing key is 32 bytes');
    this.#passphrase = passphrase;
    // Length-prefixed, so that no (key, passphrase) pair collides with another.
    this.#material = Buffer.concat([Buffer.from('meshlink-sealing-v2\u0000'), Buffer.from(keyFileBytes), Buffer.from(passphrase, 'utf8')]);
  }

  /** @internal the scrypt input; only this module calls it. */
  derive(salt: Buffer): Promise<Buffer> {
    return scryptKey(this.#material, salt);
  }

  /** @internal the version 1 scrypt input (path-bound), for migrating a store of an earlier release. */
  deriveLegacy(storePathAbs: string, salt: Buffer): Promise<Buffer> {
    return scryptKey(`${storePathAbs}\u0000${this.#passphrase}`, salt);
  }
}

function scryptKey(input: Buffer | string, salt: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(input, salt, 32, SCRYPT, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** True for a blob sealed by an earlier release (path-bound, version 1): the caller re-seals it. */
export function isLegacySealed(blob: Buffer): boolean {
  return blob.length >= MIN_BLOB && blob[0] === V1;
}

/** Seals `plain` (the CA key's PKCS#8 DER, the mesh master key) as a version 2 blob. */
export async function seal(plain: Buffer, secret: SealingSecret): Promise<{ blob: Buffer; salt: Buffer }> {
  const salt = randomBytes(16);
  const key = await secret.derive(salt);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(AAD_V2);
  const ciphertext = Buffer.concat([cipher.update(plain), cipher.final()]);
  return { blob: Buffer.concat([Buffer.from([V2]), iv, cipher.getAuthTag(), ciphertext]), salt };
}

/**
 * Opens a blob of either version. A version 1 blob was bound to the store's absolute path (and the
 * passphrase); a version 2 blob ignores the path.
 */
export async function openSealed(blob: Buffer, salt: Buffer, secret: SealingSecret, storePathAbs: string): Promise<Buffer> {
  if (blob.length < MIN_BLOB || (blob[0] !== V1 && blob[0] !== V2)) {
    throw new MeshlinkError('ML_ERR_CA_PASSPHRASE', 'a sealed secret in the store is malformed or of an unknown version');
  }
  const v1 = blob[0] === V1;
  const key = v1 ? await secret.deriveLegacy(storePathAbs, salt) : await secret.derive(salt);
  const decipher = createDecipheriv('aes-256-gcm', key, blob.subarray(1, 13));
  decipher.setAAD(v1 ? AAD_V1 : AAD_V2);
  decipher.setAuthTag(blob.subarray(13, 29));
  try {
    return Buffer.concat([decipher.update(blob.subarray(29)), decipher.final()]);
  } catch (err) {
    throw new MeshlinkError(
      'ML_ERR_CA_PASSPHRASE',
      v1
        ? 'cannot decrypt the store (sealed by an earlier release with its path): start it once at its original path with its MESHLINK_CA_PASSPHRASE, which re-seals it with the key file'
        : 'cannot decrypt the store: the server key file or MESHLINK_CA_PASSPHRASE is not the one that sealed it',
      { cause: err },
    );
  }
}
