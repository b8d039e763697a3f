import { describe, expect, it } from 'vitest';
import { decodeBin } from '../../src/protocol/codec.js';
import { FrameDecoder } from '../../src/protocol/decoder.js';
import { INTERACTIVE_BURST, INTERACTIVE_RATE, SendScheduler } from '../../src/protocol/scheduler.js';
import { INITIAL_WINDOW, MuxStream, type StreamHost } from '../../src/protocol/stream.js';

/**
 * Issue 12: the send scheduler's interactive lane (PROTOCOL.md §7 rule 2). A stream whose whole
 * queue fits in its token bucket is served before the round over bulk streams, and also while the
 * session holds stream data back for its pipe limit; a bulk stream is not.
 */

const KIB = 1024;
const DATA = 0x0013;

function streamsOn(scheduler: SendScheduler): (id: number) => MuxStream {
  const host: StreamHost = {
    markReady: (s) => scheduler.markReady(s),
    sendPriority: () => {},
    sendWindowUpdate: () => {},
    release: () => {},
    maxDataFrame: 64 * KIB,
    receiveWindow: INITIAL_WINDOW,
    maxReceiveWindow: INITIAL_WINDOW,
    messagesUseCredit: true,
    reserveWindow: () => true,
    releaseWindow: () => {},
    noteStall: () => {},
    now: () => 0,
    preciseNow: () => 0,
    rttMs: null,
    probeRtt: () => {},
    defer: (fn) => setImmediate(fn),
  };
  return (id) => {
    const stream = new MuxStream(host, { id, kind: 'file.open', meta: {}, local: true });
    stream._opened();
    return stream;
  };
}

/** The next message, as the session would hand it over: its `sent` callbacks run (the streams' write callbacks). */
function take(scheduler: SendScheduler, dataAllowed: boolean, now: number): Uint8Array | null {
  const next = scheduler.next(64 * KIB, 64 * KIB, dataAllowed, null, now);
  for (const cb of next?.sent ?? []) cb();
  return next?.message ?? null;
}

/** The data bytes per stream id in one message. */
function dataByStream(message: Uint8Array): Map<number, number> {
  const out = new Map<number, number>();
  for (const f of new FrameDecoder().push(message)) if (f.type === DATA) out.set(f.stream, (out.get(f.stream) ?? 0) + decodeBin(f.payload).byteLength);
  return out;
}

describe('the interactive lane', () => {
  it('serves a small write ahead of a bulk stream that was ready first, and while stream data is held back', () => {
    const scheduler = new SendScheduler();
    const open = streamsOn(scheduler);
    const bulk = open(1);
    const typing = open(3);
    bulk.write(Buffer.alloc(200 * KIB, 1));
    typing.write(Buffer.alloc(64, 2));

    // Held back (the pipe limit): only the interactive stream's frame goes.
    const held = take(scheduler, false, 1000);
    expect(held).not.toBeNull();
    expect([...dataByStream(held!)]).toEqual([[3, 64]]);
    expect(take(scheduler, false, 1000)).toBeNull();

    // Allowed: the interactive frame comes first in the message, then the round.
    typing.write(Buffer.alloc(100, 3));
    const allowed = take(scheduler, true, 1000);
    const order = [...new FrameDecoder().push(allowed!)].filter((f) => f.type === DATA).map((f) => f.stream);
    expect(order[0]).toBe(3);
    expect(order).toContain(1);
  });

  it('is a bucket: a stream that queues more than its tokens waits in the round, and earns them back at INTERACTIVE_RATE', () => {
    const scheduler = new SendScheduler();
    const open = streamsOn(scheduler);
    const s = open(1);
    // Spends most of the bucket.
    s.write(Buffer.alloc(INTERACTIVE_BURST - 1 * KIB, 1));
    expect(dataByStream(take(scheduler, false, 1000)!).get(1)).toBe(INTERACTIVE_BURST - 1 * KIB);
    // 2 KiB no longer fits in what is left: held while data is held back.
    s.write(Buffer.alloc(2 * KIB, 1));
    expect(take(scheduler, false, 1000)).toBeNull();
    // Enough time for the bucket to refill 2 KiB (and the frame header): it goes.
    const later = 1000 + ((2 * KIB + 64) / INTERACTIVE_RATE) * 1000;
    expect(dataByStream(take(scheduler, false, later)!).get(1)).toBe(2 * KIB);
  });

  it('never lets a bulk queue through while data is held back', () => {
    const scheduler = new SendScheduler();
    const bulk = streamsOn(scheduler)(1);
    bulk.write(Buffer.alloc(INTERACTIVE_BURST + 1, 1));
    expect(take(scheduler, false, 1000)).toBeNull();
    expect(take(scheduler, false, 1_000_000)).toBeNull();
    expect(dataByStream(take(scheduler, true, 1_000_000)!).get(1)).toBe(INTERACTIVE_BURST + 1);
  });
});
