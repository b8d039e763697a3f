import { generateKeyPairSync, sign } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MeshAgent } from '../../src/agent/mesh/mesh-agent.js';
import { readApplied, readMeshStatus } from '../../src/agent/mesh/state-file.js';
import { WG_CONFIG_FILE } from '../../src/agent/mesh/wg-config.js';
import { rawEd25519PublicKey, signingKeyId } from '../../src/contract/ed25519.js';
import { encodeEnvelope, stateDigest, type Envelope, type EventType, type EventPayload } from '../../src/contract/mesh-events.js';
import type { Session } from '../../src/protocol/session.js';
import { createLogger } from '../../src/util/logger.js';
import { tempDir } from '../server/helpers.js';

/**
 * The agent applying relay_session_assigned / relay_session_revoked: signed events through the real
 * verifier, dispatcher and state files; the WireGuard configuration the agent renders (wg-meshlink.conf)
 * is what a `wg-quick up` would use, so its Endpoint lines are the data plane's endpoints.
 */

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

// Peers as a server with path choice sends them: n3's pair is the one it marks for a relay.
const peer = (n: number) => ({ nodeId: `n${n}`, meshIp: `10.100.0.${n}`, publicKey: Buffer.alloc(32, n).toString('base64'), endpoints: [`192.0.2.${n}:51820`], psk: Buffer.alloc(32, 100 + n).toString('base64'), path: n === 3 ? ('relay' as const) : ('direct' as const) });

async function agent(stateDir?: string) {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const raw = rawEd25519PublicKey(publicKey.export({ format: 'der', type: 'spki' }));
  const keyId = signingKeyId(raw);
  let dir = stateDir;
  if (!dir) {
    const d = await tempDir('ml-mesh-relay-');
    cleanups.push(d.cleanup);
    dir = d.path;
  }
  const mesh = await MeshAgent.create({ stateDir: dir, logger: createLogger({ name: 't', level: 'silent' }), endpoints: ['198.51.100.1:51820'] });
  cleanups.unshift(() => mesh.close());
  mesh.verifier.trustWelcome([{ keyId, publicKey: raw }]);
  const closedSession = { state: 'closed' } as unknown as Session;
  let seq = mesh.lastEventSeq;
  const deliver = <T extends EventType>(type: T, payload: EventPayload<T>) => {
    const bytes = encodeEnvelope({ seq: ++seq, type, ts: Date.now(), payload } as Envelope);
    return mesh.receive({ envelope: bytes as Uint8Array<ArrayBuffer>, signature: sign(null, bytes, privateKey), keyId }, closedSession);
  };
  const endpointsInConfig = async () => {
    const text = await readFile(join(dir, WG_CONFIG_FILE), 'utf8');
    // [Peer] sections in order, each with its PublicKey and Endpoint.
    return text.split('[Peer]').slice(1).map((section) => ({ key: /PublicKey = (\S+)/.exec(section)![1], endpoint: /Endpoint = (\S+)/.exec(section)?.[1] ?? null }));
  };
  return { mesh, deliver, dir, endpointsInConfig };
}

