import { describe, expect, it } from 'vitest';
import { AgentRunner } from '../../src/agent/connection.js';
import { attachFeatures, openFeatureContext, type AgentFeature } from '../../src/agent/feature.js';
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

describe('the core behind the feature context', () => {
  it('hands features the log file it was given (none by default) and only the record-taking side of the upload channel', () => {
    const own = new AgentRunner(ctx);
    const plain = openFeatureContext(own, ctx);
    expect(plain.context.logFile).toBeNull();
    expect(Object.keys(plain.context.uploads).sort()).toEqual(['addLog', 'addMetrics', 'recordAudit']);
    expect(Object.isFrozen(plain.context)).toBe(true);
    plain.close();
    const logFile = { path: '/x/agent.log', size: 0, on: () => logFile, off: () => logFile } as never;
    const withLog = openFeatureContext(own, { ...ctx, logFile });
    expect(withLog.context.logFile).toBe(logFile);
    withLog.close();
  });

  it('subscribes the upload channel to connections until closed; onConnected returns its removal', () => {
    const own = new AgentRunner(ctx);
    const before = own.listenerCount('connected');
    const core = openFeatureContext(own, ctx);
    expect(own.listenerCount('connected')).toBe(before + 1);
    const off = core.context.onConnected(() => {});
    expect(own.listenerCount('connected')).toBe(before + 2);
    off();
    core.close();
    core.close();
    expect(own.listenerCount('connected')).toBe(before);
  });

  it('attachFeatures closes the channel after the last feature', async () => {
    const own = new AgentRunner(ctx);
    const before = own.listenerCount('connected');
    const seen: number[] = [];
    const attached = await attachFeatures(own, [{
      name: 'probe',
      attach(_runner, c) {
        c.uploads.recordAudit({ action: 'ping', target: 'x', result: 'ok' });
        return () => void seen.push(own.listenerCount('connected'));
      },
    }], ctx);
    expect(own.listenerCount('connected')).toBe(before + 1);
    await attached.close();
    // While the feature closed, the channel was still there; after, it is gone.
    expect(seen).toEqual([before + 1]);
    expect(own.listenerCount('connected')).toBe(before);
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
