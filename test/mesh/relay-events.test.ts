import { afterEach, describe, expect, it } from 'vitest';
import { decodeEnvelope } from '../../src/contract/mesh-events.js';
import { MeshlinkError } from '../../src/errors.js';
import { UdpRelay } from '../../src/server/mesh/relay.js';
import { RelaySessions } from '../../src/server/mesh/relay-sessions.js';
import { MeshService } from '../../src/server/mesh/service.js';
import { enrollNode, recordingSessions, silent, tempStore, verifies, wgKey } from './helpers.js';

/** The server's side of relay sessions: signed events to both members, checked with the agents' schema. */

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function setup() {
  const t = await tempStore();
  cleanups.push(() => t.cleanup());
  const a = await enrollNode(t.store, 'a');
  const b = await enrollNode(t.store, 'b');
  const mesh = await MeshService.open(t.store, silent, { sealing: t.sealing });
  cleanups.unshift(() => mesh.close());
  const hub = recordingSessions();
  mesh.setDelivery(hub);
  const sessions = new Map([a, b].map((id) => [id, hub.connect(id)]));
  for (const [i, id] of [a, b].entries()) {
    await mesh.agentOpened(id, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(i + 1), endpoints: [`192.0.2.${i + 1}:51820`] }, '127.0.0.1');
    await mesh.replay(sessions.get(id)!.agent, 0);
  }
  return { t, mesh, a, b, sent: (id: string) => sessions.get(id)!.sent };
}

