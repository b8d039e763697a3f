import { zodErrorText } from '../util/zod-error.js';
import { MeshlinkError } from '../errors.js';
import { Encoder, Decoder } from '@msgpack/msgpack';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { Flags, HEADER_SIZE, writeHeader, writeHeaderUnchecked, type Frame } from './frame.js';
import { kindByCode, requireKind, type KindName, type MessageKind, type InputOf, type PayloadOf } from './registry.js';

/**
 * Payload codec: MessagePack (+ optional raw DEFLATE) on top of the frame layer.
 *
 * Wire rules (docs/PROTOCOL.md §3):
 * - Every payload is one MessagePack value. Maps use string keys; absent optional fields are omitted.
 * - A kind whose registry entry declares `payload: 'bytes'` (stream.data, exec.stderr) carries one
 *   MessagePack `bin` (bin8/bin16/bin32) spanning the payload; it is read as a zero-copy view.
 * - A sender MAY set COMPRESSED for payloads larger than COMPRESS_MIN_BYTES, and only when deflating
 *   makes them smaller. A receiver inflates with an output cap equal to its maximum frame size,
 *   so a compression bomb cannot inflate past the frame limit.
 */

/** Payloads at or below this size are never compressed: deflate would cost more than it saves. */
export const COMPRESS_MIN_BYTES = 1024;

const encoder = new Encoder({ ignoreUndefined: true });

export interface EncodeOptions {
  compress?: boolean;
  endStream?: boolean;
}

/** Encodes a typed message into one frame. Validates the payload against its schema first. */
export function encodeMessage<N extends KindName>(
  name: N,
  stream: number,
  payload: InputOf<N>,
  options: EncodeOptions = {},
): Uint8Array {
  return encodeMessageSized(name, stream, payload, options).frame;
}

/**
 * encodeMessage, also returning the payload's length before compression: what a typed stream
 * message costs in window credit (PROTOCOL.md §6.5), which the receiver measures after inflating.
 */
export function encodeMessageSized<N extends KindName>(
  name: N,
  stream: number,
  payload: InputOf<N>,
  options: EncodeOptions = {},
): { frame: Uint8Array; payloadBytes: number } {
  const kind = requireKind(name);
  const checked = kind.schema.safeParse(payload);
  if (!checked.success) {
    // A local bug, not a peer's fault: say which kind and field.
    throw new TypeError(`invalid ${name} payload: ${zodErrorText(checked.error, { all: true })}`);
  }
  // The schema of a bytes kind accepts only a Uint8Array, checked just above.
  let body: Uint8Array = kind.payload === 'bytes' ? encodeBin(payload as Uint8Array) : encoder.encode(payload);
  const payloadBytes = body.byteLength;
  let flags = options.endStream ? Flags.END_STREAM : 0;
  if (options.compress !== false && body.byteLength > COMPRESS_MIN_BYTES) {
    const deflated = deflateRawSync(body);
    if (deflated.byteLength < body.byteLength) {
      body = deflated;
      flags |= Flags.COMPRESSED;
    }
  }
  const out = new Uint8Array(HEADER_SIZE + body.byteLength);
  writeHeader(out, 0, { type: kind.code, stream, flags, length: body.byteLength });
  out.set(body, HEADER_SIZE);
  return { frame: out, payloadBytes };
}

const STREAM_DATA = requireKind('stream.data').code;

/** Size of the MessagePack bin header for `n` bytes of data. */
export function binHeaderSize(n: number): number {
  return n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
}

/** The code of stream.data, for the hot paths that bypass the generic codec. */
export const STREAM_DATA_CODE = STREAM_DATA;

/** Bytes before the data in a stream.data frame of `dataLength` bytes: frame header + bin header. */
export function dataPrefixSize(dataLength: number): number {
  return HEADER_SIZE + binHeaderSize(dataLength);
}

/**
 * Writes the frame header and bin header of a stream.data frame carrying `dataLength` bytes into
 * `target` at `offset` and returns where the data goes, so bulk data is copied exactly once, straight
 * into the outgoing WebSocket message.
 */
export function writeDataPrefix(target: Uint8Array, offset: number, stream: number, dataLength: number, endStream: boolean): number {
  const binLen = binHeaderSize(dataLength);
  writeHeaderUnchecked(target, offset, STREAM_DATA, stream, endStream ? Flags.END_STREAM : 0, binLen + dataLength);
  writeBinHeader(target, offset + HEADER_SIZE, dataLength);
  return offset + HEADER_SIZE + binLen;
}

function writeBinHeader(target: Uint8Array, at: number, n: number): void {
  if (n < 0x100) {
    target[at] = 0xc4;
    target[at + 1] = n;
  } else if (n < 0x10000) {
    target[at] = 0xc5;
    target[at + 1] = n >>> 8;
    target[at + 2] = n & 0xff;
  } else {
    target[at] = 0xc6;
    target[at + 1] = n >>> 24;
    target[at + 2] = (n >>> 16) & 0xff;
    target[at + 3] = (n >>> 8) & 0xff;
    target[at + 4] = n & 0xff;
  }
}

