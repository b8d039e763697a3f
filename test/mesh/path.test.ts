import { describe, expect, it } from 'vitest';
import { NAT_MAPPINGS, natReportSchema, peerSchema, selfReportSchema, stateDigest, type NatMappingClass, type NatReport } from '../../src/contract/mesh-events.js';
import { choosePath, pairsByPath, peerEndpoints } from '../../src/server/mesh/path.js';

/** Path choice per pair (src/server/mesh/path.ts), every combination of classes, and the NAT report schema. */

const nat = (mapping: NatMappingClass, reflexive: string | null = '203.0.113.7:40000'): NatReport => ({ mapping, reflexive });

/** The rule of issue 15, written out independently: direct if one side is public or both are endpoint-independent. */
function expected(a: NatMappingClass | null, b: NatMappingClass | null): 'direct' | 'relay' {
  const reachable = (m: NatMappingClass | null): boolean => m === null || m === 'none';
  if (reachable(a) || reachable(b)) return 'direct';
  return a === 'endpoint-independent' && b === 'endpoint-independent' ? 'direct' : 'relay';
}

describe('choosePath', () => {
  const classes: Array<NatMappingClass | null> = [...NAT_MAPPINGS, null];
  for (const a of classes) {
    for (const b of classes) {
      it(`${a ?? 'no report'} × ${b ?? 'no report'} → ${expected(a, b)} (and symmetric)`, () => {
        const ra = a === null ? null : nat(a);
        const rb = b === null ? null : nat(b);
        expect(choosePath(ra, rb)).toBe(expected(a, b));
        expect(choosePath(rb, ra)).toBe(choosePath(ra, rb));
      });
    }
  }

  it('the cases named in the issue', () => {
    expect(choosePath(nat('none'), nat('endpoint-dependent'))).toBe('direct');
    expect(choosePath(nat('endpoint-independent'), nat('endpoint-independent'))).toBe('direct');
    expect(choosePath(nat('endpoint-independent'), nat('endpoint-dependent'))).toBe('relay');
    expect(choosePath(nat('endpoint-dependent'), nat('endpoint-dependent'))).toBe('relay');
    expect(choosePath(nat('unknown'), nat('endpoint-independent'))).toBe('relay');
    expect(choosePath(nat('unknown', null), nat('unknown', null))).toBe('relay');
  });
});

describe('peerEndpoints', () => {
  const local = ['10.0.0.5:51820', '192.168.1.5:51820'];
  it('a direct pair gets the reflexive endpoint first, then the local ones', () => {
    expect(peerEndpoints('direct', nat('endpoint-independent', '198.51.100.1:1000'), nat('endpoint-independent', '203.0.113.7:40000'), local)).toEqual(['203.0.113.7:40000', ...local]);
  });
  it('a relay pair gets the local endpoints only (the relay allocation replaces them)', () => {
    expect(peerEndpoints('relay', nat('endpoint-dependent'), nat('endpoint-dependent'), local)).toEqual(local);
  });
  it('behind one NAT (same public address) the local endpoints come first', () => {
    expect(peerEndpoints('direct', nat('endpoint-independent', '203.0.113.7:1111'), nat('endpoint-independent', '203.0.113.7:40000'), local)).toEqual([...local, '203.0.113.7:40000']);
  });
  it('a public peer whose reflexive endpoint is a local one is listed once', () => {
    expect(peerEndpoints('direct', nat('endpoint-dependent'), nat('none', '10.0.0.5:51820'), local)).toEqual(local);
  });
  it('a public peer is told as it announced itself: a loopback reflexive endpoint (STUN on its own host) is not used', () => {
    expect(peerEndpoints('direct', nat('endpoint-independent'), nat('none', '127.0.0.1:51820'), ['192.0.2.2:51820'])).toEqual(['192.0.2.2:51820']);
    expect(peerEndpoints('direct', nat('endpoint-independent'), nat('none', '192.0.2.9:51820'), [])).toEqual(['192.0.2.9:51820']);
  });
  it('no report: the local endpoints as announced', () => {
    expect(peerEndpoints('direct', null, null, local)).toEqual(local);
  });
  it('caps the list at the peer schema’s 32', () => {
    const many = Array.from({ length: 40 }, (_, i) => `10.0.${i}.1:51820`);
    const out = peerEndpoints('direct', null, nat('endpoint-independent'), many);
    expect(out).toHaveLength(32);
    expect(out[0]).toBe('203.0.113.7:40000');
  });
});

