import { describe, expect, it } from 'vitest';
import { AgentRunner } from '../../src/agent/connection.js';
import { attachFeatures, type AgentFeature } from '../../src/agent/feature.js';
import { createLogger } from '../../src/util/logger.js';

const logger = createLogger({ name: 'test', level: 'silent' });
const ctx = { stateDir: '/nonexistent/state', logger };
const runner = new AgentRunner(ctx);

/** A feature that records its attach and close in `events`. */
function recording(name: string, events: string[], behaviour: { attachThrows?: boolean; closeThrows?: boolean } = {}): AgentFeature {
  return {
    name,
    async attach(r, c) {
      expect(r).toBe(runner);
      expect(c.stateDir).toBe(ctx.stateDir);
      if (behaviour.attachThrows) throw new Error(`${name} cannot attach`);
      events.push(`attach ${name}`);
      return async () => {
        events.push(`close ${name}`);
        if (behaviour.closeThrows) throw new Error(`${name} cannot close`);
      };
    },
  };
}

describe('the feature context', () => {
  it('registers on the runner and reports that nothing can be sent while not connected', async () => {
    const own = new AgentRunner(ctx);
    let sent: boolean | null = null;
    await attachFeatures(own, [{
      name: 'probe',
      attach(_runner, c) {
        c.onMessage('event', () => {});
        c.onStream('exec.open', () => {});
        sent = c.send('heartbeat', { seq: 1, ts: Date.now(), uptimeMs: 0 });
        expect(c.status()).toEqual({ state: 'connecting', session: null });
        return () => {};
      },
    }], ctx);
    expect(sent).toBe(false);
    // onStream is exclusive per kind, on the runner itself.
    expect(() => own.onStream('exec.open', () => {})).toThrow(/already registered/);
  });
});

describe('attachFeatures', () => {
  it('attaches in order and closes in reverse order, once', async () => {
    const events: string[] = [];
    const attached = await attachFeatures(runner, [recording('first', events), recording('second', events)], ctx);
    expect(events).toEqual(['attach first', 'attach second']);
    await attached.close();
    await attached.close();
    expect(events).toEqual(['attach first', 'attach second', 'close second', 'close first']);
  });

  it('closes the features already attached when a later one fails to attach, and rethrows', async () => {
    const events: string[] = [];
    const features = [recording('first', events), recording('second', events), recording('third', events, { attachThrows: true }), recording('fourth', events)];
    await expect(attachFeatures(runner, features, ctx)).rejects.toThrow('third cannot attach');
    expect(events).toEqual(['attach first', 'attach second', 'close second', 'close first']);
  });

  it('a feature that fails to close does not keep the others open', async () => {
    const events: string[] = [];
    const attached = await attachFeatures(runner, [recording('first', events), recording('second', events, { closeThrows: true })], ctx);
    await expect(attached.close()).resolves.toBeUndefined();
    expect(events).toEqual(['attach first', 'attach second', 'close second', 'close first']);
  });
});
