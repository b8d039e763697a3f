import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ed25519PublicKey, rawEd25519PublicKey, rawEd25519PublicKeyOf, signEd25519, signingKeyId, verifyEd25519 } from '../../src/contract/ed25519.js';
import { decodeEnvelope, encodeEnvelope, stateDigest, type MeshState } from '../../src/contract/mesh-events.js';

describe('Ed25519 contract helpers', () => {
  it('name a key by the same raw bytes from SPKI, a private key object and a public key object', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const raw = rawEd25519PublicKey(publicKey.export({ format: 'der', type: 'spki' }));
    expect(raw).toHaveLength(32);
    expect(rawEd25519PublicKeyOf(privateKey).equals(raw)).toBe(true);
    expect(rawEd25519PublicKeyOf(publicKey).equals(raw)).toBe(true);
    expect(signingKeyId(raw)).toMatch(/^[0-9a-f]{16}$/);
    expect(ed25519PublicKey(raw).equals(publicKey)).toBe(true);
  });

  it('verify exactly the signed bytes, with raw bytes or a key object; reject other keys and malformed input', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const other = generateKeyPairSync('ed25519').publicKey;
    const raw = rawEd25519PublicKeyOf(publicKey);
    const bytes = encodeEnvelope({ seq: 1, type: 'rotate_keys', ts: 5, payload: { reason: 'test' } });
    const sig = signEd25519(privateKey, bytes);
    expect(verifyEd25519(raw, bytes, sig)).toBe(true);
    expect(verifyEd25519(publicKey, bytes, sig)).toBe(true);
    expect(verifyEd25519(other, bytes, sig)).toBe(false);
    const tampered = Uint8Array.from(bytes);
    tampered[tampered.length - 1]! ^= 1;
    expect(verifyEd25519(raw, tampered, sig)).toBe(false);
    expect(verifyEd25519(raw, bytes, sig.subarray(0, 63))).toBe(false);
    expect(verifyEd25519(raw.subarray(0, 31), bytes, sig)).toBe(false);
    expect(() => rawEd25519PublicKey(Buffer.alloc(44))).toThrow(/Ed25519 SPKI/);
  });
});

describe('mesh event envelope', () => {
  it('round-trips a known type and reports an unknown one without its payload', () => {
    const bytes = encodeEnvelope({ seq: 7, type: 'peer_removed', ts: 9, payload: { nodeIds: ['a'] } });
    expect(decodeEnvelope(bytes)).toEqual({ known: true, envelope: { seq: 7, type: 'peer_removed', ts: 9, payload: { nodeIds: ['a'] } }, skipped: [] });
    const future = encodeEnvelope({ seq: 8, type: 'from_the_future' as 'rotate_keys', ts: 1, payload: {} });
    expect(decodeEnvelope(future)).toEqual({ known: false, seq: 8, type: 'from_the_future', ts: 1 });
  });

  it('digests a state independently of peer order', () => {
    const peer = (n: number) => ({ nodeId: `n${n}`, meshIp: `10.0.0.${n}`, publicKey: Buffer.alloc(32, n).toString('base64'), endpoints: [], psk: Buffer.alloc(32, 100 + n).toString('base64') });
    const a: MeshState = { nodeId: 'self', meshIp: '10.0.0.9', cidr: '10.0.0.0/24', peers: [peer(1), peer(2)] };
    const b: MeshState = { ...a, peers: [peer(2), peer(1)] };
    expect(stateDigest(a)).toBe(stateDigest(b));
    expect(stateDigest(a)).not.toBe(stateDigest({ ...a, peers: [peer(1)] }));
  });
});
