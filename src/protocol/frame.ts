/**
 * Frame layout (all integers big-endian, see docs/PROTOCOL.md §2):
 *
 *   0      2          6       7          11
 *   +------+----------+-------+----------+---------------------+
 *   | type |  stream  | flags |  length  | payload (length B)  |
 *   | u16  |   u32    |  u8   |   u32    | MessagePack         |
 *   +------+----------+-------+----------+---------------------+
 *
 * - `type` is a message-kind code from the registry (registry.ts).
 * - `stream` 0 is the control channel; agent-opened streams are odd, server-opened streams are even.
 * - `flags` bit 0 COMPRESSED: the payload is raw DEFLATE (RFC 1951) of the MessagePack bytes.
 *   bit 1 END_STREAM: the sender will send no more data on this stream (half-close).
 *   Bits 2..7 are reserved: a sender MUST send 0, a receiver MUST treat 1 as a protocol error.
 * - `length` counts payload bytes only (after compression). Receivers enforce a maximum.
 *
 * A WebSocket binary message carries one or more whole frames back to back, never part of one.
 */

export const HEADER_SIZE = 11;

export const Flags = {
  COMPRESSED: 0x01,
  END_STREAM: 0x02,
} as const;

/** Every bit that is not a defined flag. */
export const RESERVED_FLAGS_MASK = 0xff & ~(Flags.COMPRESSED | Flags.END_STREAM);

/** Default maximum payload length a receiver accepts (1 MiB). */
export const DEFAULT_MAX_FRAME_SIZE = 1024 * 1024;

/** Largest value representable in the u32 stream and length fields. */
export const MAX_U32 = 0xffff_ffff;

export interface FrameHeader {
  readonly type: number;
  readonly stream: number;
  readonly flags: number;
  readonly length: number;
}

export interface Frame extends FrameHeader {
  /** The payload bytes exactly as on the wire (still compressed when COMPRESSED is set). */
  readonly payload: Uint8Array;
}

/** Writes the 11-byte header into `target` at `offset`. Pure; performs no validation beyond ranges. */
export function writeHeader(target: Uint8Array, offset: number, header: FrameHeader): void {
  if (!Number.isInteger(header.type) || header.type < 0 || header.type > 0xffff) {
    throw new RangeError(`frame type out of range: ${header.type}`);
  }
  if (!Number.isInteger(header.stream) || header.stream < 0 || header.stream > MAX_U32) {
    throw new RangeError(`stream id out of range: ${header.stream}`);
  }
  if (!Number.isInteger(header.length) || header.length < 0 || header.length > MAX_U32) {
    throw new RangeError(`frame length out of range: ${header.length}`);
  }
  writeHeaderUnchecked(target, offset, header.type, header.stream, header.flags, header.length);
}

/**
 * The hot-path form of writeHeader for callers that construct valid fields themselves (the
 * scheduler's data frames): plain byte stores, no object and no DataView per frame.
 */
export function writeHeaderUnchecked(target: Uint8Array, offset: number, type: number, stream: number, flags: number, length: number): void {
  target[offset] = type >>> 8;
  target[offset + 1] = type & 0xff;
  target[offset + 2] = stream >>> 24;
  target[offset + 3] = (stream >>> 16) & 0xff;
  target[offset + 4] = (stream >>> 8) & 0xff;
  target[offset + 5] = stream & 0xff;
  target[offset + 6] = flags & 0xff;
  target[offset + 7] = length >>> 24;
  target[offset + 8] = (length >>> 16) & 0xff;
  target[offset + 9] = (length >>> 8) & 0xff;
  target[offset + 10] = length & 0xff;
}

export function encodeHeader(header: FrameHeader): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE);
  writeHeader(out, 0, header);
  return out;
}

/** Reads a header from `source` at `offset`; the caller guarantees HEADER_SIZE bytes are there. */
export function readHeader(source: Uint8Array, offset: number): FrameHeader {
  return {
    type: (source[offset]! << 8) | source[offset + 1]!,
    stream: readU32(source, offset + 2),
    flags: source[offset + 6]!,
    length: readU32(source, offset + 7),
  };
}

function readU32(source: Uint8Array, at: number): number {
  // Multiply rather than shift the top byte: `<< 24` would turn values ≥ 2^31 negative.
  return source[at]! * 0x1000000 + ((source[at + 1]! << 16) | (source[at + 2]! << 8) | source[at + 3]!);
}

/** Header plus payload in one buffer. */
export function encodeFrame(header: Omit<FrameHeader, 'length'>, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.byteLength);
  writeHeader(out, 0, { ...header, length: payload.byteLength });
  out.set(payload, HEADER_SIZE);
  return out;
}