describe('MeshAgent and relay sessions', () => {
  it('uses the relay endpoint for the assigned peer only, and the peer’s own again after the revoke', async () => {
    const { mesh, deliver, dir, endpointsInConfig } = await agent();
    await deliver('node_state_updated', { state: { nodeId: 'me', meshIp: '10.100.0.1', cidr: '10.100.0.0/16', peers: [peer(2), peer(3)] } });
    const digest = stateDigest(mesh.state!);
    expect(await endpointsInConfig()).toEqual([
      { key: peer(2).publicKey, endpoint: '192.0.2.2:51820' },
      { key: peer(3).publicKey, endpoint: '192.0.2.3:51820' },
    ]);

    await deliver('relay_session_assigned', { sessionId: 'r1', peerNodeId: 'n3', endpoint: '203.0.113.9:40001', expiresAt: Date.now() + 120_000 });
    expect(mesh.lastEventSeq).toBe(2);
    expect(await endpointsInConfig()).toEqual([
      { key: peer(2).publicKey, endpoint: '192.0.2.2:51820' },
      { key: peer(3).publicKey, endpoint: '203.0.113.9:40001' },
    ]);
    // The state (and so its digest, which reconciliation compares with the server's) keeps the peer's own endpoints.
    expect(mesh.state!.peers[1]!.endpoints).toEqual(['192.0.2.3:51820']);
    expect(stateDigest(mesh.state!)).toBe(digest);
    const status = await readMeshStatus(dir);
    expect(status.peers!.map((p) => [p.nodeId, p.path, p.relay, p.endpoints])).toEqual([
      ['n2', 'direct', null, ['192.0.2.2:51820']],
      ['n3', 'relay', '203.0.113.9:40001', ['192.0.2.3:51820']],
    ]);

    // A revoke of another session (an older one, late) changes nothing.
    await deliver('relay_session_revoked', { sessionId: 'r0', peerNodeId: 'n3', reason: 'expired' });
    expect((await endpointsInConfig())[1]!.endpoint).toBe('203.0.113.9:40001');
    await deliver('relay_session_revoked', { sessionId: 'r1', peerNodeId: 'n3', reason: 'direct path works' });
    expect(await endpointsInConfig()).toEqual([
      { key: peer(2).publicKey, endpoint: '192.0.2.2:51820' },
      { key: peer(3).publicKey, endpoint: '192.0.2.3:51820' },
    ]);
    // Revoked: WireGuard is back on n3's own endpoint; the server's path for the pair is still `relay`.
    expect((await readMeshStatus(dir)).peers!.map((p) => [p.path, p.relay, p.endpoint])).toEqual([
      ['direct', null, '192.0.2.2:51820'],
      ['relay', null, '192.0.2.3:51820'],
    ]);
    expect(mesh.lastEventSeq).toBe(4);
  });

  it('keeps a relay session across a restart, a new assignment replaces the old, and a removed peer loses it', async () => {
    const first = await agent();
    await first.deliver('node_state_updated', { state: { nodeId: 'me', meshIp: '10.100.0.1', cidr: '10.100.0.0/16', peers: [peer(2), peer(3)] } });
    await first.deliver('relay_session_assigned', { sessionId: 'r1', peerNodeId: 'n2', endpoint: '203.0.113.9:40001' });
    await first.deliver('relay_session_assigned', { sessionId: 'r7', peerNodeId: 'n2', endpoint: '203.0.113.9:40013' });
    await first.deliver('relay_session_assigned', { sessionId: 'r8', peerNodeId: 'n3', endpoint: '203.0.113.9:40015' });
    expect((await readApplied(first.dir)).relays).toEqual([
      { peerNodeId: 'n2', sessionId: 'r7', endpoint: '203.0.113.9:40013' },
      { peerNodeId: 'n3', sessionId: 'r8', endpoint: '203.0.113.9:40015' },
    ]);
    // The old session's revoke does not undo the new one.
    await first.deliver('relay_session_revoked', { sessionId: 'r1', peerNodeId: 'n2' });
    await first.mesh.close();

    const again = await agent(first.dir);
    expect(again.mesh.status().peers.map((p) => p.relay)).toEqual(['203.0.113.9:40013', '203.0.113.9:40015']);
    // The next event re-renders the configuration from the restored relays; a removed peer takes its relay session with it.
    await again.deliver('peer_removed', { nodeIds: ['n3'] });
    expect(await again.endpointsInConfig()).toEqual([{ key: peer(2).publicKey, endpoint: '203.0.113.9:40013' }]);
    expect((await readApplied(first.dir)).relays).toEqual([{ peerNodeId: 'n2', sessionId: 'r7', endpoint: '203.0.113.9:40013' }]);
  });

  it('refuses a relay event whose endpoint is not HOST:PORT (the event is dropped, nothing applied)', async () => {
    const { mesh, deliver, endpointsInConfig } = await agent();
    await deliver('node_state_updated', { state: { nodeId: 'me', meshIp: '10.100.0.1', cidr: '10.100.0.0/16', peers: [peer(2)] } });
    await deliver('relay_session_assigned', { sessionId: 'r1', peerNodeId: 'n2', endpoint: 'no port here' });
    expect(mesh.lastEventSeq).toBe(1);
    expect(await endpointsInConfig()).toEqual([{ key: peer(2).publicKey, endpoint: '192.0.2.2:51820' }]);
    expect(mesh.status().peers[0]!.path).toBe('direct');
  });
});
