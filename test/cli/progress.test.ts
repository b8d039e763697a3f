import { describe, expect, it } from 'vitest';
import { terminalProgress } from '../../src/cli/progress.js';

/** A stand-in for stderr that records what is drawn; the clock is injected, so nothing here depends on timing. */
function fakeTerminal(isTTY: boolean): { out: NodeJS.WriteStream; writes: string[] } {
  const writes: string[] = [];
  return { out: { isTTY, write: (s: string) => (writes.push(s), true) } as unknown as NodeJS.WriteStream, writes };
}

describe('terminalProgress', () => {
  it('is off when the stream is not a terminal', () => {
    expect(terminalProgress(fakeTerminal(false).out)).toBeNull();
  });

  it('redraws at most every 100 ms, shows bytes, percent, rate and ETA, and ends the line', () => {
    const { out, writes } = fakeTerminal(true);
    let now = 1_000;
    const p = terminalProgress(out, () => now)!;
    for (let i = 1; i <= 1000; i++) p.update('sending', i * 1024, 10 * 1024 * 1024); // same instant: one draw
    expect(writes).toHaveLength(1);
    now += 1_000;
    p.update('sending', 5 * 1024 * 1024, 10 * 1024 * 1024); // ~5 MiB in 1 s since the first sample
    expect(writes).toHaveLength(2);
    // eslint-disable-next-line no-control-regex -- the erase-to-end-of-line escape is what is drawn
    expect(writes[1]).toMatch(/^\rsending 5\.0 MiB \/ 10\.0 MiB {2}50% {2}5\.0 MiB\/s {2}ETA 2s\x1b\[K$/);
    now += 50;
    p.update('sending', 6 * 1024 * 1024, 10 * 1024 * 1024); // within 100 ms: dropped
    expect(writes).toHaveLength(2);
    p.update('sending', 10 * 1024 * 1024, 10 * 1024 * 1024); // the end is always drawn
    expect(writes[2]).toMatch(/100%/);
    p.finish();
    expect(writes.at(-1)).toBe('\n');
  });
});
