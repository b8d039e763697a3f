import type { MuxStream, OutgoingFrame } from './stream.js';
import { writeDataPrefix } from './codec.js';

/**
 * Decides what goes into the next WebSocket message (docs/PROTOCOL.md §7):
 *
 * 1. Priority frames first (stream 0 control messages, stream.window, stream.reset, accept/reject),
 *    in the order they were queued. Heartbeats and credit updates therefore never wait behind bulk
 *    data that is still in meshlink's queues.
 * 2. Then stream frames, round-robin over the streams that have work: each turn takes at most one
 *    data frame from a stream and moves it to the back, so one bulk stream cannot starve the others.
 * 3. Frames are coalesced into one message until it holds `maxMessageBytes` (data frames are not
 *    cut below 4 KiB to fit, so a message may exceed the cap by up to 4 KiB plus a header).
 * 4. The session may hold stream frames back (`dataAllowed` false: its pipe limit is reached) while
 *    priority frames still go, and may ask for a `trailer` (its pipe marker) after the stream frames
 *    of a message that carries any.
 * 5. Interactive streams go before the round and are not held back: a stream whose whole queue fits
 *    in its token bucket (INTERACTIVE_BURST bytes, refilled at INTERACTIVE_RATE bytes/s) has its
 *    frame taken right after the priority frames, whether or not `dataAllowed`, and the frame's
 *    bytes are taken from the bucket. A keystroke in `exec` or a small request thus waits neither
 *    for the round over bulk streams nor for the pipe limit to reopen, while a bulk stream empties
 *    its bucket with its first frames and is an ordinary stream from then on (fq_codel serves its
 *    sparse flows first for the same reason). What the lane lets past the pipe limit is bounded by
 *    the buckets and is counted like any other stream data, so the limit closes sooner after it.
 */
export class SendScheduler {
  #priority: Uint8Array[] = [];
  #priorityBytes = 0;
  /** Streams with work, in round-robin order; a Set keeps insertion order and makes re-adding free. */
  #ready = new Set<MuxStream>();
  /** Each stream's interactive token bucket (rule 5); weak, so that a closed stream leaves nothing. */
  readonly #buckets = new WeakMap<MuxStream, { tokens: number; at: number }>();

  get priorityBytes(): number {
    return this.#priorityBytes;
  }

  /** Some stream may have a frame to send (it may still wait for credit). */
  get hasStreamWork(): boolean {
    return this.#ready.size > 0;
  }

  get hasWork(): boolean {
    return this.#priority.length > 0 || this.#ready.size > 0;
  }

  pushPriority(frame: Uint8Array): void {
    this.#priority.push(frame);
    this.#priorityBytes += frame.byteLength;
  }

  markReady(stream: MuxStream): void {
    this.#ready.add(stream);
  }

  forget(stream: MuxStream): void {
    this.#ready.delete(stream);
  }

