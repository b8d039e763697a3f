import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { allocateAddress, intToIp, ipToInt, parseMeshRange } from '../../src/server/mesh/addresses.js';
import { parsePolicy } from '../../src/admin-api/policy.js';
import { addJoinedPeers, permittedPeers, policyId } from '../../src/server/mesh/policy.js';

describe('mesh addresses', () => {
  it('hands out the lowest free host address, never network or broadcast', () => {
    const r = parseMeshRange('10.100.0.0/16');
    expect(intToIp(allocateAddress(r, new Set()))).toBe('10.100.0.1');
    const used = new Set([ipToInt('10.100.0.1'), ipToInt('10.100.0.3')]);
    expect(intToIp(allocateAddress(r, used))).toBe('10.100.0.2');
    const tiny = parseMeshRange('192.168.7.0/30');
    const a = allocateAddress(tiny, new Set());
    const b = allocateAddress(tiny, new Set([a]));
    expect([intToIp(a), intToIp(b)]).toEqual(['192.168.7.1', '192.168.7.2']);
    expect(() => allocateAddress(tiny, new Set([a, b]))).toThrow(/no free address left in 192.168.7.0\/30/);
  });

  it('refuses malformed ranges with a reason', () => {
    expect(() => parseMeshRange('10.100.0.1/16')).toThrow(/host bits are set \(did you mean 10.100.0.0\/16\?\)/);
    expect(() => parseMeshRange('10.100.0.0/31')).toThrow(/between \/8 and \/30/);
    expect(() => parseMeshRange('10.300.0.0/16')).toThrow(/not an IPv4 address/);
    expect(() => parseMeshRange('nope')).toThrow(/expected A.B.C.D\/N/);
  });

  it('allocations are unique and inside the range (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 20, max: 29 }), fc.integer({ min: 1, max: 60 }), (prefix, n) => {
        const r = parseMeshRange(`10.0.0.0/${prefix}`);
        const used = new Set<number>();
        const count = Math.min(n, r.last - r.first + 1);
        for (let i = 0; i < count; i++) used.add(allocateAddress(r, used));
        expect(used.size).toBe(count);
        for (const a of used) expect(a >= r.first && a <= r.last).toBe(true);
      }),
    );
  });
});

describe('mesh policy', () => {
  it('names the fault of an invalid file', () => {
    expect(() => parsePolicy('{"rules": [')).toThrow(/policy is not valid JSON/);
    expect(() => parsePolicy('{}')).toThrow(/invalid policy at rules:/);
    expect(() => parsePolicy('{"rules":[{"from":"web","to":"db"},{"from":"web","to":"bad tag"}]}')).toThrow(/invalid policy at rules.1.to: a tag/);
    expect(() => parsePolicy('{"rules":[{"from":"web","to":"db","extra":1}]}')).toThrow(/rules.0/);
    expect(() => parsePolicy('{"rules":[],"x":1}')).toThrow(/\(root\)|x/);
  });

  const nodes = [
    { id: 'a', tags: ['web'] },
    { id: 'b', tags: ['db'] },
    { id: 'c', tags: ['web', 'ops'] },
    { id: 'd', tags: [] },
  ];
  const peersOf = (m: Map<string, Set<string>>) => Object.fromEntries([...m].map(([k, v]) => [k, [...v].sort()]));

  it('no policy is a full mesh; an empty rule list isolates everyone', () => {
    expect(peersOf(permittedPeers(nodes, null))).toEqual({ a: ['b', 'c', 'd'], b: ['a', 'c', 'd'], c: ['a', 'b', 'd'], d: ['a', 'b', 'c'] });
    expect(peersOf(permittedPeers(nodes, { rules: [] }))).toEqual({ a: [], b: [], c: [], d: [] });
  });

  it('a rule in either direction makes two nodes peers; * matches any node', () => {
    expect(peersOf(permittedPeers(nodes, { rules: [{ from: 'web', to: 'db' }] }))).toEqual({ a: ['b'], b: ['a', 'c'], c: ['b'], d: [] });
    expect(peersOf(permittedPeers(nodes, { rules: [{ from: 'ops', to: '*' }] }))).toEqual({ a: ['c'], b: ['c'], c: ['a', 'b', 'd'], d: ['c'] });
    expect(peersOf(permittedPeers(nodes, { rules: [{ from: 'web', to: 'web' }] }))).toEqual({ a: ['c'], b: [], c: ['a'], d: [] });
  });

  it('is symmetric and never lists a node as its own peer (property)', () => {
    const tag = fc.constantFrom('x', 'y', 'z', '*');
    fc.assert(
      fc.property(
        fc.array(fc.subarray(['x', 'y', 'z']), { minLength: 1, maxLength: 12 }),
        fc.array(fc.record({ from: tag, to: tag }), { maxLength: 5 }),
        (tagSets, rules) => {
          const ns = tagSets.map((tags, i) => ({ id: `n${i}`, tags }));
          const m = permittedPeers(ns, { rules });
          for (const [a, set] of m) {
            expect(set.has(a)).toBe(false);
            for (const b of set) expect(m.get(b)!.has(a)).toBe(true);
          }
        },
      ),
    );
  });

  it('adding the pairs of joined nodes gives what evaluating everyone gives (property)', () => {
    const tag = fc.constantFrom('x', 'y', 'z', '*');
    fc.assert(
      fc.property(
        fc.array(fc.subarray(['x', 'y', 'z']), { minLength: 1, maxLength: 12 }),
        fc.option(fc.array(fc.record({ from: tag, to: tag }), { maxLength: 5 }), { nil: null }),
        fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }),
        (tagSets, rules, joins) => {
          const all = tagSets.map((tags, i) => ({ id: `n${i}`, tags }));
          const joined = new Set(all.filter((_, i) => joins[i]).map((n) => n.id));
          const policy = rules === null ? null : { rules };
          // Before the join: the others only, evaluated in full; then the joined nodes' pairs added.
          const m = permittedPeers(all.filter((n) => !joined.has(n.id)), policy);
          addJoinedPeers(m, all, policy, joined);
          expect(peersOf(m)).toEqual(peersOf(permittedPeers(all, policy)));
        },
      ),
    );
    // A join under a policy no joined node matches links nobody, but the node still gets its (empty) set.
    const m = permittedPeers(nodes, { rules: [{ from: 'web', to: 'db' }] });
    addJoinedPeers(m, [...nodes, { id: 'e', tags: ['ops'] }], { rules: [{ from: 'web', to: 'db' }] }, new Set(['e']));
    expect(peersOf(m)).toEqual({ a: ['b'], b: ['a', 'c'], c: ['b'], d: [], e: [] });
  });

  it('policy ids are stable and distinguish policies', () => {
    expect(policyId(null)).toBe('full-mesh');
    expect(policyId({ rules: [{ from: 'a', to: 'b' }] })).toBe(policyId({ rules: [{ from: 'a', to: 'b' }] }));
    expect(policyId({ rules: [{ from: 'a', to: 'b' }] })).not.toBe(policyId({ rules: [{ from: 'b', to: 'a' }] }));
  });
});
