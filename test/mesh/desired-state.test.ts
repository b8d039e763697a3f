import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { MeshState, PeerInfo } from '../../src/contract/mesh-events.js';
import { desiredState, pairKey, viewChange, type Announced, type MeshInputs, type PeerFacts, type ViewChange } from '../../src/server/mesh/desired-state.js';
import { applyViewChange } from '../../src/server/mesh/model.js';
import type { Policy } from '../../src/admin-api/policy.js';
import { permittedPeers } from '../../src/server/mesh/policy.js';

/**
 * Properties of the pure desired-state module over random small meshes: random tags, policies,
 * missing WireGuard keys and missing PSKs. Each property runs a bounded number of cases so the suite
 * stays fast on a loaded machine.
 */

const RUNS = { numRuns: 200 };
const TAGS = ['web', 'db', 'ops'] as const;
const BASE_IP = 0x0a64_0001; // 10.100.0.1

interface NodeSpec {
  publicKey: string | null;
  endpoints: string[];
  tags: string[];
  ipOffset: number;
}

const keyArb = fc.integer({ min: 1, max: 255 }).map((n) => Buffer.alloc(32, n).toString('base64'));
const nodeArb: fc.Arbitrary<NodeSpec> = fc.record({
  publicKey: fc.option(keyArb, { nil: null, freq: 5 }),
  endpoints: fc.subarray(['192.0.2.1:51820', '198.51.100.7:4500', '[2001:db8::1]:51820']),
  tags: fc.subarray([...TAGS]),
  ipOffset: fc.constantFrom(0, 0, 0, 100),
});
const policyArb: fc.Arbitrary<Policy | null> = fc.option(
  fc.record({ rules: fc.array(fc.record({ from: fc.constantFrom(...TAGS, '*'), to: fc.constantFrom(...TAGS, '*') }), { maxLength: 4 }) }),
  { nil: null, freq: 3 },
);
/** Which pairs have a PSK: a seed, so that two models can share or differ in their PSKs. */
const pskSeedArb = fc.integer({ min: 0, max: 3 });

interface Spec {
  nodes: NodeSpec[];
  policy: Policy | null;
  pskSeed: number;
}

const specArb = (n: number): fc.Arbitrary<Spec> => fc.record({ nodes: fc.array(nodeArb, { minLength: n, maxLength: n }), policy: policyArb, pskSeed: pskSeedArb });
const sizeArb = fc.integer({ min: 1, max: 7 });

const idOf = (i: number): string => `node-${i}`;

function build(spec: Spec): MeshInputs & { nodes: Map<string, PeerFacts & { tags: string[] }> } {
  const nodes = new Map(spec.nodes.map((n, i) => [idOf(i), { id: idOf(i), meshIp: BASE_IP + i + n.ipOffset, publicKey: n.publicKey, endpoints: n.endpoints, tags: n.tags }]));
  const psks = new Map<string, Buffer>();
  for (let i = 0; i < spec.nodes.length; i++) {
    for (let j = i + 1; j < spec.nodes.length; j++) {
      const digest = createHash('sha256').update(`${spec.pskSeed}:${i}:${j}`).digest();
      if (digest[0]! % 5 !== 0) psks.set(pairKey(idOf(i), idOf(j)), digest); // some pairs have none yet
    }
  }
  return { cidr: '10.100.0.0/16', nodes, permitted: permittedPeers([...nodes.values()], spec.policy), psks };
}

const snapshotChange = (state: MeshState): ViewChange => ({ events: [], snapshot: state, upserts: [], removed: [] });
const viewOf = (state: MeshState): Announced => applyViewChange(null, snapshotChange(state));
const plainView = (v: Announced): unknown => ({ meshIp: v.meshIp, cidr: v.cidr, peers: [...v.peers].sort(([a], [b]) => (a < b ? -1 : 1)) });

/** Applies events to a node's state the way the agent does (docs/MESH.md, "Events"). */
function applyEvents(state: MeshState, events: ViewChange['events']): MeshState {
  let current = state;
  const peers = new Map(state.peers.map((p) => [p.nodeId, { ...p }]));
  for (const [type, payload] of events) {
    const p: unknown = payload;
    if (type === 'node_state_updated') {
      current = (p as { state: MeshState }).state;
      peers.clear();
      for (const peer of current.peers) peers.set(peer.nodeId, { ...peer });
    } else if (type === 'peer_removed') for (const id of (p as { nodeIds: string[] }).nodeIds) peers.delete(id);
    else if (type === 'peer_added') for (const peer of (p as { peers: PeerInfo[] }).peers) peers.set(peer.nodeId, { ...peer });
    else if (type === 'peer_key_rotated') for (const x of (p as { peers: Array<{ nodeId: string; publicKey: string }> }).peers) peers.get(x.nodeId)!.publicKey = x.publicKey;
    else if (type === 'peer_endpoint_changed') for (const x of (p as { peers: Array<{ nodeId: string; endpoints: string[] }> }).peers) peers.get(x.nodeId)!.endpoints = x.endpoints;
  }
  return { ...current, peers: [...peers.values()].sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1)) };
}

const twoSpecs = sizeArb.chain((n) => fc.tuple(specArb(n), specArb(n)));

