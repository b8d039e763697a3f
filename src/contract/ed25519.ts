import { createHash, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';

/**
 * Ed25519 as both sides use it for mesh events (docs/MESH.md, "Signing keys"): keys travel as the raw
 * 32 public bytes, a key is named by its key id, and the signature covers exactly the envelope bytes
 * (no pre-hash). The server keeps its private keys in the store; the agent keeps the set it trusts.
 */

/** Key id of an Ed25519 public key: first 16 hex digits of SHA-256 over the raw 32 bytes. */
export function signingKeyId(rawPublicKey: Uint8Array): string {
  return createHash('sha256').update(rawPublicKey).digest('hex').slice(0, 16);
}

/** DER SubjectPublicKeyInfo header for Ed25519 (RFC 8410); the raw key follows it. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** A raw 32-byte Ed25519 public key as a KeyObject (build once per key: it costs more than a verify). */
export function ed25519PublicKey(rawPublicKey: Uint8Array): KeyObject {
  if (rawPublicKey.byteLength !== 32) throw new Error('an Ed25519 public key has 32 bytes');
  return createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, rawPublicKey]), format: 'der', type: 'spki' });
}

/** The raw 32 bytes of an Ed25519 public key given as SPKI DER. */
export function rawEd25519PublicKey(spkiDer: Buffer): Buffer {
  if (spkiDer.length !== 44 || !spkiDer.subarray(0, 12).equals(ED25519_SPKI_PREFIX)) throw new Error('not an Ed25519 SPKI');
  return spkiDer.subarray(12);
}

/** The raw 32 public bytes of an Ed25519 key object (private or public). */
export function rawEd25519PublicKeyOf(key: KeyObject): Buffer {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return rawEd25519PublicKey(publicKey.export({ format: 'der', type: 'spki' }));
}

/** Ed25519 signature over exactly `bytes` (node:crypto; no pre-hash). */
export function signEd25519(privateKey: KeyObject, bytes: Uint8Array): Buffer {
  return sign(null, bytes, privateKey);
}

/** Verifies an Ed25519 signature over exactly `bytes` with a public key (raw 32 bytes or a KeyObject). */
export function verifyEd25519(key: Uint8Array | KeyObject, bytes: Uint8Array, signature: Uint8Array): boolean {
  if (signature.byteLength !== 64) return false;
  if (key instanceof Uint8Array && key.byteLength !== 32) return false;
  return verify(null, bytes, key instanceof Uint8Array ? ed25519PublicKey(key) : key, signature);
}
