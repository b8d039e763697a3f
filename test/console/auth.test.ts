import { describe, expect, it } from 'vitest';
import { ConsoleAuth } from '../../src/server/console/auth.js';

/** The console's logins in memory: one use, expiry on an injected clock, bounds. */
describe('ConsoleAuth', () => {
  it('refuses a link beyond the pending bound until one is used or expires', () => {
    let now = 0;
    const auth = new ConsoleAuth({ now: () => now, maxPendingLinks: 2 });
    const a = auth.createLink('op');
    auth.createLink('op');
    expect(() => auth.createLink('op')).toThrow(expect.objectContaining({ code: 'ML_ERR_CONSOLE_BUSY' }));
    auth.redeem(a.token);
    expect(() => auth.createLink('op')).not.toThrow();
    now += 60_000;
    expect(auth.counts.links).toBe(0);
  });

  it('keeps at most maxSessions: a new one pushes out the oldest', () => {
    const auth = new ConsoleAuth({ maxSessions: 2 });
    const ids = [1, 2, 3].map(() => auth.redeem(auth.createLink('op').token).sessionId);
    expect(auth.session(ids[0])).toBeUndefined();
    expect(auth.session(ids[1])).toMatchObject({ actor: 'console:op' });
    expect(auth.session(ids[2])).toMatchObject({ actor: 'console:op' });
    auth.end(ids[2]);
    expect(auth.session(ids[2])).toBeUndefined();
  });

  it('a link token is no session id, nor a session id a link token', () => {
    const auth = new ConsoleAuth();
    const { token } = auth.createLink('op');
    const { sessionId } = auth.redeem(auth.createLink('op').token);
    expect(auth.session(sessionId)).toBeDefined();
    expect(auth.session(token)).toBeUndefined();
    expect(() => auth.redeem(sessionId)).toThrow(expect.objectContaining({ code: 'ML_ERR_CONSOLE_UNAUTHORIZED' }));
  });
});
