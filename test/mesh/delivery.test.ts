import { afterEach, describe, expect, it } from 'vitest';
import { decodeEnvelope } from '../../src/contract/mesh-events.js';
import type { SendResult } from '../../src/server/agent-sessions.js';
import { MeshService } from '../../src/server/mesh/service.js';
import type { SessionHost } from '../../src/server/session-host.js';
import { waitFor } from '../e2e/harness.js';
import { testHost } from '../helpers/agent-host.js';
import { enrollNode, silent, tempStore, verifies } from './helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c(); // last made, first closed: the host before the store
});

/**
 * Delivery through the real sessions facade (SessionHost), whose agents sit behind in-memory links
 * that can be shut: while one is, nothing the server queues reaches the agent and no send completes,
 * so the server's control queue fills up as behind a stalled socket.
 */
describe('event delivery', () => {
  it('stops sending to a session whose queue reports backpressure and sends the rest from the log once it drains', async () => {
    const t = await tempStore();
    cleanups.push(() => t.cleanup());
    const a = await enrollNode(t.store, 'a');
    const mesh = await MeshService.open(t.store, silent, { sealing: t.sealing, retainEvents: 1_000 });
    cleanups.push(() => mesh.close());
    const hosted = testHost(t.store);
    cleanups.push(() => hosted.close());
    const pair = await hosted.connect(a, { priorityHighWater: 16 * 1024 });
    const received: Array<{ seq: number; ok: boolean }> = [];
    pair.agent.on('message', (msg) => {
      if (msg.name !== 'event') return;
      const p = msg.payload as { envelope: Uint8Array; signature: Uint8Array; keyId: string };
      const d = decodeEnvelope(p.envelope);
      const seq = d.known ? d.envelope.seq : d.seq;
      received.push({ seq, ok: d.known && verifies({ envelope: d.envelope, bytes: p.envelope, signature: p.signature, keyId: p.keyId }, mesh.eventKeys()) });
    });
    const results: SendResult[] = [];
    const send = hosted.host.send.bind(hosted.host);
    hosted.host.send = ((agent, kind, payload) => {
      const result = send(agent, kind, payload);
      if (kind === 'event') results.push(result);
      return result;
    }) as SessionHost['send'];
    mesh.setDelivery(hosted.host);
    await mesh.replay(pair.handle, mesh.nodeInfo(a)!.lastSeq);

    // The agent stops reading. 300 events of ~1 KiB would be ~300 KiB in the control queue: past the
    // 16 × 16 KiB at which the session fails itself, had delivery ignored the backpressure.
    pair.shut();
    const first = mesh.nodeInfo(a)!.lastSeq + 1;
    for (let i = 0; i < 300; i++) await mesh.publish(a, 'action_request', { action: 'noop', args: { pad: 'x'.repeat(1000), i: String(i) } });
    const last = mesh.nodeInfo(a)!.lastSeq;
    expect(last - first + 1).toBe(300);
    const stoppedAt = results.indexOf('backpressure');
    expect(stoppedAt).toBeGreaterThan(0);
    expect(results).toHaveLength(stoppedAt + 1); // nothing more was queued after the first backpressure
    expect(pair.handle.open).toBe(true);

    // The agent reads again: the drain probe is answered, and the held-back events follow from the log.
    pair.open();
    await waitFor('every event delivered', async () => received.length > 0 && received.at(-1)!.seq === last, 30_000);
    expect(received.map((r) => r.seq)).toEqual(Array.from({ length: 300 }, (_, i) => first + i));
    expect(received.every((r) => r.ok)).toBe(true);
    expect(pair.handle.open).toBe(true);

    // And live delivery carries on after the drain.
    await mesh.publish(a, 'action_request', { action: 'noop' });
    await waitFor('live event delivered', async () => received.at(-1)!.seq === last + 1, 10_000);
  });

  it('a session that closes while held back is dropped; its successor gets the events by replay', async () => {
    const t = await tempStore();
    cleanups.push(() => t.cleanup());
    const a = await enrollNode(t.store, 'a');
    const mesh = await MeshService.open(t.store, silent, { sealing: t.sealing, retainEvents: 1_000 });
    cleanups.push(() => mesh.close());
    const hosted = testHost(t.store);
    cleanups.push(() => hosted.close());
    mesh.setDelivery(hosted.host);
    const stalled = await hosted.connect(a, { priorityHighWater: 4 * 1024 });
    const start = mesh.nodeInfo(a)!.lastSeq;
    await mesh.replay(stalled.handle, start);
    stalled.shut();
    for (let i = 0; i < 50; i++) await mesh.publish(a, 'action_request', { action: 'noop', args: { pad: 'x'.repeat(500) } });
    stalled.server.close();
    stalled.open();
    stalled.agent.close();

    const fresh = await hosted.connect(a, { priorityHighWater: 1024 * 1024 });
    const seqs: number[] = [];
    fresh.agent.on('message', (msg) => {
      if (msg.name !== 'event') return;
      const d = decodeEnvelope((msg.payload as { envelope: Uint8Array }).envelope);
      seqs.push(d.known ? d.envelope.seq : d.seq);
    });
    expect(hosted.host.current(a)).toBe(fresh.handle);
    await mesh.replay(fresh.handle, start);
    await waitFor('replayed', async () => seqs.length === 50, 10_000);
    expect(seqs).toEqual(Array.from({ length: 50 }, (_, i) => start + 1 + i));
  });
});
