import { describe, expect, it } from 'vitest';
import { PEER_PROBE_AFTER_MS, PeerWatch } from '../../src/agent/mesh/peer-watch.js';
import { PathHealth, type PathContext } from '../../src/server/mesh/path-health.js';
import { PEER_DOWN_AFTER_MS, PEER_SAMPLE_MS, type PeerLink } from '../../src/contract/mesh-events.js';

/** Switching between direct and relay (docs/MESH.md, "Switching"): the agent's measure and the server's rule. */

describe('PeerWatch: whether a peer is reached on its endpoint, from WireGuard’s counters', () => {
  const T0 = 1_000_000;
  const sample = (rxBytes: number, endpoint: string | null = '192.0.2.2:51820', handshakeAt: number | null = null) => [{ nodeId: 'n2', endpoint, rxBytes, handshakeAt }];
  /** Samples every PEER_SAMPLE_MS after `w`'s last sample up to `until`, as the agent does; what changed on the way, and the probes. */
  const watch = () => {
    const w = new PeerWatch();
    let at: number | null = null;
    const to = (until: number, samples: ReturnType<typeof sample>) => {
      const changed: PeerLink[] = [];
      const probes: number[] = [];
      for (let t = at === null ? until : Math.min(at + PEER_SAMPLE_MS, until); ; t = Math.min(t + PEER_SAMPLE_MS, until)) {
        const r = w.sample(samples, t);
        changed.push(...r.changed);
        if (r.probe.length > 0) probes.push(t);
        at = t;
        if (t >= until) break;
      }
      return { changed, probes };
    };
    return { w, to };
  };

  it('a new peer is pending, up once bytes arrive, down after PEER_DOWN_AFTER_MS of silence', () => {
    const { to } = watch();
    expect(to(T0, sample(0)).changed).toEqual([{ nodeId: 'n2', state: 'pending', endpoint: '192.0.2.2:51820', handshakeAgeMs: null }]);
    // Nothing changed: nothing to report.
    expect(to(T0 + 5_000, sample(0)).changed).toEqual([]);
    expect(to(T0 + 10_000, sample(148, '192.0.2.2:51820', T0 + 9_000)).changed).toEqual([{ nodeId: 'n2', state: 'up', endpoint: '192.0.2.2:51820', handshakeAgeMs: 1_000 }]);
    expect(to(T0 + 10_000 + PEER_DOWN_AFTER_MS - 1, sample(148)).changed).toEqual([]);
    expect(to(T0 + 10_000 + PEER_DOWN_AFTER_MS, sample(148)).changed.map((c) => c.state)).toEqual(['down']);
    // Bytes again: up again.
    expect(to(T0 + 60_000, sample(296)).changed.map((c) => c.state)).toEqual(['up']);
  });

  it('a peer that never answers on a new endpoint is down after PEER_DOWN_AFTER_MS from the endpoint taking effect', () => {
    const { to } = watch();
    to(T0, sample(0));
    expect(to(T0 + PEER_DOWN_AFTER_MS - 1, sample(0)).changed).toEqual([]);
    expect(to(T0 + PEER_DOWN_AFTER_MS, sample(0)).changed).toEqual([{ nodeId: 'n2', state: 'down', endpoint: '192.0.2.2:51820', handshakeAgeMs: null }]);
  });

  it('a new endpoint starts a new trial: bytes received on the old one do not make it up', () => {
    const { to } = watch();
    to(T0, sample(0, '198.51.100.1:40001'));
    expect(to(T0 + 5_000, sample(500, '198.51.100.1:40001')).changed.map((c) => c.state)).toEqual(['up']);
    // The server moved the pair to direct: same counter, new endpoint.
    expect(to(T0 + 10_000, sample(500, '203.0.113.9:51820')).changed).toEqual([{ nodeId: 'n2', state: 'pending', endpoint: '203.0.113.9:51820', handshakeAgeMs: null }]);
    expect(to(T0 + 10_000 + PEER_DOWN_AFTER_MS, sample(500, '203.0.113.9:51820')).changed.map((c) => c.state)).toEqual(['down']);
  });

  it('a counter that goes back (the interface was re-created) is a new baseline, not traffic', () => {
    const { to } = watch();
    to(T0, sample(1_000));
    expect(to(T0 + 5_000, sample(10)).changed).toEqual([]);
    expect(to(T0 + PEER_DOWN_AFTER_MS, sample(10)).changed.map((c) => c.state)).toEqual(['down']);
  });

  it('a gap in the sampling (the agent was offline, the host slept) restarts every trial instead of reading the gap as silence', () => {
    const { w } = watch();
    w.sample(sample(100), T0);
    expect(w.sample(sample(200), T0 + 5_000).changed.map((c) => c.state)).toEqual(['up']);
    // Five minutes without a sample, then the same counter: pending, not down.
    expect(w.sample(sample(200), T0 + 305_000).changed.map((c) => c.state)).toEqual(['pending']);
  });

  it('probes a peer silent for PEER_PROBE_AFTER_MS on its endpoint, at most once per PEER_PROBE_AFTER_MS, and not one that just sent', () => {
    const { to } = watch();
    expect(to(T0, sample(0)).probes).toEqual([]);
    expect(to(T0 + PEER_PROBE_AFTER_MS - PEER_SAMPLE_MS, sample(0)).probes).toEqual([]);
    // Silent from T0: probed once PEER_PROBE_AFTER_MS have passed, then every PEER_PROBE_AFTER_MS, not every sample.
    expect(to(T0 + 30_000, sample(0)).probes).toEqual([T0 + 10_000, T0 + 20_000, T0 + 30_000]);
    // It answered: no probe until it has been silent that long again.
    expect(to(T0 + 35_000, sample(92)).probes).toEqual([]);
    expect(to(T0 + 45_000, sample(92)).probes).toEqual([T0 + 45_000]);
  });

  it('forgets peers no longer on the interface, and lists every tracked one for the full report', () => {
    const { w } = watch();
    w.sample([...sample(0), { nodeId: 'n3', endpoint: null, rxBytes: 0, handshakeAt: null }], T0);
    expect(w.entries(T0).map((e) => e.nodeId)).toEqual(['n2', 'n3']);
    w.sample(sample(0), T0 + 5_000);
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
    // What the server last told each member of the other: the peer's direct endpoint.
    announcedEndpoint: () => '203.0.113.2:51820',
    onlineSince: (n) => online.get(n) ?? null,
    // Heard from "just now", whatever the report's time (the cases below override it).
    lastHeard: () => Number.MAX_SAFE_INTEGER,
    heartbeatIntervalMs: 15_000,
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

  it('both members’ up on the trial clears the failures: the next failure backs off from the start', () => {
    const h = health();
    h.record('a', [link('b', 'down')], T0, ctx());
    h.due(T0 + 60_000);
    h.record('a', [link('b', 'up')], T0 + 70_000, ctx());
    expect(h.failures('a', 'b')).toBe(1);
    h.record('b', [link('a', 'up')], T0 + 71_000, ctx());
    expect(h.failures('a', 'b')).toBe(0);
    h.record('a', [link('b', 'down')], T0 + 200_000, ctx());
    expect(h.retryAt('a', 'b')).toBe(T0 + 200_000 + 60_000);
  });

  it('a path that works one way only keeps backing off: one member’s up does not clear the failures', () => {
    const h = health();
    let t = T0;
    for (const expected of [60_000, 120_000, 200_000]) {
      h.record('b', [link('a', 'up')], t, ctx());
      h.record('a', [link('b', 'down')], t + 40_000, ctx());
      expect(h.retryAt('a', 'b')).toBe(t + 40_000 + expected);
      t = h.retryAt('a', 'b')!;
      h.due(t);
    }
  });

  it('ignores reports about another endpoint than the announced one (the relay’s, an older one), pairs the NAT classes put on the relay, unpermitted peers and itself', () => {
    const h = health();
    expect(h.record('a', [link('b', 'down', '10.0.0.2:51820')], T0, ctx())).toEqual([]);
    expect(h.record('a', [link('b', 'down', `${RELAY}:40001`)], T0, ctx())).toEqual([]);
    expect(h.record('a', [link('c', 'down')], T0, ctx())).toEqual([]);
    expect(h.record('a', [link('x', 'down'), link('a', 'down')], T0, ctx())).toEqual([]);
    expect(h.size).toBe(0);
    // The relay-endpoint report is still kept for the operator's view; the unpermitted one is not.
    expect(h.report('a', 'b')?.endpoint).toBe(`${RELAY}:40001`);
    expect(h.report('a', 'x')).toBeUndefined();
  });

  it('a down says nothing of the path unless both agents ran throughout: connected PEER_DOWN_AFTER_MS, the peer still heard from', () => {
    const h = health();
    // The reporter itself was away (its own outage): its silence is not the path's.
    expect(h.record('a', [link('b', 'down')], T0, ctx({ onlineSince: (n) => (n === 'a' ? T0 - 5_000 : T0 - 600_000) }))).toEqual([]);
    // The peer's connection is still open but nothing came from it for three heartbeat intervals (it died).
    expect(h.record('a', [link('b', 'down')], T0, ctx({ lastHeard: (n) => (n === 'b' ? T0 - 45_000 : T0) }))).toEqual([]);
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
    expect(h.failures('a', 'b')).toBe(1);
    h.forget('b');
    expect(h.size).toBe(0);
    expect(h.forced.size).toBe(0);
    expect(h.failures('a', 'b')).toBe(0);
    expect(h.report('a', 'b')).toBeUndefined();
  });
});