function encodeBin(data: Uint8Array): Uint8Array {
  const h = binHeaderSize(data.byteLength);
  const out = new Uint8Array(h + data.byteLength);
  writeBinHeader(out, 0, data.byteLength);
  out.set(data, h);
  return out;
}

/**
 * stream.window is the one control frame that flows in proportion to the data (a receiver grants
 * credit every half window per stream), so it gets a fast path in both directions, like
 * stream.data. Its payload is written exactly as the generic codec writes it: a fixmap of one entry,
 * the fixstr "credit", then the integer in MessagePack's smallest unsigned form. A test checks that
 * both paths produce the same bytes.
 */
const WINDOW_KEY = [0x81, 0xa6, 0x63, 0x72, 0x65, 0x64, 0x69, 0x74]; // {  "credit": …
const STREAM_WINDOW = requireKind('stream.window').code;
const MAX_CREDIT = 0x7fff_ffff;

/** The code of stream.window, for the receive fast path. */
export const STREAM_WINDOW_CODE = STREAM_WINDOW;

/** Encodes stream.window granting `credit` (an integer in 1..2^31-1) on `stream`. */
export function encodeWindowFrame(stream: number, credit: number): Uint8Array {
  if (!Number.isInteger(credit) || credit < 1 || credit > MAX_CREDIT) throw new RangeError(`invalid stream.window credit ${credit}`);
  const intSize = credit < 0x80 ? 1 : credit < 0x100 ? 2 : credit < 0x10000 ? 3 : 5;
  const length = WINDOW_KEY.length + intSize;
  const out = new Uint8Array(HEADER_SIZE + length);
  writeHeaderUnchecked(out, 0, STREAM_WINDOW, stream, 0, length);
  out.set(WINDOW_KEY, HEADER_SIZE);
  const at = HEADER_SIZE + WINDOW_KEY.length;
  if (intSize === 1) {
    out[at] = credit;
  } else if (intSize === 2) {
    out[at] = 0xcc;
    out[at + 1] = credit;
  } else if (intSize === 3) {
    out[at] = 0xcd;
    out[at + 1] = credit >>> 8;
    out[at + 2] = credit & 0xff;
  } else {
    out[at] = 0xce;
    out[at + 1] = credit >>> 24;
    out[at + 2] = (credit >>> 16) & 0xff;
    out[at + 3] = (credit >>> 8) & 0xff;
    out[at + 4] = credit & 0xff;
  }
  return out;
}

/**
 * The credit of a stream.window payload of the form above (with the integer in any unsigned width up
 * to 32 bits), or null for anything else: other encodings of the same map are valid MessagePack, and
 * the caller then takes the generic path, which accepts them or reports the error. Never throws.
 */
export function readWindowCredit(payload: Uint8Array): number | null {
  const n = payload.byteLength - WINDOW_KEY.length;
  if (n < 1 || n > 5) return null;
  for (let i = 0; i < WINDOW_KEY.length; i++) if (payload[i] !== WINDOW_KEY[i]) return null;
  const at = WINDOW_KEY.length;
  const tag = payload[at]!;
  let credit: number;
  if (n === 1 && tag < 0x80) credit = tag;
  else if (n === 2 && tag === 0xcc) credit = payload[at + 1]!;
  else if (n === 3 && tag === 0xcd) credit = (payload[at + 1]! << 8) | payload[at + 2]!;
  else if (n === 5 && tag === 0xce) credit = payload[at + 1]! * 0x1000000 + ((payload[at + 2]! << 16) | (payload[at + 3]! << 8) | payload[at + 4]!);
  else return null;
  return credit >= 1 && credit <= MAX_CREDIT ? credit : null;
}

/**
 * ping and pong in the form meshlink writes them: `{"nonce": uint32}` with the integer as a uint32
 * (0xce). The session's pipe markers and their answers (PROTOCOL.md §7) come every few dozen KiB of
 * stream data, so both sides take them without the generic codec (schema, intermediate objects),
 * like stream.window. encodeMessage('ping', …) writes the same bytes for nonces of 2^16 and more.
 */
const NONCE_KEY = [0x81, 0xa5, 0x6e, 0x6f, 0x6e, 0x63, 0x65]; // { "nonce": …
const PING = requireKind('ping').code;
const PONG = requireKind('pong').code;
export const PING_CODE = PING;
export const PONG_CODE = PONG;

