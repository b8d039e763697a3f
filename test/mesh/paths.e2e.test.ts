import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { decodeFrame, type DecodedMessage } from '../../src/protocol/codec.js';
import { FrameDecoder } from '../../src/protocol/decoder.js';
import type { InputOf } from '../../src/protocol/registry.js';
import { AdminClient } from '../../src/admin-api/client.js';
import * as api from '../../src/admin-api/routes.js';
import { cli } from '../e2e/harness.js';
import { frame } from '../helpers/raw-agent.js';
import { dialConnect, enrollNode, startTestServer, type TestServer } from '../server/helpers.js';
import { wgKey } from './helpers.js';
import { createMeshFeature, type MeshService } from '../../src/server/mesh/index.js';
import type { UdpRelay } from '../../src/server/mesh/relay.js';
import type { RelaySessions } from '../../src/server/mesh/relay-sessions.js';
import { createObservabilityFeature } from '../../src/server/observability/index.js';

async function scrape(): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  return res.text();
}

/**
 * Path choice through the real server (TLS on loopback, a real SQLite store): agents that report NAT
 * classes in hello get the paths of issue 15 in `server nodes show --json` (a real CLI process over
 * the admin socket), peers of direct pairs are told the reflexive endpoint, a changed report moves a
 * pair, and a malformed report is refused. The agents are raw protocol clients, so each test chooses
 * exactly what a node reports.
 */

type Nat = NonNullable<InputOf<'hello'>['nat']>;
interface Node {
  name: string;
  nodeId: string;
  tls: { ca: string; cert: string; key: string };
  key: string;
  endpoints: string[];
  ws: WebSocket | null;
}

let ts: TestServer;
let metricsPort = 0;
let mesh: MeshService;
let relay: UdpRelay;
let relaySessions: RelaySessions;
const nodes: Record<string, Node> = {};

/** Connects `node` with a hello that reports `nat`; resolves on welcome, or with the close of a refusal. */
async function connect(node: Node, nat: Nat | undefined): Promise<{ welcome: boolean; close?: number }> {
  node.ws?.terminate();
  const out = await dialConnect(ts.url, node.tls);
  if (out.kind !== 'open') throw new Error(`connect failed: ${JSON.stringify(out)}`);
  const ws = out.ws;
  node.ws = ws;
  const decoder = new FrameDecoder();
  return new Promise((resolve) => {
    ws.on('message', (data: Buffer) => {
      for (const f of decoder.push(new Uint8Array(data))) {
        const m: DecodedMessage = decodeFrame(f, 1024 * 1024);
        if (m.name === 'welcome') resolve({ welcome: true });
      }
    });
    ws.once('close', (code) => resolve({ welcome: false, close: code }));
    const hello: InputOf<'hello'> = { versions: [1], agentVersion: 'paths-test', hostname: node.name, lastEventSeq: 0, wgPublicKey: node.key, endpoints: node.endpoints, ...(nat ? { nat } : {}) };
    ws.send(Buffer.from(frame('hello', 0, hello)), { binary: true });
  });
}

interface Shown {
  id: string;
  mesh?: { nat: Nat | null; observedAddress: string | null; peers: Array<{ nodeId: string; hostname: string | null; path: string | null; endpoint: string | null; lastHandshake: string | null }> };
}

