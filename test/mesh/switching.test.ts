import { describe, expect, it } from 'vitest';
import { PEER_PROBE_AFTER_MS, PeerWatch } from '../../src/agent/mesh/peer-watch.js';
import { PathHealth, type PathContext } from '../../src/server/mesh/path-health.js';
import { PEER_DOWN_AFTER_MS, type PeerLink } from '../../src/contract/mesh-events.js';

/** Switching between direct and relay (docs/MESH.md, "Switching"): the agent's measure and the server's rule. */

describe('PeerWatch: whether a peer is reached on its endpoint, from WireGuard’s counters', () => {
  const changed = (w: PeerWatch, ...args: Parameters<PeerWatch['sample']>) => w.sample(...args).changed;
  const T0 = 1_000_000;
  const sample = (rxBytes: number, endpoint: string | null = '192.0.2.2:51820', handshakeAt: number | null = null) => [{ nodeId: 'n2', endpoint, rxBytes, handshakeAt }];

  it('a new peer is pending, up once bytes arrive, down after PEER_DOWN_AFTER_MS of silence', () => {
    const w = new PeerWatch();
    expect(changed(w, sample(0), T0)).toEqual([{ nodeId: 'n2', state: 'pending', endpoint: '192.0.2.2:51820', handshakeAgeMs: null }]);
    // Nothing changed: nothing to report.
    expect(changed(w, sample(0), T0 + 5_000)).toEqual([]);
    const up = changed(w, sample(148, '192.0.2.2:51820', T0 + 9_000), T0 + 10_000);
    expect(up).toEqual([{ nodeId: 'n2', state: 'up', endpoint: '192.0.2.2:51820', handshakeAgeMs: 1_000 }]);
    expect(changed(w, sample(148), T0 + 10_000 + PEER_DOWN_AFTER_MS - 1)).toEqual([]);
    expect(changed(w, sample(148), T0 + 10_000 + PEER_DOWN_AFTER_MS)[0]?.state).toBe('down');
    // Bytes again: up again.
    expect(changed(w, sample(296), T0 + 60_000)[0]?.state).toBe('up');
  });

  it('a peer that never answers on a new endpoint is down after PEER_DOWN_AFTER_MS from the endpoint taking effect', () => {
    const w = new PeerWatch();
    changed(w, sample(0), T0);
    expect(changed(w, sample(0), T0 + PEER_DOWN_AFTER_MS - 1)).toEqual([]);
    expect(changed(w, sample(0), T0 + PEER_DOWN_AFTER_MS)).toEqual([{ nodeId: 'n2', state: 'down', endpoint: '192.0.2.2:51820', handshakeAgeMs: null }]);
  });

  it('a new endpoint starts a new trial: bytes received on the old one do not make it up', () => {
    const w = new PeerWatch();
    changed(w, sample(0, '198.51.100.1:40001'), T0);
    expect(changed(w, sample(500, '198.51.100.1:40001'), T0 + 5_000)[0]?.state).toBe('up');
    // The server moved the pair to direct: same counter, new endpoint.
    expect(changed(w, sample(500, '203.0.113.9:51820'), T0 + 10_000)).toEqual([{ nodeId: 'n2', state: 'pending', endpoint: '203.0.113.9:51820', handshakeAgeMs: null }]);
    expect(changed(w, sample(500, '203.0.113.9:51820'), T0 + 10_000 + PEER_DOWN_AFTER_MS)[0]?.state).toBe('down');
  });

  it('a counter that goes back (the interface was re-created) is a new baseline, not traffic', () => {
    const w = new PeerWatch();
    changed(w, sample(1_000), T0);
    expect(changed(w, sample(10), T0 + 5_000)).toEqual([]);
    expect(changed(w, sample(10), T0 + PEER_DOWN_AFTER_MS)[0]?.state).toBe('down');
  });

  it('asks for a probe of a peer silent for PEER_PROBE_AFTER_MS on its endpoint, and not of one that just sent', () => {
    const w = new PeerWatch();
    expect(w.sample(sample(0), T0).probe).toEqual([]);
    expect(w.sample(sample(0), T0 + PEER_PROBE_AFTER_MS - 1).probe).toEqual([]);
    expect(w.sample(sample(0), T0 + PEER_PROBE_AFTER_MS).probe).toEqual(['n2']);
    // It answered: no probe until it has been silent that long again.
    expect(w.sample(sample(92), T0 + PEER_PROBE_AFTER_MS + 5_000).probe).toEqual([]);
    expect(w.sample(sample(92), T0 + 2 * PEER_PROBE_AFTER_MS + 5_000).probe).toEqual(['n2']);
  });

  it('forgets peers no longer on the interface, and lists every tracked one for the full report', () => {
    const w = new PeerWatch();
    changed(w, [...sample(0), { nodeId: 'n3', endpoint: null, rxBytes: 0, handshakeAt: null }], T0);
    expect(w.entries(T0).map((e) => e.nodeId)).toEqual(['n2', 'n3']);
    changed(w, sample(0), T0 + 5_000);
    expect(w.entries(T0 + 5_000).map((e) => e.nodeId)).toEqual(['n2']);
    expect(w.peer('n3')).toBeUndefined();
  });
});

