import type { KeyObject } from 'node:crypto';
import { ed25519PublicKey, verifyEd25519 } from '../../contract/ed25519.js';

/**
 * Which Ed25519 keys the agent accepts for events and state snapshots. The first keys are pinned once
 * (in the enrollment response, or the first welcome of an agent that has none); every later key
 * arrives in a `signing_key_rotated` event, itself verified with a key already trusted, so trust is a
 * chain from the pin. `welcome.eventKeys` never changes a non-empty set. After a rotation the previous key stays accepted for
 * the announced transition window, so events signed before the switch still verify.
 */
export interface TrustedKey {
  keyId: string;
  publicKey: Uint8Array;
  /** Accepted until this time (ms); null = no expiry. */
  until: number | null;
}

export class EventVerifier {
  #keys = new Map<string, TrustedKey>();
  /** Parsed keys by id (building a KeyObject costs more than a verification). */
  readonly #objects = new Map<string, KeyObject>();

  constructor(keys: readonly TrustedKey[] = []) {
    for (const k of keys) this.#keys.set(k.keyId, k);
  }

  /**
   * The first keys of an agent that trusts none (pinned at enrollment, or at first contact): they
   * carry no expiry. Never called once a key is trusted (docs/MESH.md, "Trust model").
   */
  trustWelcome(keys: ReadonlyArray<{ keyId: string; publicKey: Uint8Array }>): void {
    this.#keys = new Map(keys.map((k) => [k.keyId, { keyId: k.keyId, publicKey: Uint8Array.from(k.publicKey), until: null }]));
  }

  /** After a verified signing_key_rotated: trust the next key; the signer's key expires after the window. */
  rotate(next: { keyId: string; publicKey: Uint8Array }, transitionMs: number, now = Date.now()): void {
    for (const k of this.#keys.values()) if (k.keyId !== next.keyId) k.until = Math.min(k.until ?? Infinity, now + transitionMs);
    this.#keys.set(next.keyId, { keyId: next.keyId, publicKey: Uint8Array.from(next.publicKey), until: null });
  }

  /** True when `keyId` is trusted now with exactly this public key. */
  trusts(keyId: string, publicKey: Uint8Array, now = Date.now()): boolean {
    const key = this.#keys.get(keyId);
    return key !== undefined && (key.until === null || now <= key.until) && Buffer.from(key.publicKey).equals(Buffer.from(publicKey));
  }

  /** True when `signature` is a valid Ed25519 signature of exactly `bytes` by the trusted key `keyId`. */
  verify(bytes: Uint8Array, signature: Uint8Array, keyId: string, now = Date.now()): boolean {
    const key = this.#keys.get(keyId);
    if (!key || (key.until !== null && now > key.until) || key.publicKey.byteLength !== 32) return false;
    let object = this.#objects.get(keyId);
    if (!object) this.#objects.set(keyId, (object = ed25519PublicKey(key.publicKey)));
    return verifyEd25519(object, bytes, signature);
  }

  get keys(): TrustedKey[] {
    return [...this.#keys.values()].map((k) => ({ ...k }));
  }
}