/** Encodes ping (or pong) on stream 0 with `nonce` (an integer in 0..2^32-1) as a uint32. */
export function encodeNonceFrame(kind: 'ping' | 'pong', nonce: number): Uint8Array {
  if (!Number.isInteger(nonce) || nonce < 0 || nonce > 0xffff_ffff) throw new RangeError(`invalid nonce ${nonce}`);
  const length = NONCE_KEY.length + 5;
  const out = new Uint8Array(HEADER_SIZE + length);
  writeHeaderUnchecked(out, 0, kind === 'ping' ? PING : PONG, 0, 0, length);
  out.set(NONCE_KEY, HEADER_SIZE);
  const at = HEADER_SIZE + NONCE_KEY.length;
  out[at] = 0xce;
  out[at + 1] = nonce >>> 24;
  out[at + 2] = (nonce >>> 16) & 0xff;
  out[at + 3] = (nonce >>> 8) & 0xff;
  out[at + 4] = nonce & 0xff;
  return out;
}

/** The nonce of a ping/pong payload in exactly the form above, or null (the generic path decides). Never throws. */
export function readNonce(payload: Uint8Array): number | null {
  if (payload.byteLength !== NONCE_KEY.length + 5) return null;
  for (let i = 0; i < NONCE_KEY.length; i++) if (payload[i] !== NONCE_KEY[i]) return null;
  const at = NONCE_KEY.length;
  if (payload[at] !== 0xce) return null;
  return payload[at + 1]! * 0x1000000 + ((payload[at + 2]! << 16) | (payload[at + 3]! << 8) | payload[at + 4]!);
}

/** Reads a MessagePack bin value that must span the whole buffer; returns a zero-copy view. */
export function decodeBin(body: Uint8Array): Uint8Array {
  const tag = body[0];
  let len: number;
  let h: number;
  if (tag === 0xc4 && body.byteLength >= 2) {
    len = body[1]!;
    h = 2;
  } else if (tag === 0xc5 && body.byteLength >= 3) {
    len = (body[1]! << 8) | body[2]!;
    h = 3;
  } else if (tag === 0xc6 && body.byteLength >= 5) {
    len = body[1]! * 0x1000000 + ((body[2]! << 16) | (body[3]! << 8) | body[4]!);
    h = 5;
  } else {
    throw new MeshlinkError('ML_ERR_BAD_PAYLOAD', 'expected a MessagePack bin payload');
  }
  if (h + len !== body.byteLength) {
    throw new MeshlinkError('ML_ERR_BAD_PAYLOAD', 'bin length does not match the frame length');
  }
  return body.subarray(h);
}

/** A decoded frame, discriminated by `name` (the name of `kind`), so that `payload` is typed by it. */
export type DecodedMessage = {
  [N in KindName]: {
    readonly name: N;
    readonly kind: MessageKind;
    readonly stream: number;
    readonly flags: number;
    readonly payload: PayloadOf<N>;
    /** The payload's length after inflation: what a typed stream message costs in window credit. */
    readonly size: number;
  };
}[KindName];

/**
 * Decodes and validates a frame's payload. Every failure is a ProtocolError
 * (ML_ERR_UNKNOWN_TYPE or ML_ERR_BAD_PAYLOAD); nothing else escapes.
 */
export function decodeFrame(frame: Frame, maxFrameSize: number): DecodedMessage {
  const kind = kindByCode(frame.type);
  if (!kind) {
    throw new MeshlinkError('ML_ERR_UNKNOWN_TYPE', `unknown message type 0x${frame.type.toString(16)}`);
  }
  let body = frame.payload;
  if (frame.flags & Flags.COMPRESSED) {
    try {
      body = inflateRawSync(body, { maxOutputLength: maxFrameSize });
    } catch (err) {
      throw new MeshlinkError('ML_ERR_BAD_PAYLOAD', `${kind.name}: payload does not inflate within ${maxFrameSize} bytes`, { cause: err });
    }
  }
  if (kind.payload === 'bytes') {
    return { name: kind.name, kind, stream: frame.stream, flags: frame.flags, payload: decodeBin(body), size: body.byteLength } as DecodedMessage;
  }
  let value: unknown;
  try {
    // A fresh Decoder per call: @msgpack/msgpack's Decoder is not re-entrant, and the limits below
    // are per value. Lengths can't exceed the (already bounded) body anyway.
    value = new Decoder({ maxStrLength: body.byteLength, maxBinLength: body.byteLength, maxArrayLength: body.byteLength, maxMapLength: body.byteLength, maxExtLength: body.byteLength }).decode(body);
  } catch (err) {
    throw new MeshlinkError('ML_ERR_BAD_PAYLOAD', `${kind.name}: invalid MessagePack (${(err as Error).message})`, { cause: err });
  }
  const parsed = kind.schema.safeParse(value);
  if (!parsed.success) {
    throw new MeshlinkError('ML_ERR_BAD_PAYLOAD', `${kind.name}: ${zodErrorText(parsed.error)}`);
  }
  // The one place a payload meets its type: it has just passed the schema of the kind it is paired with.
  return { name: kind.name, kind, stream: frame.stream, flags: frame.flags, payload: parsed.data, size: body.byteLength } as DecodedMessage;
}
