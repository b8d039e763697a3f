import { HEADER_SIZE, RESERVED_FLAGS_MASK, DEFAULT_MAX_FRAME_SIZE, readHeader, type Frame } from './frame.js';
import { MeshlinkError } from '../errors.js';

export interface FrameDecoderOptions {
  /** Largest payload accepted; a header announcing more is refused before any payload is buffered. */
  maxFrameSize?: number;
}

/**
 * Incremental frame decoder: bytes in (any chunking), whole frames out. It only buffers and splits;
 * it knows nothing of message kinds. Limits are checked on the header, so a hostile length can never
 * make it allocate more than `maxFrameSize + HEADER_SIZE` bytes.
 *
 * Payloads of frames that lie entirely inside one pushed chunk are zero-copy views of that chunk.
 */
export class FrameDecoder {
  readonly maxFrameSize: number;
  /** Bytes of an incomplete frame carried over from earlier chunks. */
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;

  constructor(options: FrameDecoderOptions = {}) {
    this.maxFrameSize = options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
  }

  /** True when no partial frame is buffered (a WebSocket message must end on this). */
  get idle(): boolean {
    return this.#pendingBytes === 0;
  }

  get bufferedBytes(): number {
    return this.#pendingBytes;
  }

  /** Feeds a chunk and returns the frames it completes. Throws ProtocolError on invalid input. */
  push(chunk: Uint8Array): Frame[] {
    let buf = chunk;
    if (this.#pendingBytes > 0) {
      // Carry-over: collect parts until the pending frame is complete, then join once. Joining on
      // every push would copy quadratically when a large frame arrives in many small chunks.
      this.#pending.push(chunk.slice());
      this.#pendingBytes += chunk.byteLength;
      if (this.#pendingBytes < HEADER_SIZE) return [];
      const needed = HEADER_SIZE + this.#checkHeader(readHeader(this.#joinPrefix(HEADER_SIZE), 0));
      if (this.#pendingBytes < needed) return [];
      buf = this.#joinPrefix(this.#pendingBytes);
      this.#pending = [];
      this.#pendingBytes = 0;
    }
    const frames: Frame[] = [];
    let offset = 0;
    while (buf.byteLength - offset >= HEADER_SIZE) {
      const header = readHeader(buf, offset);
      const end = offset + HEADER_SIZE + this.#checkHeader(header);
      if (end > buf.byteLength) break;
      frames.push({ type: header.type, stream: header.stream, flags: header.flags, length: header.length, payload: buf.subarray(offset + HEADER_SIZE, end) });
      offset = end;
    }
    if (offset < buf.byteLength) {
      // Copy: the caller may reuse its chunk after push returns.
      const rest = buf.slice(offset);
      this.#pending = [rest];
      this.#pendingBytes = rest.byteLength;
    }
    return frames;
  }

  /** Drops any partial frame (used after a fatal error). */
  reset(): void {
    this.#pending = [];
    this.#pendingBytes = 0;
  }

  /** The first `n` pending bytes as one buffer (n ≤ pendingBytes). */
  #joinPrefix(n: number): Uint8Array {
    const first = this.#pending[0];
    if (first !== undefined && first.byteLength >= n) return first.subarray(0, n);
    const out = new Uint8Array(n);
    let at = 0;
    for (const part of this.#pending) {
      if (at >= n) break;
      const take = Math.min(part.byteLength, n - at);
      out.set(part.subarray(0, take), at);
      at += take;
    }
    return out;
  }

  /** Validates a header and returns its payload length. */
  #checkHeader(header: { flags: number; length: number }): number {
    if (header.length > this.maxFrameSize) {
      throw new MeshlinkError(
        'ML_ERR_FRAME_TOO_LARGE',
        `frame payload of ${header.length} bytes exceeds the limit of ${this.maxFrameSize}`,
      );
    }
    if ((header.flags & RESERVED_FLAGS_MASK) !== 0) {
      throw new MeshlinkError('ML_ERR_RESERVED_FLAG', `reserved flag bits set: 0x${header.flags.toString(16)}`);
    }
    return header.length;
  }
}

/**
 * Decodes one WebSocket message, which must consist of whole frames only.
 * A message that ends inside a frame is ML_ERR_FRAME_TRUNCATED.
 */
export function decodeMessage(message: Uint8Array, decoder: FrameDecoder): Frame[] {
  const frames = decoder.push(message);
  if (!decoder.idle) {
    decoder.reset();
    throw new MeshlinkError('ML_ERR_FRAME_TRUNCATED', 'WebSocket message ended inside a frame');
  }
  return frames;
}
