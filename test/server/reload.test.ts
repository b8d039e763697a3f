import { describe, expect, it } from 'vitest';
import { parseServerConfig } from '../../src/server/config.js';
import { applyReloadable, RELOADABLE, type ReloadTargets } from '../../src/server/reload.js';
import { createLogger, setLogLevel } from '../../src/util/logger.js';
import { httpsRequest, startTestServer } from './helpers.js';

function recorder(): { calls: Array<[string, unknown]>; targets: ReloadTargets } {
  const calls: Array<[string, unknown]> = [];
  const targets = Object.fromEntries([...RELOADABLE].map((k) => [k, (v: unknown) => calls.push([k, v])])) as unknown as ReloadTargets;
  return { calls, targets };
}

describe('applyReloadable: the one place a reload swaps parts of a running server', () => {
  const env = {};
  const base = parseServerConfig({ dataDir: '/tmp/x', logLevel: 'info' }, env);

  it('applies the reloadable keys, reports the others, and keeps their running values', () => {
    const next = parseServerConfig({ dataDir: '/tmp/x', logLevel: 'warn', certLifetimeMs: 86_400_000, enrollFailuresPerMinute: 5, clientHelloTimeoutMs: 700, listen: { host: '127.0.0.1', port: 9000 } }, env);
    const { calls, targets } = recorder();
    const { config, changes } = applyReloadable(base, next, targets);
    expect(calls.sort()).toEqual([['certLifetimeMs', 86_400_000], ['clientHelloTimeoutMs', 700], ['enrollFailuresPerMinute', 5], ['logLevel', 'warn']]);
    expect(changes.map((c) => [c.key, c.applied])).toEqual([
      ['certLifetimeMs', true],
      ['clientHelloTimeoutMs', true],
      ['enrollFailuresPerMinute', true],
      ['listen', false],
      ['logLevel', true],
    ]);
    expect(Object.isFrozen(config)).toBe(true);
    expect(config.logLevel).toBe('warn');
    expect(config.listen).toEqual(base.listen); // bound at start: the running value stays
    // A second reload of the same file applies nothing again and still names what needs a restart.
    const again = recorder();
    expect(applyReloadable(config, next, again.targets).changes).toEqual([{ key: 'listen', from: base.listen, to: next.listen, applied: false }]);
    expect(again.calls).toEqual([]);
  });

  it('a changed store URL needs a restart, and its passwords are not in what is reported (the reload logs it)', () => {
    const before = parseServerConfig({ dataDir: '/tmp/x', store: 'postgres://meshlink:old-secret@db1/meshlink' }, env);
    const after = parseServerConfig({ dataDir: '/tmp/x', store: 'postgres://meshlink:new-secret@db2/meshlink?sslpassword=key-secret' }, env);
    const { calls, targets } = recorder();
    const { config, changes } = applyReloadable(before, after, targets);
    expect(calls).toEqual([]);
    expect(config.store).toBe(before.store);
    expect(changes).toEqual([{ key: 'store', from: 'postgres://meshlink:***@db1/meshlink', to: 'postgres://meshlink:***@db2/meshlink?sslpassword=***', applied: false }]);
    expect(JSON.stringify(changes)).not.toMatch(/secret/);
  });

  it('nothing changed: nothing applied, nothing reported', () => {
    const { calls, targets } = recorder();
    expect(applyReloadable(base, parseServerConfig({ dataDir: '/tmp/x' }, env), targets).changes).toEqual([]);
    expect(calls).toEqual([]);
  });
});

describe('setLogLevel reaches the children a logger already made', () => {
  it('a child and a grandchild follow the new level', () => {
    const root = createLogger({ name: 't', level: 'info', stdout: false, sink: { write: () => true } });
    const child = root.child({ a: 1 });
    const grandchild = child.child({ b: 2 });
    expect(grandchild.isLevelEnabled('debug')).toBe(false);
    setLogLevel(root, 'debug');
    expect(child.level).toBe('debug');
    expect(grandchild.isLevelEnabled('debug')).toBe(true);
    setLogLevel(root, 'error');
    expect(grandchild.isLevelEnabled('warn')).toBe(false);
  });
});

describe('RunningServer.reload on a real server', () => {
  it('a lower enrollment failure rate applies to the next failures at once; the effective config changes', async () => {
    const ts = await startTestServer({ enrollFailuresPerMinute: 100_000 });
    try {
      const next = parseServerConfig({ ...ts.server.config, enrollFailuresPerMinute: 2 });
      const changes = ts.server.reload(next);
      expect(changes).toEqual([{ key: 'enrollFailuresPerMinute', from: 100_000, to: 2, applied: true }]);
      expect(ts.server.config.enrollFailuresPerMinute).toBe(2);
      const statuses: number[] = [];
      for (let i = 0; i < 3; i++) {
        const res = await httpsRequest(`${ts.url}/v1/enroll`, { ca: ts.server.caCertPem, body: { token: 'not-a-token', csr: 'x', hostname: 'h' } });
        statuses.push(res.status);
      }
      expect(statuses.slice(0, 2).every((s) => s !== 429)).toBe(true);
      expect(statuses[2]).toBe(429);
    } finally {
      await ts.stop();
    }
  }, 30_000);
});
