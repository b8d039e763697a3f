import { describe, expect, it } from 'vitest';
import { Backoff } from '../../src/agent/backoff.js';
import { DEFAULT_RENEW_POLICY, renewalDueAt } from '../../src/agent/renewal.js';

describe('Backoff', () => {
  it('doubles from 1 s to a 60 s cap with ±25 % jitter', () => {
    const mid = new Backoff({ random: () => 0.5 });
    expect(Array.from({ length: 9 }, () => mid.next())).toEqual([1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
    const low = new Backoff({ random: () => 0 });
    const high = new Backoff({ random: () => 0.999999 });
    expect(low.next()).toBe(750);
    expect(high.next()).toBe(1250);
    for (let i = 0; i < 10; i++) {
      low.next();
      high.next();
    }
    expect(low.next()).toBe(45000);
    expect(high.next()).toBe(75000);
  });

  it('spreads a fleet: 1,000 agents reconnecting at attempt 3 do not land on the same second', () => {
    const delays = Array.from({ length: 1000 }, () => {
      const b = new Backoff();
      b.next();
      b.next();
      return b.next();
    });
    const buckets = new Map<number, number>();
    for (const d of delays) buckets.set(Math.floor(d / 100), (buckets.get(Math.floor(d / 100)) ?? 0) + 1);
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(3000);
    expect(Math.max(...delays)).toBeLessThanOrEqual(5000);
    // 20 buckets of 100 ms across the ±25 % window; none holds more than a fifth of the fleet.
    expect(Math.max(...buckets.values())).toBeLessThan(200);
  });

  it('starts over only after a connection that stayed up', () => {
    const b = new Backoff({ random: () => 0.5, stableAfterMs: 30_000 });
    b.next();
    b.next();
    b.connectionEnded(5_000);
    expect(b.next()).toBe(4000);
    b.connectionEnded(31_000);
    expect(b.next()).toBe(1000);
  });
});

describe('renewalDueAt', () => {
  const DAY = 86_400_000;
  it('a 30-day certificate renews at two thirds (day 20), before the 7-day margin (day 23)', () => {
    expect(renewalDueAt(0, 30 * DAY)).toBe(20 * DAY);
  });
  it('whichever comes first: a 90-day certificate at two thirds (day 60), a 15-day one 7 days before NotAfter (day 8)', () => {
    expect(renewalDueAt(0, 90 * DAY)).toBe(60 * DAY);
    expect(renewalDueAt(0, 15 * DAY)).toBe(8 * DAY);
  });
  it('a 60-second certificate renews at half its life, not at once', () => {
    expect(renewalDueAt(1_000_000, 1_060_000)).toBe(1_030_000);
  });
  it('follows a configured policy', () => {
    expect(renewalDueAt(0, 100 * DAY, { renewBeforeMs: 10 * DAY, lifetimeFraction: 0.95 })).toBe(90 * DAY);
    expect(DEFAULT_RENEW_POLICY).toEqual({ renewBeforeMs: 7 * DAY, lifetimeFraction: 2 / 3 });
  });
});
