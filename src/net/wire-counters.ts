import { HEADER_SIZE } from '../protocol/frame.js';
import { MESSAGE_KINDS } from '../protocol/registry.js';

/**
 * Frame and byte counts by direction and message kind, filled by a wire observer (see
 * addWireObserver in ws-session.ts). Both roles count the same way: the server's /metrics
 * (src/server/metrics.ts) and the agent's (src/agent/metrics.ts) each keep one instance.
 *
 * Cost on the hot path: frames are counted per WebSocket message by walking the 11-byte frame
 * headers into typed arrays indexed by type code (no label lookups, no allocation); metric labels
 * are only touched at scrape time, in exportTo.
 */

/** Type codes are u16; every registered code is below 0x100, the rest is counted as "unknown". */
const CODE_SLOTS = 0x100;
const UNKNOWN_SLOT = CODE_SLOTS;
const KIND_NAME_BY_SLOT: string[] = Array.from({ length: CODE_SLOTS + 1 }, () => 'unknown');
for (const k of MESSAGE_KINDS) if (k.code < CODE_SLOTS) KIND_NAME_BY_SLOT[k.code] = k.name;

/** The part of a labelled counter (prom-client's Counter) that exportTo needs. */
export interface LabelledCounter {
  reset(): void;
  labels(direction: 'in' | 'out', kind: string): { inc(value: number): void };
}

export class WireCounters {
  readonly framesIn = new Float64Array(CODE_SLOTS + 1);
  readonly framesOut = new Float64Array(CODE_SLOTS + 1);
  readonly bytesIn = new Float64Array(CODE_SLOTS + 1);
  readonly bytesOut = new Float64Array(CODE_SLOTS + 1);
  messagesIn = 0;
  messagesOut = 0;
  messageBytesIn = 0;
  messageBytesOut = 0;

  /** Counts the frames of one whole WebSocket message (malformed tails are the session's to refuse). */
  readonly observe = (direction: 'in' | 'out', m: Uint8Array): void => {
    const frames = direction === 'in' ? this.framesIn : this.framesOut;
    const bytes = direction === 'in' ? this.bytesIn : this.bytesOut;
    if (direction === 'in') {
      this.messagesIn++;
      this.messageBytesIn += m.byteLength;
    } else {
      this.messagesOut++;
      this.messageBytesOut += m.byteLength;
    }
    let o = 0;
    const end = m.byteLength;
    while (end - o >= HEADER_SIZE) {
      const type = (m[o]! << 8) | m[o + 1]!;
      const length = ((m[o + 7]! << 24) >>> 0) + (m[o + 8]! << 16) + (m[o + 9]! << 8) + m[o + 10]!;
      const slot = type < CODE_SLOTS ? type : UNKNOWN_SLOT;
      frames[slot]!++;
      bytes[slot]! += HEADER_SIZE + length;
      o += HEADER_SIZE + length;
    }
  };

  /** Adds the per-kind counts to labelled counters (called at scrape time). */
  exportTo(frames: LabelledCounter, bytes: LabelledCounter): void {
    frames.reset();
    bytes.reset();
    for (const [direction, f, b] of [
      ['in', this.framesIn, this.bytesIn],
      ['out', this.framesOut, this.bytesOut],
    ] as const) {
      for (let slot = 0; slot <= CODE_SLOTS; slot++) {
        const n = f[slot]!;
        if (n === 0) continue;
        const kind = KIND_NAME_BY_SLOT[slot]!;
        frames.labels(direction, kind).inc(n);
        bytes.labels(direction, kind).inc(b[slot]!);
      }
    }
  }
}
