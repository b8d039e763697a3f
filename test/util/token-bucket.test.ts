import { describe, expect, it } from 'vitest';
import { TokenBuckets } from '../../src/util/token-bucket.js';

describe('TokenBuckets', () => {
  it('allows a burst of N failures, then asks to wait, and refills over time', () => {
    const rl = new TokenBuckets({ perMinute: 10 });
    const t = 1_000_000;
    for (let i = 0; i < 10; i++) {
      expect(rl.retryAfterSec('a', t)).toBe(0);
      rl.charge('a', t);
    }
    expect(rl.retryAfterSec('a', t)).toBe(6);
    expect(rl.retryAfterSec('b', t)).toBe(0);
    expect(rl.retryAfterSec('a', t + 6_000)).toBe(0);
  });

  it('setRate: a key keeps what it holds up to the new burst, and refills at the new rate', () => {
    const rl = new TokenBuckets({ perMinute: 10 });
    for (let i = 0; i < 4; i++) rl.charge('a', 0); // holds 6
    rl.setRate(3, 0);
    expect(rl.level('a', 0)).toBe(3); // capped at the new burst
    expect(rl.level('fresh', 0)).toBe(3); // a key never seen starts full at the new burst
    for (let i = 0; i < 3; i++) rl.charge('a', 0);
    expect(rl.retryAfterSec('a', 0)).toBe(20); // one token per 20 s at 3 a minute
    rl.setRate(60, 0);
    expect(rl.level('a', 0)).toBe(0); // a higher rate refills from what it holds
    expect(rl.retryAfterSec('a', 0)).toBe(1);
    expect(() => rl.setRate(0)).toThrow(RangeError);
  });

  it('setRate keeps a capacity given to the constructor (only the refill rate changes)', () => {
    const rl = new TokenBuckets({ perMinute: 60, capacity: 5 });
    for (let i = 0; i < 2; i++) rl.charge('a', 0); // holds 3
    rl.setRate(600, 0);
    expect(rl.level('fresh', 0)).toBe(5); // not 600: the burst stays 5
    expect(rl.level('a', 0)).toBe(3);
    expect(rl.level('a', 100)).toBe(4); // 10 a second now
    expect(rl.level('a', 10_000)).toBe(5);
    rl.setRate(1, 10_000);
    expect(rl.level('a', 10_000)).toBe(5); // a lower rate does not shrink the fixed burst
  });

  it('keeps its table bounded', () => {
    const rl = new TokenBuckets({ perMinute: 10, maxEntries: 100 });
    for (let i = 0; i < 1_000; i++) rl.charge(`10.0.${i >> 8}.${i & 255}`, 0);
    expect(rl.size).toBeLessThanOrEqual(100);
  });

  it('take spends only what is there; forget drops the keys it picks', () => {
    const rl = new TokenBuckets({ perMinute: 2 });
    expect(rl.take('n1\0logs', 0)).toBe(true);
    expect(rl.take('n1\0logs', 0)).toBe(true);
    expect(rl.take('n1\0logs', 0)).toBe(false);
    expect(rl.level('n1\0logs', 0)).toBe(0);
    expect(rl.take('n1\0logs', 30_000)).toBe(true); // one token per 30 s
    expect(rl.take('n2\0logs', 0)).toBe(true);
    rl.forget((k) => k.startsWith('n1\0'));
    expect(rl.size).toBe(1);
    expect(rl.level('n1\0logs', 30_000)).toBe(2);
    expect(() => new TokenBuckets({ perMinute: 0 })).toThrow(RangeError);
  });

  it('takeMany spends a count at once, all or nothing; capacity bounds the burst below a minute of rate', () => {
    // 1000 bytes a second, a burst of 1500 bytes (the relay's bandwidth cap).
    const rl = new TokenBuckets({ perMinute: 60_000, capacity: 1500 });
    expect(rl.level('r1/0', 0)).toBe(1500);
    expect(rl.takeMany('r1/0', 1000, 0)).toBe(true);
    expect(rl.takeMany('r1/0', 600, 0)).toBe(false);
    expect(rl.level('r1/0', 0)).toBe(500);
    expect(rl.takeMany('r1/0', 600, 100)).toBe(true); // 100 ms refill 100 bytes
    expect(rl.level('r1/0', 60_000)).toBe(1500);
    expect(() => new TokenBuckets({ perMinute: 10, capacity: 0 })).toThrow(RangeError);
  });
});
