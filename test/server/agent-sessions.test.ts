import { randomBytes, randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { openServerStore } from '../../src/server/features.js';
import type { Store } from '../../src/server/store/store.js';
import { manualTimers, testHost, type TestHost } from '../helpers/agent-host.js';
import { tempDir } from './helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(): Promise<{ store: Store; nodeId: string; t: TestHost }> {
  const d = await tempDir('ml-sessions-');
  cleanups.push(d.cleanup);
  const store = await openServerStore(`${d.path}/meshlink.db`);
  cleanups.push(() => store.close());
  const nodeId = randomUUID();
  store.database.sqlite!.prepare('INSERT INTO nodes (id, hostname, created_at) VALUES (?, ?, 0)').run(nodeId, 'n1');
  const t = testHost(store);
  cleanups.push(() => t.close());
  return { store, nodeId, t };
}

/** Lets every pending delivery of the in-memory links run (each hop is one setImmediate). */
async function settle(turns = 20): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}

/** An upgrade offer of about 1 KiB that does not compress: any server-to-agent control kind would do. */
const offer = (i: number) => ({ version: `1.0.${i}`, buildId: i.toString(16).padStart(64, '0'), url: `https://example.test/${randomBytes(500).toString('hex')}`, sha256: 'a'.repeat(64) });

describe('AgentSessions facade', () => {
  it('send reports backpressure while the agent does not read; drained resolves once it has read what was queued', async () => {
    const { nodeId, t } = await setup();
    const c = await t.connect(nodeId, { priorityHighWater: 8 * 1024 });
    expect(t.host.current(nodeId)).toBe(c.handle);
    let received = 0;
    c.agent.on('message', (m) => {
      if (m.name === 'agent.upgrade') received++;
    });

    expect(t.host.send(c.handle, 'agent.upgrade', offer(0))).toBe('sent');
    c.shut();
    const results: string[] = [];
    for (let i = 1; i <= 20 && results.at(-1) !== 'backpressure'; i++) results.push(t.host.send(c.handle, 'agent.upgrade', offer(i)));
    expect(results.at(-1)).toBe('backpressure');
    const queued = 1 + results.length;

    let drained = false;
    const done = t.host.drained(c.handle).then(() => void (drained = true));
    await settle();
    expect(drained).toBe(false); // nothing can reach the agent while its link is shut
    c.open();
    await done;
    expect(received).toBe(queued); // everything queued before drained() was called had arrived
    expect(t.host.send(c.handle, 'agent.upgrade', offer(99))).toBe('sent');
  });

  it('drained outlasts a ping that times out while the session stays open', async () => {
    const { nodeId, t } = await setup();
    const timers = manualTimers();
    const c = await t.connect(nodeId, { timers });
    c.shut();
    let drained = false;
    const done = t.host.drained(c.handle).then(() => void (drained = true));
    expect(timers.fire()).toBe(1); // the first probe's timeout: the agent is slow, not gone
    await settle();
    expect(drained).toBe(false);
    expect(c.handle.open).toBe(true);
    c.open();
    await done;
  });

  it('a closed session: send reports closed, drained and openStream reject, the handle is not current', async () => {
    const { nodeId, t } = await setup();
    const c = await t.connect(nodeId);
    c.shut();
    const pending = t.host.drained(c.handle);
    c.server.close();
    await expect(pending).rejects.toBeInstanceOf(Error);
    expect(c.handle.open).toBe(false);
    expect(t.host.send(c.handle, 'agent.upgrade', offer(0))).toBe('closed');
    await expect(t.host.drained(c.handle)).rejects.toMatchObject({ code: 'ML_ERR_SESSION_CLOSED' });
    await expect(t.host.openStream(c.handle, 'exec.open', { command: 'true', args: [] })).rejects.toMatchObject({ code: 'ML_ERR_SESSION_CLOSED' });
    expect(t.host.current(nodeId)).toBeUndefined();
  });
});
