import { afterEach, describe, expect, it } from 'vitest';
import { decodeEnvelope } from '../../src/contract/mesh-events.js';
import { Session } from '../../src/protocol/session.js';
import { MeshService } from '../../src/server/mesh/service.js';
import { waitFor } from '../e2e/harness.js';
import { enrollNode, silent, tempStore, verifies } from './helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

/**
 * An agent and a server session over an in-memory link whose server-to-agent direction can be shut:
 * while it is, nothing the server queues reaches the agent and no send completes, so the server's
 * control queue fills up as behind a stalled socket.
 */
async function gatedPair(priorityHighWater: number): Promise<{ agent: Session; server: Session; open(): void; shut(): void }> {
  let agent!: Session;
  // eslint-disable-next-line prefer-const -- assigned after the agent's transport, which reads it, is made
  let server!: Session;
  let shut = false;
  const held: Array<() => void> = [];
  const deliver = (to: () => Session, message: Uint8Array, done: (err?: Error | null) => void) => () =>
    setImmediate(() => {
      to().receive(message);
      done();
    });
  // eslint-disable-next-line prefer-const -- declared before the closures above that read it
  agent = new Session({
    role: 'agent',
    transport: { send: (m, done) => deliver(() => server, Uint8Array.from(m), done)(), close: (code, reason) => setImmediate(() => server.transportClosed(code, reason)) },
  });
  server = new Session({
    role: 'server',
    transportHighWater: 1,
    priorityHighWater,
    onHello: () => ({ nodeId: 'node-1', serverVersion: 'test', heartbeatIntervalMs: 15_000 }),
    transport: {
      send: (m, done) => {
        const go = deliver(() => agent, Uint8Array.from(m), done);
        if (shut) held.push(go);
        else go();
      },
      close: (code, reason) => setImmediate(() => agent.transportClosed(code, reason)),
    },
  });
  const opened = new Promise<void>((r) => server.once('open', () => r()));
  await agent.handshake({ agentVersion: 'test' });
  await opened;
  return {
    agent,
    server,
    shut: () => void (shut = true),
    open: () => {
      shut = false;
      for (const go of held.splice(0)) go();
    },
  };
}

describe('event delivery', () => {
  it('stops sending to a session whose queue reports backpressure and sends the rest from the log once it drains', async () => {
    const t = await tempStore();
    cleanups.push(() => t.cleanup());
    const a = enrollNode(t.store, 'a');
    const mesh = await MeshService.open(t.store, silent, { passphrase: 'test', retainEvents: 1_000 });
    cleanups.push(() => mesh.close());
    const pair = await gatedPair(16 * 1024);
    cleanups.push(() => {
      pair.open();
      pair.agent.close();
      pair.server.close();
    });
    const received: Array<{ seq: number; ok: boolean }> = [];
    pair.agent.on('message', (msg) => {
      if (msg.name !== 'event') return;
      const p = msg.payload as { envelope: Uint8Array; signature: Uint8Array; keyId: string };
      const d = decodeEnvelope(p.envelope);
      const seq = d.known ? d.envelope.seq : d.seq;
      received.push({ seq, ok: d.known && verifies({ envelope: d.envelope, bytes: p.envelope, signature: p.signature, keyId: p.keyId }, mesh.eventKeys()) });
    });
    const results: boolean[] = [];
    const send = pair.server.send.bind(pair.server);
    pair.server.send = ((name, payload) => {
      const below = send(name, payload);
      if (name === 'event') results.push(below);
      return below;
    }) as Session['send'];
    mesh.setDelivery({ sessionOf: (id) => (id === a ? pair.server : undefined) });
    mesh.replay(a, pair.server, mesh.nodeInfo(a)!.lastSeq);

    // The agent stops reading. 300 events of ~1 KiB would be ~300 KiB in the control queue: past the
    // 16 × 16 KiB at which the session fails itself, had delivery ignored send()'s false.
    pair.shut();
    const first = mesh.nodeInfo(a)!.lastSeq + 1;
    for (let i = 0; i < 300; i++) mesh.publish(a, 'action_request', { action: 'noop', args: { pad: 'x'.repeat(1000), i: String(i) } });
    const last = mesh.nodeInfo(a)!.lastSeq;
    expect(last - first + 1).toBe(300);
    const stoppedAt = results.indexOf(false);
    expect(stoppedAt).toBeGreaterThan(0);
    expect(results).toHaveLength(stoppedAt + 1); // nothing more was queued after the first false
    expect(pair.server.state).toBe('open');

    // The agent reads again: the drain probe is answered, and the held-back events follow from the log.
    pair.open();
    await waitFor('every event delivered', async () => received.length > 0 && received.at(-1)!.seq === last, 30_000);
    expect(received.map((r) => r.seq)).toEqual(Array.from({ length: 300 }, (_, i) => first + i));
    expect(received.every((r) => r.ok)).toBe(true);
    expect(pair.server.state).toBe('open');

    // And live delivery carries on after the drain.
    mesh.publish(a, 'action_request', { action: 'noop' });
    await waitFor('live event delivered', async () => received.at(-1)!.seq === last + 1, 10_000);
  });

  it('a session that closes while held back is dropped; its successor gets the events by replay', async () => {
    const t = await tempStore();
    cleanups.push(() => t.cleanup());
    const a = enrollNode(t.store, 'a');
    const mesh = await MeshService.open(t.store, silent, { passphrase: 'test', retainEvents: 1_000 });
    cleanups.push(() => mesh.close());
    const stalled = await gatedPair(4 * 1024);
    let current = stalled.server;
    mesh.setDelivery({ sessionOf: (id) => (id === a ? current : undefined) });
    const start = mesh.nodeInfo(a)!.lastSeq;
    mesh.replay(a, stalled.server, start);
    stalled.shut();
    for (let i = 0; i < 50; i++) mesh.publish(a, 'action_request', { action: 'noop', args: { pad: 'x'.repeat(500) } });
    stalled.server.close();
    stalled.open();
    stalled.agent.close();

    const fresh = await gatedPair(1024 * 1024);
    cleanups.push(() => {
      fresh.agent.close();
      fresh.server.close();
    });
    const seqs: number[] = [];
    fresh.agent.on('message', (msg) => {
      if (msg.name !== 'event') return;
      const d = decodeEnvelope((msg.payload as { envelope: Uint8Array }).envelope);
      seqs.push(d.known ? d.envelope.seq : d.seq);
    });
    current = fresh.server;
    mesh.replay(a, fresh.server, start);
    await waitFor('replayed', async () => seqs.length === 50, 10_000);
    expect(seqs).toEqual(Array.from({ length: 50 }, (_, i) => start + 1 + i));
  });
});
