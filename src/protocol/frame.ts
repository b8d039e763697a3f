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
  const view = new DataView(target.buffer, target.byteOffset + offset, HEADER_SIZE);
  view.setUint16(0, header.type);
  view.setUint32(2, header.stream);
  view.setUint8(6, header.flags & 0xff);
  view.setUint32(7, header.length);
}

export function encodeHeader(header: FrameHeader): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE);
  writeHeader(out, 0, header);
  return out;
}

/** Reads a header from `source` at `offset`; the caller guarantees HEADER_SIZE bytes are there. */
export function readHeader(source: Uint8Array, offset: number): FrameHeader {
  const view = new DataView(source.buffer, source.byteOffset + offset, HEADER_SIZE);
  return {
    type: view.getUint16(0),
    stream: view.getUint32(2),
    flags: view.getUint8(6),
    length: view.getUint32(7),
  };
}

/** Header plus payload in one buffer. */
export function encodeFrame(header: Omit<FrameHeader, 'length'>, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.byteLength);
  writeHeader(out, 0, { ...header, length: payload.byteLength });
  out.set(payload, HEADER_SIZE);
  return out;
}