  /**
   * Builds the next message. Returns null when nothing can be sent (no work, or streams without
   * credit). `sent` callbacks must run after the message is handed to the transport. `now` (ms, any
   * monotonic clock) refills the interactive buckets.
   */
  next(
    maxMessageBytes: number,
    maxDataFrame: number,
    dataAllowed = true,
    trailer: Uint8Array | null = null,
    now = 0,
  ): { message: Uint8Array; pooled: Buffer | null; sent: Array<() => void>; trailer: boolean } | null {
    const frames: OutgoingFrame[] = [];
    const sent: Array<() => void> = [];
    let size = 0;

    while (this.#priority.length > 0 && (size === 0 || size + this.#priority[0]!.byteLength <= maxMessageBytes)) {
      const bytes = this.#priority.shift()!;
      this.#priorityBytes -= bytes.byteLength;
      frames.push({ bytes, data: null, dataLength: 0, stream: 0, size: bytes.byteLength, sent: null });
      size += bytes.byteLength;
    }

    let streamFrames = 0;
    for (const stream of this.#ready) {
      if (size >= maxMessageBytes) break;
      const bucket = this.#bucket(stream, now);
      if (stream.queuedBytes > bucket.tokens || !stream._hasWork()) continue;
      const frame = stream._takeFrame(Math.min(Math.max(maxMessageBytes - size, 4096), maxDataFrame));
      if (!frame) continue;
      bucket.tokens = Math.max(0, bucket.tokens - frame.size);
      frames.push(frame);
      streamFrames++;
      size += frame.size;
      if (frame.sent) sent.push(frame.sent);
      this.#ready.delete(stream);
      if (stream._hasWork()) this.#ready.add(stream);
    }

    while (dataAllowed && size < maxMessageBytes && this.#ready.size > 0) {
      let progressed = false;
      for (const stream of this.#ready) {
        if (size >= maxMessageBytes) break;
        this.#ready.delete(stream);
        if (!stream._hasWork()) continue; // waits for credit; markReady brings it back
        // Fill the message, but never cut a data frame below 4 KiB just to fit: the message may
        // overshoot maxMessageBytes by that much rather than carry tiny fragments.
        const room = Math.max(maxMessageBytes - size, 4096);
        const frame = stream._takeFrame(Math.min(room, maxDataFrame));
        if (frame) {
          frames.push(frame);
          streamFrames++;
          size += frame.size;
          if (frame.sent) sent.push(frame.sent);
          progressed = true;
        }
        if (stream._hasWork()) this.#ready.add(stream); // to the back of the round
      }
      if (!progressed) break;
    }

    if (size === 0) return null;
    const withTrailer = trailer !== null && streamFrames > 0;
    if (withTrailer) {
      frames.push({ bytes: trailer, data: null, dataLength: 0, stream: 0, size: trailer.byteLength, sent: null });
      size += trailer.byteLength;
    }
    const only = frames[0]!;
    if (frames.length === 1 && only.bytes) return { message: only.bytes, pooled: null, sent, trailer: false };
    const pooled = size >= POOLED_MIN && size <= POOLED_CAPACITY ? acquireMessageBuffer() : null;
    const message = pooled ? pooled.subarray(0, size) : Buffer.allocUnsafe(size);
    let at = 0;
    for (const f of frames) {
      if (f.bytes) {
        message.set(f.bytes, at);
        at += f.bytes.byteLength;
      } else {
        at = writeDataPrefix(message, at, f.stream, f.dataLength, false);
        for (const part of f.data!) {
          message.set(part, at);
          at += part.byteLength;
        }
      }
    }
    return { message, pooled, sent, trailer: withTrailer };
  }

  #bucket(stream: MuxStream, now: number): { tokens: number; at: number } {
    let bucket = this.#buckets.get(stream);
    if (!bucket) {
      bucket = { tokens: INTERACTIVE_BURST, at: now };
      this.#buckets.set(stream, bucket);
    } else if (now > bucket.at) {
      bucket.tokens = Math.min(INTERACTIVE_BURST, bucket.tokens + ((now - bucket.at) * INTERACTIVE_RATE) / 1000);
      bucket.at = now;
    }
    return bucket;
  }
}

/**
 * The interactive lane's bucket (rule 5): a stream may have up to this many bytes queued and still
 * be served first…
 */
export const INTERACTIVE_BURST = 16 * 1024;
/** …and earns it back at this rate (bytes/s): a terminal's output, not a transfer. */
export const INTERACTIVE_RATE = 64 * 1024;

/**
 * Coalesced messages are assembled in pooled buffers. A fresh allocation per message made garbage
 * collection the largest CPU cost of a bulk sender (measured side by side: about a quarter of its CPU
 * time, see BENCHMARKS.md). A buffer returns to the pool only when the transport reports that it has
 * written the message out and no longer references it (Transport.send's done callback without an
 * error), so a message is never overwritten in flight. The pool is shared by all sessions of the
 * process and bounded, so thousands of mostly idle sessions hold nothing.
 *
 * Only large messages take a pooled buffer. A small one (two control frames, say) in a 136 KiB buffer
 * would pin the whole buffer until its write completes: a fan-out that sends two events to each of
 * 1,000 sessions in one tick then allocated 1,000 of them (136 MB of external memory, and the garbage
 * collections it triggers), which made delivery slower than computing the events. Small messages use
 * Buffer.allocUnsafe, which slices Node's shared slab below 4 KiB.
 */
const POOLED_MIN = 16 * 1024;
const POOLED_CAPACITY = 136 * 1024; // a full message: 64 KiB target + a 64 KiB data frame + headers
const POOL_MAX_FREE = 32;
const freeBuffers: Buffer[] = [];

function acquireMessageBuffer(): Buffer {
  return freeBuffers.pop() ?? Buffer.allocUnsafe(POOLED_CAPACITY);
}

export function releaseMessageBuffer(buffer: Buffer): void {
  if (freeBuffers.length < POOL_MAX_FREE) freeBuffers.push(buffer);
}
