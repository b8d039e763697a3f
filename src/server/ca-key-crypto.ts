import { createCipheriv, createDecipheriv, randomBytes, scrypt } from 'node:crypto';
import { MeshlinkError } from '../errors.js';

/**
 * Encryption of the CA private key at rest: AES-256-GCM with key = scrypt(absolute store path +
 * "\0" + optional MESHLINK_CA_PASSPHRASE, random 16-byte salt). Binding the path means a copied
 * database does not open elsewhere without the passphrase being re-entered on purpose; the passphrase
 * is what actually protects a stolen store. GCM authenticates, so a wrong passphrase is detected and
 * reported as ML_ERR_CA_PASSPHRASE, never mistaken for "no CA".
 *
 * Blob layout: version(1) | iv(12) | tag(16) | ciphertext.
 */
const BLOB_VERSION = 1;
const AAD = Buffer.from('meshlink-ca-key-v1');
// N=2^15, r=8: ~32 MiB and ~0.1 s, paid once per server start.
const SCRYPT = { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const;

function deriveKey(storePathAbs: string, passphrase: string, salt: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(`${storePathAbs}\u0000${passphrase}`, salt, 32, SCRYPT, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function encryptCaKey(
  pkcs8Der: Buffer,
  storePathAbs: string,
  passphrase: string,
): Promise<{ blob: Buffer; salt: Buffer }> {
  const salt = randomBytes(16);
  const key = await deriveKey(storePathAbs, passphrase, salt);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(AAD);
  const ciphertext = Buffer.concat([cipher.update(pkcs8Der), cipher.final()]);
  return { blob: Buffer.concat([Buffer.from([BLOB_VERSION]), iv, cipher.getAuthTag(), ciphertext]), salt };
}

export async function decryptCaKey(blob: Buffer, salt: Buffer, storePathAbs: string, passphrase: string): Promise<Buffer> {
  if (blob.length < 1 + 12 + 16 + 1 || blob[0] !== BLOB_VERSION) {
    throw new MeshlinkError('ML_ERR_CA_PASSPHRASE', 'the stored CA key blob is malformed or of an unknown version');
  }
  const key = await deriveKey(storePathAbs, passphrase, salt);
  const decipher = createDecipheriv('aes-256-gcm', key, blob.subarray(1, 13));
  decipher.setAAD(AAD);
  decipher.setAuthTag(blob.subarray(13, 29));
  try {
    return Buffer.concat([decipher.update(blob.subarray(29)), decipher.final()]);
  } catch (err) {
    throw new MeshlinkError(
      'ML_ERR_CA_PASSPHRASE',
      'cannot decrypt the CA key: MESHLINK_CA_PASSPHRASE is wrong (or the store file was moved; its absolute path is part of the key)',
      { cause: err },
    );
  }
}
