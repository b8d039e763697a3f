import { randomBytes, randomUUID } from 'node:crypto';
import { SealingSecret } from '../../src/server/ca-key-crypto.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AgentHandle } from '../../src/server/agent-sessions.js';
import type { DeliverySessions } from '../../src/server/mesh/delivery.js';
import { Store } from '../../src/server/store/store.js';
import { openServerStore } from '../../src/server/features.js';
import { MeshStore } from '../../src/server/mesh/store.js';
import { createToken, hashToken } from '../../src/server/tokens.js';
import { verifyEd25519 } from '../../src/contract/ed25519.js';
import { decodeEnvelope, type Envelope } from '../../src/contract/mesh-events.js';
import { createLogger } from '../../src/util/logger.js';

export const silent = createLogger({ name: 'test', level: 'silent' });

/** A sealing secret as the key file gives one (random key bytes, no passphrase). */
export function testSealing(passphrase = ''): SealingSecret {
  return new SealingSecret(randomBytes(32), passphrase);
}

export async function tempStore(): Promise<{ store: Store; dir: string; sealing: SealingSecret; reopen(): Promise<Store>; cleanup(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'ml-mesh-'));
  const path = join(dir, 'meshlink.db');
  const handle = {
    store: await openServerStore(path),
    dir,
    sealing: testSealing(),
    async reopen() {
      await handle.store.close();
      handle.store = await openServerStore(path);
      return handle.store;
    },
    async cleanup() {
      await handle.store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return handle;
}

/**
 * Enrolls a node the way the enrollment commit does (token consumed, node row, certificate row), with
 * the mesh's commit hook giving the node its token's tags in the same transaction.
 */
export async function enrollNode(store: Store, hostname: string, tags: string[] = []): Promise<string> {
  const { token } = await createToken(store, { ttlMs: 60_000 });
  const mesh = new MeshStore(store.database);
  if (tags.length > 0) await mesh.tagToken(hashToken(token), tags);
  const id = randomUUID();
  const ok = await store.commitEnrollment(
    {
      tokenHash: hashToken(token),
      now: Date.now(),
      node: { id, hostname, agentVersion: null, existing: false },
      cert: { serial: randomUUID().replace(/-/g, ''), notBefore: Date.now(), notAfter: Date.now() + 86_400_000, pem: 'test' },
    },
    (commit, tx) => mesh.claimTokenTags(commit.tokenHash, commit.node.id, tx),
  );
  if (!ok) throw new Error('enrollment commit failed');
  return id;
}

export interface SentEvent {
  envelope: Envelope;
  bytes: Uint8Array;
  signature: Uint8Array;
  keyId: string;
}

/** One session of a recording facade: the handle delivery sees, and the events sent on it. */
export interface RecordingAgent {
  agent: AgentHandle;
  sent: SentEvent[];
}

/**
 * A stand-in for the sessions facade that records the events sent on each session (unit tests of the
 * service only; test/mesh/delivery.test.ts runs delivery over the real SessionHost). `connect` opens
 * a new session for a node, which becomes its current one; `disconnect` takes the node offline.
 */
export function recordingSessions(): DeliverySessions & { connect(nodeId: string): RecordingAgent; disconnect(nodeId: string): void } {
  const current = new Map<string, RecordingAgent & { open: boolean }>();
  const byHandle = new WeakMap<AgentHandle, RecordingAgent & { open: boolean }>();
  return {
    connect(nodeId) {
      const previous = current.get(nodeId);
      if (previous) previous.open = false;
      const entry = { agent: undefined as unknown as AgentHandle, sent: [] as SentEvent[], open: true };
      entry.agent = {
        nodeId,
        info: { nodeId, hostname: nodeId, certSerial: '01', certNotAfter: Date.now() + 86_400_000, remoteAddress: '127.0.0.1' },
        hello: { versions: [1], agentVersion: 't' },
        connectedAt: Date.now(),
        get open() {
          return entry.open;
        },
        streamCount: 0,
        flowControlStalls: 0,
        inflightBytes: 0,
      } as AgentHandle;
      current.set(nodeId, entry);
      byHandle.set(entry.agent, entry);
      return entry;
    },
    disconnect(nodeId) {
      const entry = current.get(nodeId);
      if (entry) entry.open = false;
      current.delete(nodeId);
    },
    current: (nodeId) => current.get(nodeId)?.agent,
    send(agent, kind, payload) {
      const entry = byHandle.get(agent);
      if (!entry?.open) return 'closed';
      if (kind !== 'event') throw new Error(`unexpected ${kind}`);
      const p = payload as { envelope: Uint8Array; signature: Uint8Array; keyId: string };
      const d = decodeEnvelope(p.envelope);
      if (!d.known) throw new Error('unknown type');
      entry.sent.push({ envelope: d.envelope, bytes: p.envelope, signature: p.signature, keyId: p.keyId });
      return 'sent';
    },
    drained: () => Promise.resolve(),
  };
}

export function verifies(e: SentEvent, keys: Array<{ keyId: string; publicKey: Uint8Array }>): boolean {
  const key = keys.find((k) => k.keyId === e.keyId);
  return key !== undefined && verifyEd25519(key.publicKey, e.bytes, e.signature);
}

export function wgKey(n: number): string {
  return Buffer.alloc(32, n).toString('base64');
}