describe('desired state (property tests)', () => {
  it('visibility is symmetric, with the same PSK on both sides, and no node sees itself', () => {
    fc.assert(
      fc.property(sizeArb.chain(specArb), (spec) => {
        const inputs = build(spec);
        const states = new Map([...inputs.nodes.keys()].map((id) => [id, desiredState(inputs, id)!]));
        for (const [id, state] of states) {
          expect(state.peers.some((p) => p.nodeId === id)).toBe(false);
          for (const peer of state.peers) {
            const back = states.get(peer.nodeId)!.peers.find((p) => p.nodeId === id);
            // The peer sees this node too, unless this node has no key yet (only keyed nodes are peers).
            if (inputs.nodes.get(id)!.publicKey !== null) expect(back?.psk).toBe(peer.psk);
            else expect(back).toBeUndefined();
          }
        }
      }),
      RUNS,
    );
  });

  it('every node that both permits and has a key and a PSK appears, and nothing else', () => {
    fc.assert(
      fc.property(sizeArb.chain(specArb), (spec) => {
        const inputs = build(spec);
        for (const id of inputs.nodes.keys()) {
          const want = [...inputs.nodes.values()]
            .filter((p) => p.id !== id && p.publicKey !== null && inputs.permitted.get(id)!.has(p.id) && inputs.psks.has(pairKey(id, p.id)))
            .map((p) => p.id)
            .sort();
          expect(desiredState(inputs, id)!.peers.map((p) => p.nodeId)).toEqual(want);
        }
      }),
      RUNS,
    );
  });

  it('a node removed from the model disappears from every peer\'s state (policy re-evaluated or not)', () => {
    fc.assert(
      fc.property(sizeArb.chain(specArb), fc.nat(), (spec, pick) => {
        const inputs = build(spec);
        const gone = idOf(pick % spec.nodes.length);
        const nodes = new Map(inputs.nodes);
        nodes.delete(gone);
        const stale = { ...inputs, nodes };
        const fresh = { ...stale, permitted: permittedPeers([...nodes.values()], spec.policy) };
        for (const model of [stale, fresh]) {
          expect(desiredState(model, gone)).toBeNull();
          for (const id of nodes.keys()) expect(desiredState(model, id)!.peers.map((p) => p.nodeId)).not.toContain(gone);
        }
      }),
      RUNS,
    );
  });

  it('the diff of a state with itself is empty, with or without a policy change', () => {
    fc.assert(
      fc.property(sizeArb.chain(specArb), (spec) => {
        const inputs = build(spec);
        for (const id of inputs.nodes.keys()) {
          const view = viewOf(desiredState(inputs, id)!);
          expect(viewChange(inputs, id, view, null, null)).toBeNull();
          expect(viewChange(inputs, id, view, null, { policyId: 'p', rules: [] })).toBeNull();
        }
      }),
      RUNS,
    );
  });

  it('applying the diff from a to b (to the view, and as the agent applies events) gives b', () => {
    fc.assert(
      fc.property(twoSpecs, fc.boolean(), ([specA, specB], policyChanged) => {
        const a = build(specA);
        const b = build(specB);
        for (const id of a.nodes.keys()) {
          const stateA = desiredState(a, id)!;
          const stateB = desiredState(b, id)!;
          const change = viewChange(b, id, viewOf(stateA), null, policyChanged ? { policyId: 'p', rules: null } : null);
          if (change === null) {
            expect(stateB).toEqual(stateA);
            continue;
          }
          expect(plainView(applyViewChange(viewOf(stateA), change))).toEqual(plainView(viewOf(stateB)));
          expect(applyEvents(stateA, change.events)).toEqual(stateB);
          // policy_updated goes along exactly when the policy changed and the peer set did.
          const peerSetChanged = change.snapshot === null && (change.removed.length > 0 || change.events.some(([t]) => t === 'peer_added'));
          expect(change.events.some(([t]) => t === 'policy_updated')).toBe(policyChanged && peerSetChanged);
        }
      }),
      RUNS,
    );
  });

  it('a diff limited to the nodes whose own facts changed reaches the same view as the full diff', () => {
    fc.assert(
      fc.property(
        sizeArb.chain((n) => fc.tuple(specArb(n), fc.array(fc.record({ publicKey: fc.option(keyArb, { nil: null }), endpoints: fc.subarray(['192.0.2.9:1', '203.0.113.5:2']) }), { minLength: n, maxLength: n }), fc.array(fc.boolean(), { minLength: n, maxLength: n }))),
        ([spec, facts, changedFlags]) => {
          const a = build(spec);
          // Only keys and endpoints of the flagged nodes change; tags, policy and PSKs stay (as on a connect).
          const b = build({ ...spec, nodes: spec.nodes.map((n, i) => (changedFlags[i] ? { ...n, ...facts[i]! } : n)) });
          const changed = new Set(spec.nodes.map((_, i) => idOf(i)).filter((_, i) => changedFlags[i]));
          for (const id of a.nodes.keys()) {
            if (changed.has(id)) continue; // checked in full by the service
            const about = new Set([...changed].filter((c) => a.permitted.get(id)!.has(c)));
            const view = viewOf(desiredState(a, id)!);
            const full = viewChange(b, id, viewOf(desiredState(a, id)!), null, null);
            const scoped = viewChange(b, id, view, about, null);
            expect(scoped === null).toBe(full === null);
            if (full !== null && scoped !== null) {
              expect(new Set(scoped.events.map(([t]) => t))).toEqual(new Set(full.events.map(([t]) => t)));
              expect(plainView(applyViewChange(viewOf(desiredState(a, id)!), scoped))).toEqual(plainView(viewOf(desiredState(b, id)!)));
            }
          }
        },
      ),
      RUNS,
    );
  });
});