describe('pairsByPath', () => {
  it('counts each permitted pair once and lists the relay pairs in order, skipping ineligible nodes', () => {
    const reports: Record<string, NatReport | null> = { a: nat('endpoint-dependent'), b: nat('endpoint-independent'), c: nat('endpoint-independent'), d: nat('none'), e: nat('endpoint-dependent') };
    const ids = Object.keys(reports);
    const permitted = new Map(ids.map((id) => [id, new Set(ids.filter((o) => o !== id))]));
    const all = pairsByPath(permitted, (id) => reports[id] ?? null);
    // a-b a-c a-e b-e c-e relay; b-c and every pair with d direct.
    expect(all.relay.map((p) => `${p.a}-${p.b}`)).toEqual(['a-b', 'a-c', 'a-e', 'b-e', 'c-e']);
    expect(all.direct).toBe(5);
    expect(all.relay[0]!.pairId).toBe('a\u0000b');
    const withoutE = pairsByPath(permitted, (id) => reports[id] ?? null, (id) => id !== 'e');
    expect(withoutE.relay.map((p) => `${p.a}-${p.b}`)).toEqual(['a-b', 'a-c']);
    expect(withoutE.direct).toBe(4);
  });
});

describe('NAT report schema (both sides)', () => {
  it('accepts the four classes with or without a reflexive endpoint', () => {
    for (const m of NAT_MAPPINGS) {
      expect(natReportSchema.safeParse({ mapping: m, reflexive: '[2001:db8::1]:40000' }).success).toBe(true);
      expect(natReportSchema.safeParse({ mapping: m, reflexive: null }).success).toBe(true);
    }
  });
  it('refuses an unknown class, an endpoint that is not HOST:PORT, a missing field', () => {
    expect(selfReportSchema.safeParse({ nat: { mapping: 'symmetric', reflexive: null } }).success).toBe(false);
    expect(selfReportSchema.safeParse({ nat: { mapping: 'none', reflexive: 'no port' } }).success).toBe(false);
    expect(selfReportSchema.safeParse({ nat: { mapping: 'none' } }).success).toBe(false);
    expect(selfReportSchema.safeParse({ endpoints: ['10.0.0.1:51820'], nat: { mapping: 'endpoint-independent', reflexive: '203.0.113.7:1' } }).success).toBe(true);
  });
  it('peer entries take an optional path, which the digest leaves out (agents from before paths drop it)', () => {
    const peer = { nodeId: 'n1', meshIp: '10.100.0.2', publicKey: 'A'.repeat(43) + '=', endpoints: ['10.0.0.1:51820'], psk: 'Q'.repeat(43) + '=' };
    expect(peerSchema.safeParse({ ...peer, path: 'relay' }).success).toBe(true);
    expect(peerSchema.safeParse({ ...peer, path: 'turn' }).success).toBe(false);
    const state = (p: object) => ({ nodeId: 'n0', meshIp: '10.100.0.1', cidr: '10.100.0.0/16', peers: [p as typeof peer] });
    expect(stateDigest(state({ ...peer, path: 'direct' }))).toBe(stateDigest(state({ ...peer, path: 'relay' })));
    expect(stateDigest(state(peer))).toBe(stateDigest(state({ ...peer, path: 'direct' })));
    // What the path chooses, the endpoints, is digested.
    expect(stateDigest(state(peer))).not.toBe(stateDigest(state({ ...peer, endpoints: ['203.0.113.7:51820', '10.0.0.1:51820'] })));
  });
});
