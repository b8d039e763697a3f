import { createPrivateKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { rawEd25519PublicKeyOf, signEd25519, signingKeyId } from '../../contract/ed25519.js';

/**
 * The server's Ed25519 event-signing key. Private halves are kept sealed in the store (SecretBox);
 * only the newest key signs. After a rotation the previous key is announced to agents together with
 * the next one for a transition window, so agents accept both while events signed by either are in
 * flight (docs/MESH.md, "Signing keys").
 */
export interface SigningKey {
  readonly keyId: string;
  readonly publicKey: Buffer;
  readonly privateKey: KeyObject;
  readonly createdAt: number;
}

export function generateSigningKey(now = Date.now()): SigningKey & { pkcs8: Buffer } {
  const { privateKey } = generateKeyPairSync('ed25519');
  const raw = rawEd25519PublicKeyOf(privateKey);
  return { keyId: signingKeyId(raw), publicKey: Buffer.from(raw), privateKey, createdAt: now, pkcs8: privateKey.export({ format: 'der', type: 'pkcs8' }) };
}

export function signingKeyFromPkcs8(pkcs8: Buffer, createdAt: number): SigningKey {
  const privateKey = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
  const raw = rawEd25519PublicKeyOf(privateKey);
  return { keyId: signingKeyId(raw), publicKey: Buffer.from(raw), privateKey, createdAt };
}

/** Ed25519 over exactly `bytes` with the key's private half. */
export function signBytes(key: SigningKey, bytes: Uint8Array): Buffer {
  return signEd25519(key.privateKey, bytes);
}