describe('MeshService relay sessions', () => {
  it('sends each member a signed relay_session_assigned naming the other and its own relay port, then the revoke', async () => {
    const { mesh, a, b, sent } = await setup();
    const before = [sent(a).length, sent(b).length];
    const seqs = await mesh.assignRelay('r1', [{ nodeId: a, endpoint: '203.0.113.9:40001' }, { nodeId: b, endpoint: '203.0.113.9:40002' }], 1_700_000_120_000);
    expect(seqs).toHaveLength(2);
    const last = (id: string) => sent(id).at(-1)!;
    expect(last(a).envelope).toMatchObject({ type: 'relay_session_assigned', payload: { sessionId: 'r1', peerNodeId: b, endpoint: '203.0.113.9:40001', expiresAt: 1_700_000_120_000 } });
    expect(last(b).envelope).toMatchObject({ type: 'relay_session_assigned', payload: { sessionId: 'r1', peerNodeId: a, endpoint: '203.0.113.9:40002' } });
    for (const id of [a, b]) {
      expect(verifies(last(id), mesh.eventKeys())).toBe(true);
      // What the agent decodes from the signed bytes.
      const decoded = decodeEnvelope(last(id).bytes);
      expect(decoded.known && decoded.envelope.type).toBe('relay_session_assigned');
    }
    await mesh.revokeRelay('r1', a, b, 'expired');
    expect(last(a).envelope).toMatchObject({ type: 'relay_session_revoked', payload: { sessionId: 'r1', peerNodeId: b, reason: 'expired' } });
    expect(last(b).envelope).toMatchObject({ type: 'relay_session_revoked', payload: { sessionId: 'r1', peerNodeId: a, reason: 'expired' } });
    expect([sent(a).length, sent(b).length]).toEqual([before[0]! + 2, before[1]! + 2]);
  });

  it('signs nothing the agents would refuse, and nothing for a node outside the mesh', async () => {
    const { mesh, a, b, sent } = await setup();
    const before = [sent(a).length, sent(b).length];
    const bad = await mesh.assignRelay('r1', [{ nodeId: a, endpoint: '203.0.113.9:40001' }, { nodeId: b, endpoint: 'no port' }]).then(
      () => null,
      (e: unknown) => e,
    );
    expect(bad).toBeInstanceOf(MeshlinkError);
    expect((bad as MeshlinkError).code).toBe('ML_ERR_RELAY_BAD_ALLOCATION');
    await expect(mesh.revokeRelay('r1', a, 'nobody')).rejects.toThrow(/not in the mesh/);
    // All or nothing: the valid half was not sent either.
    expect([sent(a).length, sent(b).length]).toEqual(before);
  });

  it('RelaySessions: assigns a new allocation once, revokes it on end and on expiry (real relay, injected clock)', async () => {
    const { mesh, a, b, sent } = await setup();
    const clock = { now: 5_000_000 };
    const relay = new UdpRelay({ host: '127.0.0.1', logger: silent, sweepIntervalMs: 0, idleMs: 120_000, now: () => clock.now });
    cleanups.unshift(() => relay.close());
    const sessions = new RelaySessions({ relay, mesh, publicHost: '203.0.113.9', logger: silent });
    const types = (id: string) => sent(id).map((e) => e.envelope.type);
    const n = [sent(a).length, sent(b).length];

    const first = await sessions.relay({ a: { nodeId: a, ips: ['127.0.0.1'] }, b: { nodeId: b, ips: ['127.0.0.2'] } });
    expect(sent(a).at(-1)!.envelope).toMatchObject({ type: 'relay_session_assigned', payload: { sessionId: first.id, peerNodeId: b, endpoint: `203.0.113.9:${first.a.port}`, expiresAt: clock.now + 120_000 } });
    expect(sent(b).at(-1)!.envelope).toMatchObject({ type: 'relay_session_assigned', payload: { sessionId: first.id, peerNodeId: a, endpoint: `203.0.113.9:${first.b.port}` } });
    // Asked again: the same allocation, renewed, and no second assignment.
    expect((await sessions.relay({ a: { nodeId: b, ips: ['127.0.0.2'] }, b: { nodeId: a, ips: ['127.0.0.1'] } })).id).toBe(first.id);
    expect([sent(a).length, sent(b).length]).toEqual([n[0]! + 1, n[1]! + 1]);

    expect(await sessions.end(a, b, 'direct path')).toBe(true);
    expect(await sessions.end(a, b)).toBe(false);
    expect(sent(a).at(-1)!.envelope).toMatchObject({ type: 'relay_session_revoked', payload: { sessionId: first.id, peerNodeId: b, reason: 'direct path' } });
    expect(relay.size).toBe(0);

    const second = await sessions.relay({ a: { nodeId: a, ips: ['127.0.0.1'] }, b: { nodeId: b, ips: ['127.0.0.2'] } });
    expect(second.id).not.toBe(first.id);
    clock.now += 119_999;
    expect(await sessions.sweep()).toEqual([]);
    clock.now += 1;
    expect(await sessions.sweep()).toEqual([second.id]);
    for (const [id, peerNodeId] of [[a, b], [b, a]] as const) expect(sent(id).at(-1)!.envelope).toMatchObject({ type: 'relay_session_revoked', payload: { sessionId: second.id, peerNodeId, reason: 'expired' } });
    expect(types(a).slice(n[0])).toEqual(['relay_session_assigned', 'relay_session_revoked', 'relay_session_assigned', 'relay_session_revoked']);
    // IPv6 relay hosts are bracketed.
    expect(new RelaySessions({ relay, mesh, publicHost: '2001:db8::1', logger: silent }).endpoint(40000)).toBe('[2001:db8::1]:40000');
  });

  it('RelaySessions.reconcile: holds exactly the wanted pairs; an allocation allocate() replaced is revoked before the new one is assigned', async () => {
    const { mesh, a, b, sent } = await setup();
    const clock = { now: 5_000_000 };
    const relay = new UdpRelay({ host: '127.0.0.1', logger: silent, sweepIntervalMs: 0, idleMs: 120_000, now: () => clock.now });
    cleanups.unshift(() => relay.close());
    const sessions = new RelaySessions({ relay, mesh, publicHost: '203.0.113.9', logger: silent });
    const pair = { a: { nodeId: a, ips: ['127.0.0.1'] }, b: { nodeId: b, ips: ['127.0.0.2'] } };
    const first = await sessions.reconcile([pair]);
    expect(first).toMatchObject({ ended: [], failed: 0 });
    expect(first.assigned).toHaveLength(1);
    // Again: nothing new, and the allocation is not renewed (only traffic renews it), but takes new IPs.
    clock.now += 60_000;
    const moved = { ...pair, b: { nodeId: b, ips: ['127.0.0.3'] } };
    expect(await sessions.reconcile([moved])).toEqual({ assigned: [], ended: [], failed: 0 });
    expect(relay.get(a, b)).toMatchObject({ expiresAt: clock.now + 60_000, b: { ips: ['127.0.0.3'] } });
    // Idle past expiry (120 s since the last renewal) with no sweep yet: the next reconcile gets a new
    // allocation; the old session is revoked first.
    clock.now += 60_000;
    const second = await sessions.reconcile([pair]);
    expect(second.assigned).toHaveLength(1);
    expect(second.assigned[0]).not.toBe(first.assigned[0]);
    const tail = sent(a).slice(-2).map((e) => [e.envelope.type, (e.envelope.payload as { sessionId: string }).sessionId, (e.envelope.payload as { reason?: string }).reason]);
    expect(tail).toEqual([
      ['relay_session_revoked', first.assigned[0], 'replaced'],
      ['relay_session_assigned', second.assigned[0], undefined],
    ]);
    expect(mesh.heldRelaySessions().map((h) => h.sessionId)).toEqual(second.assigned);
    // Not wanted any more (the pair went direct): revoked, ports freed, nothing held.
    expect(await sessions.reconcile([])).toEqual({ assigned: [], ended: second.assigned, failed: 0 });
    expect(relay.size).toBe(0);
    expect(sent(b).at(-1)!.envelope).toMatchObject({ type: 'relay_session_revoked', payload: { sessionId: second.assigned[0], reason: 'direct path' } });
    expect(mesh.heldRelaySessions()).toEqual([]);
  });

  it('held relay sessions survive a restart of the mesh service and are revoked by the next run', async () => {
    const { t, mesh, a, b } = await setup();
    await mesh.assignRelay('rOld', [{ nodeId: a, endpoint: '203.0.113.9:40001' }, { nodeId: b, endpoint: '203.0.113.9:40002' }]);
    await mesh.close();
    const next = await MeshService.open(t.store, silent, { sealing: t.sealing });
    cleanups.unshift(() => next.close());
    const hub = recordingSessions();
    next.setDelivery(hub);
    expect(next.heldRelaySessions()).toEqual([{ sessionId: 'rOld', a, b, endpoints: ['203.0.113.9:40001', '203.0.113.9:40002'] }]);
    const relay = new UdpRelay({ host: '127.0.0.1', logger: silent, sweepIntervalMs: 0 });
    cleanups.unshift(() => relay.close());
    const sessions = new RelaySessions({ relay, mesh: next, publicHost: '203.0.113.9', logger: silent });
    expect(await sessions.revokeStale(next.heldRelaySessions())).toBe(1);
    expect(next.heldRelaySessions()).toEqual([]);
  });

  it('RelaySessions.reconcile: a node holds at most maxPerNode allocations; held pairs count first; the rest of the mesh is still relayed', async () => {
    const t = await tempStore();
    cleanups.push(() => t.cleanup());
    const names = ['greedy', 'p1', 'p2', 'p3', 'x', 'y'];
    const ids: Record<string, string> = {};
    for (const n of names) ids[n] = await enrollNode(t.store, n);
    const mesh = await MeshService.open(t.store, silent, { sealing: t.sealing });
    cleanups.unshift(() => mesh.close());
    const hub = recordingSessions();
    mesh.setDelivery(hub);
    for (const [i, n] of names.entries()) {
      const session = hub.connect(ids[n]!);
      await mesh.agentOpened(ids[n]!, { versions: [1], agentVersion: 't', wgPublicKey: wgKey(i + 1), endpoints: [`192.0.2.${i + 1}:51820`] }, '127.0.0.1');
      await mesh.replay(session.agent, 0);
    }
    const relay = new UdpRelay({ host: '127.0.0.1', logger: silent, sweepIntervalMs: 0, idleMs: 120_000 });
    cleanups.unshift(() => relay.close());
    const sessions = new RelaySessions({ relay, mesh, publicHost: '203.0.113.9', logger: silent, maxPerNode: 2 });
    const pair = (a: string, b: string) => ({ a: { nodeId: ids[a]!, ips: ['127.0.0.1'] }, b: { nodeId: ids[b]!, ips: ['127.0.0.2'] } });
    // A node claiming a hard NAT wants the relay with every peer: it gets two, the third pair waits.
    const first = await sessions.reconcile([pair('greedy', 'p1'), pair('greedy', 'p2'), pair('greedy', 'p3'), pair('x', 'y')]);
    expect(first).toMatchObject({ ended: [], failed: 1 });
    expect(first.assigned).toHaveLength(3);
    expect(relay.get(ids.greedy!, ids.p3!)).toBeNull();
    expect(relay.get(ids.x!, ids.y!)).not.toBeNull(); // other pairs are not starved
    // Asked in another order, the held pairs keep their allocations; still no third.
    const again = await sessions.reconcile([pair('greedy', 'p3'), pair('greedy', 'p2'), pair('greedy', 'p1'), pair('x', 'y')]);
    expect(again).toEqual({ assigned: [], ended: [], failed: 1 });
    // One held pair ends: the waiting one gets its place.
    const freed = await sessions.reconcile([pair('greedy', 'p3'), pair('greedy', 'p2'), pair('x', 'y')]);
    expect(freed.ended).toHaveLength(1);
    expect(freed.assigned).toHaveLength(1);
    expect(freed.failed).toBe(0);
    expect(relay.get(ids.greedy!, ids.p3!)).not.toBeNull();
    expect(relay.get(ids.greedy!, ids.p1!)).toBeNull();
  });
});