describe('PathHealth: a direct pair reported down goes to the relay, and tries direct after a back-off', () => {
  const T0 = 5_000_000;
  const RELAY = '198.51.100.1';
  const online = new Map<string, number | null>([
    ['a', T0 - 600_000],
    ['b', T0 - 600_000],
    ['c', T0 - 600_000],
  ]);
  const ctx = (over: Partial<PathContext> = {}): PathContext => ({
    permitted: (x, y) => x !== y && [x, y].every((n) => online.has(n)),
    naturalPath: (x, y) => ([x, y].includes('c') ? 'relay' : 'direct'),
    isRelayEndpoint: (e) => e.startsWith(`${RELAY}:`),
    onlineSince: (n) => online.get(n) ?? null,
    ...over,
  });
  const link = (nodeId: string, state: PeerLink['state'], endpoint: string | null = '203.0.113.2:51820'): PeerLink => ({ nodeId, state, endpoint, handshakeAgeMs: null });
  const health = () => new PathHealth({ retryMs: 60_000, maxRetryMs: 200_000 });

  it('either member’s down moves the pair; the back-off doubles with each failure in a row, up to the cap', () => {
    const h = health();
    expect(h.record('a', [link('b', 'pending')], T0, ctx())).toEqual([]);
    expect(h.record('a', [link('b', 'down')], T0, ctx())).toEqual([['a', 'b']]);
    expect(h.forcedRelay('b', 'a')).toBe(true);
    expect([...h.forced]).toEqual(['a\u0000b']);
    expect(h.retryAt('a', 'b')).toBe(T0 + 60_000);
    // The other member's "up" cannot keep it off the relay, and nothing moves twice.
    expect(h.record('b', [link('a', 'up')], T0 + 1, ctx())).toEqual([]);
    expect(h.forcedRelay('a', 'b')).toBe(true);
    expect(h.due(T0 + 59_999)).toEqual([]);
    expect(h.due(T0 + 60_000)).toEqual([['a', 'b']]);
    expect(h.forcedRelay('a', 'b')).toBe(false);
    // Down again on the trial: twice as long; then four times, capped at 200 s.
    const t1 = T0 + 100_000;
    h.record('b', [link('a', 'down')], t1, ctx());
    expect(h.retryAt('a', 'b')).toBe(t1 + 120_000);
    h.due(t1 + 120_000);
    const t2 = t1 + 200_000;
    h.record('a', [link('b', 'down')], t2, ctx());
    expect(h.retryAt('a', 'b')).toBe(t2 + 200_000);
    expect(h.counters).toEqual({ toRelay: 3, retries: 2 });
  });

  it('an up on a direct endpoint clears the failures: the next failure backs off from the start', () => {
    const h = health();
    h.record('a', [link('b', 'down')], T0, ctx());
    h.due(T0 + 60_000);
    h.record('a', [link('b', 'up')], T0 + 70_000, ctx());
    h.record('a', [link('b', 'down')], T0 + 200_000, ctx());
    expect(h.retryAt('a', 'b')).toBe(T0 + 200_000 + 60_000);
  });

  it('ignores reports about a relay endpoint, pairs the NAT classes put on the relay, unpermitted peers and itself', () => {
    const h = health();
    expect(h.record('a', [link('b', 'down', `${RELAY}:40001`)], T0, ctx())).toEqual([]);
    expect(h.record('a', [link('c', 'down')], T0, ctx())).toEqual([]);
    expect(h.record('a', [link('x', 'down'), link('a', 'down')], T0, ctx())).toEqual([]);
    expect(h.size).toBe(0);
    // The relay-endpoint report is still kept for the operator's view; the unpermitted one is not.
    expect(h.report('a', 'b')?.endpoint).toBe(`${RELAY}:40001`);
    expect(h.report('a', 'x')).toBeUndefined();
  });

  it('a down about a peer that was offline, or came back less than PEER_DOWN_AFTER_MS ago, says nothing of the path', () => {
    const h = health();
    expect(h.record('a', [link('b', 'down')], T0, ctx({ onlineSince: (n) => (n === 'b' ? null : T0 - 600_000) }))).toEqual([]);
    expect(h.record('a', [link('b', 'down')], T0, ctx({ onlineSince: (n) => (n === 'b' ? T0 - PEER_DOWN_AFTER_MS + 1 : T0 - 600_000) }))).toEqual([]);
    expect(h.record('a', [link('b', 'down')], T0, ctx({ onlineSince: (n) => (n === 'b' ? T0 - PEER_DOWN_AFTER_MS : T0 - 600_000) }))).toEqual([['a', 'b']]);
  });

  it('keeps the last handshake in the server’s clock, and forgets a node that left with its pairs', () => {
    const h = health();
    h.record('a', [{ nodeId: 'b', state: 'up', endpoint: '203.0.113.2:51820', handshakeAgeMs: 7_000 }], T0, ctx());
    expect(h.report('a', 'b')).toEqual({ state: 'up', endpoint: '203.0.113.2:51820', handshakeAt: T0 - 7_000, receivedAt: T0 });
    // An age from before 1970 is none (a hostile node must not make nodes show print an invalid date).
    h.record('a', [{ nodeId: 'b', state: 'up', endpoint: null, handshakeAgeMs: Number.MAX_SAFE_INTEGER }], T0, ctx());
    expect(h.report('a', 'b')?.handshakeAt).toBeNull();
    h.record('a', [{ nodeId: 'b', state: 'up', endpoint: '203.0.113.2:51820', handshakeAgeMs: 7_000 }], T0, ctx());
    h.record('b', [link('a', 'down')], T0, ctx());
    expect(h.size).toBe(1);
    h.forget('b');
    expect(h.size).toBe(0);
    expect(h.forced.size).toBe(0);
    expect(h.report('a', 'b')).toBeUndefined();
  });
});
