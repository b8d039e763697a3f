import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../src/util/duration.js';

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['90s', 90_000],
    ['60m', 3_600_000],
    ['1h', 3_600_000],
    ['30d', 2_592_000_000],
    [' 7d ', 604_800_000],
    ['1h30m', 5_400_000],
    ['2d12h', 216_000_000],
    ['1m30s500ms', 90_500],
  ])('%s → %d ms', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(['', '1', 'h', '1.5h', '-1h', '1w', '1 h', '99999999999999d', '30m1h', '1h1h', '1h 30m', '1h30', 'ms'])('rejects %j', (text) => {
    expect(() => parseDuration(text)).toThrow(expect.objectContaining({ code: 'ML_ERR_DURATION' }));
  });

  it('a combination is the sum of its parts (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 999 }), fc.integer({ min: 0, max: 23 }), fc.integer({ min: 0, max: 59 }), (d, h, m) => {
        expect(parseDuration(`${d}d${h}h${m}m`)).toBe(parseDuration(`${d}d`) + parseDuration(`${h}h`) + parseDuration(`${m}m`));
      }),
    );
  });

  it('formatDuration round-trips', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 10_000_000 }), fc.constantFrom('ms', 's', 'm', 'h', 'd'), (n, unit) => {
        const ms = parseDuration(`${n}${unit}`);
        expect(parseDuration(formatDuration(ms))).toBe(ms);
      }),
    );
  });
});
