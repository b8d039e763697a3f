import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../util/atomic-file.js';
import { wgKeySchema } from '../../contract/mesh-events.js';

/**
 * WireGuard keys: X25519 from node:crypto, written as `wg genkey` / `wg pubkey` do (base64 of the raw
 * 32 bytes). The private key lives in `<stateDir>/wg.key`, mode 0600, written atomically.
 */

export const WG_KEY_FILE = 'wg.key';

const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
const X25519_SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

export interface WgKeyPair {
  privateKey: string;
  publicKey: string;
}

export function generateWgKeyPair(): WgKeyPair {
  const { privateKey } = generateKeyPairSync('x25519');
  const raw = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(X25519_PKCS8_PREFIX.length);
  // Clamp like `wg genkey`, so the file is byte-identical to what wg would have written.
  const clamped = Buffer.from(raw);
  clamped[0]! &= 248;
  clamped[31]! = (clamped[31]! & 127) | 64;
  const priv = clamped.toString('base64');
  return { privateKey: priv, publicKey: wgPublicKey(priv) };
}

/** The public key of a base64 private key (`wg pubkey`). */
export function wgPublicKey(privateKeyB64: string): string {
  const raw = Buffer.from(wgKeySchema.parse(privateKeyB64), 'base64');
  const key = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
  return createPublicKey(key).export({ format: 'der', type: 'spki' }).subarray(X25519_SPKI_PREFIX.length).toString('base64');
}

/** Loads the key pair from the state dir, creating it on first use. */
export async function loadOrCreateWgKey(stateDir: string): Promise<WgKeyPair & { created: boolean }> {
  const path = join(stateDir, WG_KEY_FILE);
  try {
    const priv = (await readFile(path, 'utf8')).trim();
    return { privateKey: priv, publicKey: wgPublicKey(priv), created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const pair = generateWgKeyPair();
  await saveWgKey(stateDir, pair.privateKey);
  return { ...pair, created: true };
}

export async function saveWgKey(stateDir: string, privateKeyB64: string): Promise<void> {
  await writeFileAtomic(join(stateDir, WG_KEY_FILE), `${privateKeyB64}\n`, { mode: 0o600 });
}
