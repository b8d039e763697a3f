import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Session } from '../../src/protocol/session.js';
import { Store } from '../../src/server/store/store.js';
import { openServerStore } from '../../src/server/features.js';
import { createToken, hashToken } from '../../src/server/tokens.js';
import { verifyEd25519 } from '../../src/contract/ed25519.js';
import { decodeEnvelope, type Envelope } from '../../src/contract/mesh-events.js';
import { createLogger } from '../../src/util/logger.js';

export const silent = createLogger({ name: 'test', level: 'silent' });

export async function tempStore(): Promise<{ store: Store; dir: string; reopen(): Store; cleanup(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'ml-mesh-'));
  const path = join(dir, 'meshlink.db');
  const handle = {
    store: openServerStore(path),
    dir,
    reopen() {
      handle.store.close();
      handle.store = openServerStore(path);
      return handle.store;
    },
    async cleanup() {
      handle.store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return handle;
}

/** Enrolls a node the way the enrollment commit does (token consumed, node row, certificate row). */
export function enrollNode(store: Store, hostname: string, tags: string[] = []): string {
  const { token } = createToken(store, { ttlMs: 60_000, tags });
  const id = randomUUID();
  const ok = store.commitEnrollment({
    tokenHash: hashToken(token),
    now: Date.now(),
    node: { id, hostname, agentVersion: null, existing: false },
    cert: { serial: randomUUID().replace(/-/g, ''), notBefore: Date.now(), notAfter: Date.now() + 86_400_000, pem: 'test' },
  });
  if (!ok) throw new Error('enrollment commit failed');
  return id;
}

export interface SentEvent {
  envelope: Envelope;
  bytes: Uint8Array;
  signature: Uint8Array;
  keyId: string;
}

/** A stand-in for a live session that records the events sent to it (unit tests of the service only). */
export function recordingSession(): { session: Session; sent: SentEvent[] } {
  const sent: SentEvent[] = [];
  const session = {
    state: 'open',
    send(kind: string, payload: { envelope: Uint8Array; signature: Uint8Array; keyId: string }) {
      if (kind !== 'event') throw new Error(`unexpected ${kind}`);
      const d = decodeEnvelope(payload.envelope);
      if (!d.known) throw new Error('unknown type');
      sent.push({ envelope: d.envelope, bytes: payload.envelope, signature: payload.signature, keyId: payload.keyId });
      return true;
    },
  } as unknown as Session;
  return { session, sent };
}

export function verifies(e: SentEvent, keys: Array<{ keyId: string; publicKey: Uint8Array }>): boolean {
  const key = keys.find((k) => k.keyId === e.keyId);
  return key !== undefined && verifyEd25519(key.publicKey, e.bytes, e.signature);
}

export function wgKey(n: number): string {
  return Buffer.alloc(32, n).toString('base64');
}
