import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { emptyReport, fuzzDecoder, fuzzEnroll, fuzzLive, startLiveTarget, DOCUMENTED_CLOSE_CODES } from '../../bench/fuzz.js';

/** A small sample of `npm run fuzz` (which runs ≥ 100,000 cases), with a fixed and a random seed. */
describe('fuzz sample: decoder, live connections, /v1/enroll', () => {
  const seed = Date.now() % 1e9;
  let target: Awaited<ReturnType<typeof startLiveTarget>>;
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown): void => void unhandled.push(e);

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    target = await startLiveTarget(3);
  }, 60_000);
  afterAll(async () => {
    process.off('unhandledRejection', onUnhandled);
    await target?.close();
  });

  it.each([1, seed])('decoder, codec and a server Session (seed %i): only protocol errors, documented close codes', (s) => {
    const report = emptyReport();
    fuzzDecoder(3_000, s, report);
    expect(report.failures).toEqual([]);
    expect(report.decoderCases).toBe(3_000);
    // The sample really reached the session's error paths, not just the decoder's.
    expect(Object.keys(report.closeCodes).length).toBeGreaterThan(3);
    for (const code of Object.keys(report.closeCodes)) expect(DOCUMENTED_CLOSE_CODES.has(Number(code.slice(4)))).toBe(true);
  });

  it('live: mutated frames of every kind over mTLS; the server keeps serving a heartbeating victim', async () => {
    const report = emptyReport();
    await fuzzLive(target, 300, seed, report);
    expect(report.failures).toEqual([]);
    expect(report.liveCases).toBe(300);
    expect(report.victimAcks).toBeGreaterThan(3);
    expect(report.liveReconnects).toBeGreaterThan(1);
    expect(unhandled).toEqual([]);
  }, 120_000);

  it('/v1/enroll: random and mutated bodies always get a 4xx JSON answer', async () => {
    const report = emptyReport();
    await fuzzEnroll(target, 200, seed, report);
    expect(report.failures).toEqual([]);
    expect(report.enrollCases).toBe(200);
    expect(Object.keys(report.enrollStatuses).every((s) => s.startsWith('4'))).toBe(true);
  }, 60_000);
});