async function show(name: string): Promise<Shown> {
  const r = await cli(['server', 'nodes', 'show', name, '--json', '--data-dir', ts.dataDir]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Shown;
}

/** Polls `nodes show` until `ok` holds (generous deadline: recomputes run after the hello). */
async function showUntil(name: string, ok: (s: Shown) => boolean, what: string): Promise<Shown> {
  const deadline = Date.now() + 90_000;
  let last: Shown | null = null;
  while (Date.now() < deadline) {
    last = await show(name);
    if (ok(last)) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what}: not reached; last: ${JSON.stringify(last)}`);
}

async function waitUntil(ok: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 90_000;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const peerOf = (s: Shown, name: string) => s.mesh?.peers.find((p) => p.nodeId === nodes[name]!.nodeId);
const hasAll = (s: Shown, names: string[]): boolean => names.every((n) => peerOf(s, n)?.path != null);

const NATS: Record<string, Nat> = {
  hard: { mapping: 'endpoint-dependent', reflexive: '198.51.100.10:40001' },
  easy1: { mapping: 'endpoint-independent', reflexive: '198.51.100.20:51820' },
  easy2: { mapping: 'endpoint-independent', reflexive: '198.51.100.30:51820' },
  public: { mapping: 'none', reflexive: '192.0.2.40:51820' },
};

beforeAll(async () => {
  ts = await startTestServer(
    // The relay on loopback, announced at a documentation address (what agents would be told).
    { stunListen: null, relayListen: { host: '127.0.0.1', ports: null }, relayPublicHost: '203.0.113.50' },
    {
      features: [
        createMeshFeature({
          onStarted: (m) => (mesh = m),
          onRelayStarted: (r, s) => {
            relay = r;
            relaySessions = s;
          },
        }),
        createObservabilityFeature({ listen: { host: '127.0.0.1', port: 0 }, onStarted: (h) => (metricsPort = h.address.port) }),
      ],
    },
  );
  let i = 1;
  for (const name of Object.keys(NATS)) {
    const enrolled = await enrollNode(ts, name);
    nodes[name] = { name, nodeId: enrolled.nodeId, tls: { ca: enrolled.caPem, cert: enrolled.certPem, key: enrolled.keyPem }, key: wgKey(i), endpoints: [name === 'public' ? '192.0.2.40:51820' : `10.0.${i}.1:51820`], ws: null };
    i++;
  }
  for (const name of Object.keys(NATS)) expect((await connect(nodes[name]!, NATS[name])).welcome).toBe(true);
}, 60_000);

afterAll(async () => {
  for (const n of Object.values(nodes)) n.ws?.terminate();
  await ts?.stop();
});

describe('path choice through the real server', () => {
  it('nodes show --json gives each pair the path of the two reported classes', async () => {
    const others = (name: string) => Object.keys(NATS).filter((n) => n !== name);
    // A relayed peer shows the relay endpoint WireGuard sends to, once the server has assigned it.
    const relayed = (s: Shown, name: string) => /^203\.0\.113\.50:\d+$/.test(peerOf(s, name)?.endpoint ?? '');
    const hard = await showUntil('hard', (s) => hasAll(s, others('hard')) && relayed(s, 'easy1') && relayed(s, 'easy2'), 'hard has its three peers, two relayed');
    expect(hard.mesh!.nat).toEqual(NATS.hard);
    // The control connection's address is a hint for the operator, never a peer's UDP endpoint.
    expect(hard.mesh!.observedAddress).toBe('127.0.0.1');
    expect(peerOf(hard, 'easy1')).toMatchObject({ path: 'relay', lastHandshake: null });
    expect(peerOf(hard, 'easy2')).toMatchObject({ path: 'relay' });
    // Each member has its own port of the allocation.
    expect(peerOf(hard, 'easy1')!.endpoint).not.toBe(peerOf(hard, 'easy2')!.endpoint);
    expect(peerOf(hard, 'public')).toMatchObject({ path: 'direct', endpoint: '192.0.2.40:51820' });

    const easy1 = await showUntil('easy1', (s) => hasAll(s, others('easy1')) && relayed(s, 'hard'), 'easy1 has its three peers, hard relayed');
    expect(peerOf(easy1, 'hard')!.path).toBe('relay');
    expect(peerOf(easy1, 'hard')!.endpoint).not.toBe(peerOf(hard, 'easy1')!.endpoint);
    // Both endpoint-independent: direct, to the peer's reflexive endpoint.
    expect(peerOf(easy1, 'easy2')).toMatchObject({ path: 'direct', endpoint: '198.51.100.30:51820' });
    expect(peerOf(easy1, 'public')).toMatchObject({ path: 'direct', endpoint: '192.0.2.40:51820' });

    // A public node reaches a hard-NAT node directly at its reflexive endpoint (the hard side sends first).
    const pub = await showUntil('public', (s) => hasAll(s, others('public')), 'public has its three peers');
    expect(peerOf(pub, 'hard')).toMatchObject({ path: 'direct', endpoint: '198.51.100.10:40001' });
    expect(peerOf(pub, 'easy1')).toMatchObject({ path: 'direct', endpoint: '198.51.100.20:51820' });
    for (const s of [hard, easy1, pub]) for (const p of s.mesh!.peers) expect(p.endpoint).not.toMatch(/^127\./);

    // Six pairs: hard–easy1 and hard–easy2 relayed, the other four direct.
    const text = await scrape();
    expect(text).toMatch(/^meshlink_mesh_pairs\{path="direct"\} 4$/m);
    expect(text).toMatch(/^meshlink_mesh_pairs\{path="relay"\} 2$/m);
  }, 240_000);

  it('the server relays the relay pairs by itself: one allocation each, both members assigned, latching from the observed IPs', async () => {
    const id = (name: string) => nodes[name]!.nodeId;
    const pairOf = (x: string, y: string) => [id(x), id(y)].sort().join(' ');
    const held = () => relaySessions.list().map((s) => `${s.a} ${s.b}`).sort();
    await waitUntil(() => held().length === 2, 'two relay sessions');
    expect(held()).toEqual([pairOf('hard', 'easy1'), pairOf('hard', 'easy2')].sort());
    expect(relay.size).toBe(2);
    // The member IPs: the control connection's source and the reflexive endpoint's host.
    const allocation = relay.get(id('hard'), id('easy1'))!;
    const hardSide = allocation.a.nodeId === id('hard') ? allocation.a : allocation.b;
    expect(hardSide.ips.sort()).toEqual(['127.0.0.1', '198.51.100.10']);
    // And both members' WireGuard keys: the relay checks every handshake's MAC1 under its receiver's.
    expect([allocation.a, allocation.b].map((m) => m.publicKey).sort()).toEqual([nodes.hard!.key, nodes.easy1!.key].sort());
    // Persisted with the events, so that a restarted server revokes them.
    expect(mesh.heldRelaySessions().map((h) => h.sessionId).sort()).toEqual(relaySessions.list().map((s) => s.id).sort());
    const text = await scrape();
    expect(text).toMatch(/^meshlink_relay_allocations 2$/m);
  }, 240_000);

  it('the human form of nodes show lists each peer with its path', async () => {
    const r = await cli(['server', 'nodes', 'show', 'easy1', '--data-dir', ts.dataDir]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/nat\s+endpoint-independent, public 198\.51\.100\.20:51820/);
    expect(r.stdout).toMatch(/hard\s+relay\s+203\.0\.113\.50:\d+/);
    expect(r.stdout).toMatch(/easy2\s+direct\s+198\.51\.100\.30:51820/);
  }, 240_000);

  it('mesh/peers (the console\'s peers table) gives the path the server told the node for each peer', async () => {
    const told = await new AdminClient(ts.server.adminSocketPath).call(api.showPeers, { node: 'easy1' });
    const byName = new Map(told.peers.map((p) => [p.hostname, p.path]));
    expect(Object.fromEntries(byName)).toEqual({ hard: 'relay', easy2: 'direct', public: 'direct' });
  }, 60_000);

  it('a node whose next hello reports another class moves its pairs', async () => {
    expect((await connect(nodes.easy2!, { mapping: 'endpoint-dependent', reflexive: '198.51.100.30:50000' })).welcome).toBe(true);
    const easy1 = await showUntil('easy1', (s) => peerOf(s, 'easy2')?.path === 'relay' && /^203\.0\.113\.50:/.test(peerOf(s, 'easy2')!.endpoint ?? ''), 'easy1–easy2 relayed');
    // Three relay pairs now, each with its allocation.
    await waitUntil(() => relaySessions.list().length === 3 && relay.size === 3, 'three relay sessions');
    const easyPair = relaySessions.list().find((s) => [s.a, s.b].sort().join() === [nodes.easy1!.nodeId, nodes.easy2!.nodeId].sort().join())!;
    expect(easyPair).toBeDefined();
    expect(peerOf(easy1, 'easy2')!.endpoint).toMatch(/^203\.0\.113\.50:\d+$/);
    const pub = await showUntil('public', (s) => peerOf(s, 'easy2')?.endpoint === '198.51.100.30:50000', 'public told the new reflexive endpoint');
    expect(peerOf(pub, 'easy2')!.path).toBe('direct');
    // And back.
    expect((await connect(nodes.easy2!, NATS.easy2)).welcome).toBe(true);
    await showUntil('easy1', (s) => peerOf(s, 'easy2')?.path === 'direct' && peerOf(s, 'easy2')?.endpoint === '198.51.100.30:51820', 'easy1–easy2 direct again');
    // Direct again: its session revoked (no longer held) and its ports freed.
    await waitUntil(() => relaySessions.list().length === 2 && relay.size === 2, 'back to two relay sessions');
    expect(relaySessions.list().map((s) => s.id)).not.toContain(easyPair.id);
    expect(mesh.heldRelaySessions().map((h) => h.sessionId)).not.toContain(easyPair.id);
    expect(relay.get(nodes.easy1!.nodeId, nodes.easy2!.nodeId)).toBeNull();
  }, 240_000);

  it('a malformed NAT report is refused with ML_ERR_BAD_PAYLOAD (close 4004) and changes nothing', async () => {
    const before = await show('hard');
    const refused = await connect(nodes.hard!, { mapping: 'symmetric', reflexive: '198.51.100.10:1' });
    expect(refused).toEqual({ welcome: false, close: 4004 });
    const refusedEndpoint = await connect(nodes.hard!, { mapping: 'none', reflexive: 'not an endpoint' });
    expect(refusedEndpoint.close).toBe(4004);
    const after = await show('hard');
    expect(after.mesh!.nat).toEqual(before.mesh!.nat);
  }, 240_000);
});
