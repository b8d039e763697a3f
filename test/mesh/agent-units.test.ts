import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, sign } from 'node:crypto';
import { stat, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EventDispatcher } from '../../src/agent/mesh/dispatcher.js';
import { MeshAgent } from '../../src/agent/mesh/mesh-agent.js';
import type { Session } from '../../src/protocol/session.js';
import { EventVerifier } from '../../src/agent/mesh/verifier.js';
import { parseWgDump } from '../../src/agent/mesh/wg-apply.js';
import { renderWgQuick } from '../../src/agent/mesh/wg-config.js';
import { generateWgKeyPair, loadOrCreateWgKey, wgPublicKey } from '../../src/agent/mesh/wg-keys.js';
import { rawEd25519PublicKey, signingKeyId } from '../../src/contract/ed25519.js';
import { encodeEnvelope, encodeSnapshot, snapshotSigningBytes, type Envelope, type Snapshot } from '../../src/contract/mesh-events.js';
import { createLogger } from '../../src/util/logger.js';
import { tempDir } from '../server/helpers.js';

const HAVE_WG = (() => {
  try {
    execFileSync('wg', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

function signer() {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const raw = rawEd25519PublicKey(publicKey.export({ format: 'der', type: 'spki' }));
  return { keyId: signingKeyId(raw), publicKey: raw, sign: (b: Uint8Array) => sign(null, b, privateKey) };
}

describe('WireGuard keys', () => {
  it('are base64 of 32 bytes, clamped like wg genkey, with a matching public key', () => {
    const k = generateWgKeyPair();
    const raw = Buffer.from(k.privateKey, 'base64');
    expect(raw).toHaveLength(32);
    expect(raw[0]! & 7).toBe(0);
    expect(raw[31]! & 0xc0).toBe(0x40);
    expect(Buffer.from(k.publicKey, 'base64')).toHaveLength(32);
    expect(wgPublicKey(k.privateKey)).toBe(k.publicKey);
  });

  it.skipIf(!HAVE_WG)('agree with `wg pubkey` both ways (skipped: wg not installed)', () => {
    const k = generateWgKeyPair();
    expect(execFileSync('wg', ['pubkey'], { input: `${k.privateKey}\n`, encoding: 'utf8' }).trim()).toBe(k.publicKey);
    const fromWg = execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim();
    expect(wgPublicKey(fromWg)).toBe(execFileSync('wg', ['pubkey'], { input: `${fromWg}\n`, encoding: 'utf8' }).trim());
  });

  it('are kept in the state dir with mode 0600 and reused', async () => {
    const dir = await tempDir('ml-wgkey-');
    cleanups.push(dir.cleanup);
    const first = await loadOrCreateWgKey(dir.path);
    expect(first.created).toBe(true);
    expect((await stat(join(dir.path, 'wg.key'))).mode & 0o777).toBe(0o600);
    expect((await readFile(join(dir.path, 'wg.key'), 'utf8')).trim()).toBe(first.privateKey);
    const again = await loadOrCreateWgKey(dir.path);
    expect(again).toMatchObject({ created: false, publicKey: first.publicKey });
  });
});

describe('EventVerifier', () => {
  const env: Envelope = { seq: 1, type: 'rotate_keys', ts: 1, payload: { reason: 'x' } };

  it('accepts exactly the signed bytes from a trusted key; rejects tampering and unknown keys', () => {
    const s = signer();
    const v = new EventVerifier();
    v.trustWelcome([{ keyId: s.keyId, publicKey: s.publicKey }]);
    const bytes = encodeEnvelope(env);
    const sig = s.sign(bytes);
    expect(v.verify(bytes, sig, s.keyId)).toBe(true);
    const tampered = Uint8Array.from(bytes);
    tampered[tampered.length - 1]! ^= 1;
    expect(v.verify(tampered, sig, s.keyId)).toBe(false);
    const other = signer();
    expect(v.verify(bytes, other.sign(bytes), other.keyId)).toBe(false);
    expect(v.verify(bytes, other.sign(bytes), s.keyId)).toBe(false);
  });

  it('keeps the previous key only for the transition window after a rotation', () => {
    const a = signer();
    const b = signer();
    const v = new EventVerifier();
    v.trustWelcome([{ keyId: a.keyId, publicKey: a.publicKey }]);
    v.rotate({ keyId: b.keyId, publicKey: b.publicKey }, 1_000, 10_000);
    const bytes = encodeEnvelope(env);
    expect(v.verify(bytes, a.sign(bytes), a.keyId, 10_500)).toBe(true);
    expect(v.verify(bytes, b.sign(bytes), b.keyId, 10_500)).toBe(true);
    expect(v.verify(bytes, a.sign(bytes), a.keyId, 11_001)).toBe(false);
    expect(v.verify(bytes, b.sign(bytes), b.keyId, 99_999_999)).toBe(true);
  });
});

describe('EventDispatcher', () => {
  it('runs several handlers in order; a failure does not stop the rest; unknown types go to debug', async () => {
    const lines: string[] = [];
    const logger = createLogger({ name: 't', level: 'debug' });
    const log = new Proxy(logger, {
      get: (t, p) => (p === 'debug' || p === 'error' ? (_o: unknown, msg: string) => lines.push(`${String(p)}:${msg}`) : Reflect.get(t, p)),
    });
    const d = new EventDispatcher(log);
    const order: string[] = [];
    d.on('peer_removed', () => void order.push('first'));
    d.on('peer_removed', () => {
      order.push('second');
      throw new Error('boom');
    });
    d.on('peer_removed', async () => {
      await new Promise((r) => setTimeout(r, 5));
      order.push('third');
    });
    const r = await d.dispatch({ seq: 1, type: 'peer_removed', ts: 0, payload: { nodeIds: [] } });
    expect(order).toEqual(['first', 'second', 'third']);
    expect(r).toEqual({ handled: 3, failed: 1 });
    expect(lines).toContain('error:event handler failed');
    expect(await d.dispatch({ seq: 2, type: 'bridge_config_updated', ts: 0 })).toEqual({ handled: 0, failed: 0 });
    expect(lines).toContain('debug:no handler for event type; dropped');
  });
});

describe('wg-quick rendering and wg dump parsing', () => {
  it('renders interface and peers with PSKs', () => {
    const me = generateWgKeyPair();
    const peer = generateWgKeyPair();
    const psk = Buffer.alloc(32, 7).toString('base64');
    const text = renderWgQuick({ nodeId: 'n1', meshIp: '10.100.0.1', cidr: '10.100.0.0/16', peers: [{ nodeId: 'n2', meshIp: '10.100.0.2', publicKey: peer.publicKey, endpoints: ['192.0.2.2:51820'], psk }] }, me.privateKey, 51820);
    expect(text).toContain(`[Interface]\nPrivateKey = ${me.privateKey}\nAddress = 10.100.0.1/32\nListenPort = 51820\n`);
    expect(text).toContain(`[Peer]\nPublicKey = ${peer.publicKey}\nPresharedKey = ${psk}\nAllowedIPs = 10.100.0.2/32\nEndpoint = 192.0.2.2:51820\nPersistentKeepalive = 25\n`);
  });

  it('parses `wg show dump`', () => {
    const dump = 'PRIV\tPUB\t51820\toff\nPEER1\tPSK1\t10.0.0.2:51820\t10.100.0.2/32\t1764800000\t1234\t5678\t25\nPEER2\t(none)\t(none)\t(none)\t0\t0\t0\toff\n';
    expect(parseWgDump(dump)).toEqual({
      publicKey: 'PUB',
      listenPort: 51820,
      peers: [
        // latest-handshake is in seconds; 0 means none.
        { publicKey: 'PEER1', psk: 'PSK1', endpoint: '10.0.0.2:51820', allowedIps: ['10.100.0.2/32'], handshakeAt: 1_764_800_000_000, rxBytes: 1234, txBytes: 5678 },
        { publicKey: 'PEER2', psk: null, endpoint: null, allowedIps: [], handshakeAt: null, rxBytes: 0, txBytes: 0 },
      ],
    });
  });
});

describe('MeshAgent and invalid peer entries (issue 17, item 1)', () => {
  const peer = (n: number, over: Record<string, unknown> = {}) => ({ nodeId: `n${n}`, meshIp: `10.100.0.${n}`, publicKey: Buffer.alloc(32, n).toString('base64'), endpoints: [`192.0.2.${n}:51820`], psk: Buffer.alloc(32, 100 + n).toString('base64'), ...over });

  async function agentWith() {
    const s = signer();
    const dir = await tempDir('ml-mesh-skip-');
    cleanups.push(dir.cleanup);
    const mesh = await MeshAgent.create({ stateDir: dir.path, logger: createLogger({ name: 't', level: 'silent' }), persist: false });
    mesh.verifier.trustWelcome([{ keyId: s.keyId, publicKey: s.publicKey }]);
    const closedSession = { state: 'closed' } as unknown as Session;
    // The envelope is built by hand (not through the payload types): it carries what a bad server sent.
    const deliver = (env: { seq: number; type: string; ts: number; payload: unknown }) => {
      const bytes = encodeEnvelope(env as Envelope);
      return mesh.receive({ envelope: bytes as Uint8Array<ArrayBuffer>, signature: s.sign(bytes), keyId: s.keyId }, closedSession);
    };
    return { mesh, deliver, sign: (bytes: Uint8Array) => s.sign(bytes), keyId: s.keyId };
  }

  it('skips one bad peer of a snapshot or a peer event, applies the rest, and counts it', async () => {
    const { mesh, deliver } = await agentWith();
    await deliver({ seq: 1, type: 'node_state_updated', ts: 1, payload: { state: { nodeId: 'me', meshIp: '10.100.0.1', cidr: '10.100.0.0/16', peers: [peer(2), peer(3, { publicKey: 'not a key' })] } } });
    expect(mesh.lastEventSeq).toBe(1);
    expect(mesh.state!.peers.map((p) => p.nodeId)).toEqual(['n2']);
    await deliver({ seq: 2, type: 'peer_added', ts: 2, payload: { peers: [peer(4, { endpoints: ['no port'] }), peer(5)] } });
    await deliver({ seq: 3, type: 'peer_key_rotated', ts: 3, payload: { peers: [{ nodeId: 'n2', publicKey: '!!' }, { nodeId: 'n5', publicKey: Buffer.alloc(32, 55).toString('base64') }] } });
    expect(mesh.lastEventSeq).toBe(3);
    expect(mesh.state!.peers.map((p) => p.nodeId)).toEqual(['n2', 'n5']);
    expect(mesh.state!.peers[0]!.publicKey).toBe(peer(2).publicKey);
    expect(mesh.state!.peers[1]!.publicKey).toBe(Buffer.alloc(32, 55).toString('base64'));
    expect(mesh.skippedPeerEntries).toBe(3);
    expect(mesh.status().skippedPeerEntries).toBe(3);
  });

  it('applies a reconciliation state without its bad peer', async () => {
    const { mesh, sign, keyId } = await agentWith();
    const state = { nodeId: 'me', meshIp: '10.100.0.1', cidr: '10.100.0.0/16', peers: [peer(2), peer(3, { endpoints: ['x'] })] };
    // A signed snapshot (the trust model) whose state carries one bad peer entry.
    const bytes = encodeSnapshot({ nodeId: 'me', seq: 7, digest: 'd'.repeat(64), ts: 1, state } as unknown as Snapshot);
    const session = {
      state: 'open',
      request: async () => ({ rid: 1, inSync: false, snapshot: { bytes, signature: sign(snapshotSigningBytes(bytes)), keyId } }),
      send: () => true,
    } as unknown as Session;
    const result = await mesh.reconcile(session);
    expect(result.inSync).toBe(false);
    expect(mesh.state!.peers.map((p) => p.nodeId)).toEqual(['n2']);
    expect(mesh.lastEventSeq).toBe(7);
    expect(mesh.skippedPeerEntries).toBe(1);
  });
});
