import { describe, expect, expectTypeOf, it } from 'vitest';
import fc from 'fast-check';
import { HEADER_SIZE, Flags, encodeHeader, readHeader, encodeFrame, DEFAULT_MAX_FRAME_SIZE } from '../../src/protocol/frame.js';
import { FrameDecoder, decodeMessage } from '../../src/protocol/decoder.js';
import { dataPrefixSize, decodeFrame, encodeMessage, encodeWindowFrame, readWindowCredit, writeDataPrefix } from '../../src/protocol/codec.js';
import {
  MESSAGE_KINDS,
  describeRegistry,
  isResponseKind,
  type KindName,
  type MessageKind,
  type OpeningKindName,
  type PayloadOf,
  type RequestKindName,
  type ResponseKindOf,
  type StreamMessage,
} from '../../src/protocol/registry.js';
import { SAMPLE_PAYLOADS } from './samples.js';
import { isProtocolError } from '../../src/errors.js';

/** Slow reference encoder written independently with explicit byte arithmetic. */
function referenceHeader(type: number, stream: number, flags: number, length: number): number[] {
  return [
    (type >>> 8) & 0xff, type & 0xff,
    (stream >>> 24) & 0xff, (stream >>> 16) & 0xff, (stream >>> 8) & 0xff, stream & 0xff,
    flags & 0xff,
    (length >>> 24) & 0xff, (length >>> 16) & 0xff, (length >>> 8) & 0xff, length & 0xff,
  ];
}

describe('frame header', () => {
  it.each([
    [0, 0, 0, 0],
    [1, 0, 0, 5],
    [0xffff, 0xffff_ffff, 0x03, 0xffff_ffff],
    [0x0013, 7, Flags.END_STREAM, 65536],
  ])('type %i stream %i flags %i length %i round-trips', (type, stream, flags, length) => {
    const bytes = encodeHeader({ type, stream, flags, length });
    expect([...bytes]).toEqual(referenceHeader(type, stream, flags, length));
    expect(readHeader(bytes, 0)).toEqual({ type, stream, flags, length });
  });

  it('matches the reference for arbitrary values', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), fc.nat({ max: 0xffff_ffff }), fc.nat({ max: 3 }), fc.nat({ max: 0xffff_ffff }), (t, s, f, l) => {
        const bytes = encodeHeader({ type: t, stream: s, flags: f, length: l });
        expect([...bytes]).toEqual(referenceHeader(t, s, f, l));
        expect(readHeader(bytes, 0)).toEqual({ type: t, stream: s, flags: f, length: l });
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses out-of-range fields', () => {
    expect(() => encodeHeader({ type: 0x10000, stream: 0, flags: 0, length: 0 })).toThrow(RangeError);
    expect(() => encodeHeader({ type: 1, stream: -1, flags: 0, length: 0 })).toThrow(RangeError);
  });
});

describe('frame decoder', () => {
  const frames = [
    encodeFrame({ type: 5, stream: 0, flags: 0 }, new Uint8Array([0x81, 0xa5, 0x6e, 0x6f, 0x6e, 0x63, 0x65, 0x01])),
    encodeFrame({ type: 0x13, stream: 3, flags: Flags.END_STREAM }, new Uint8Array(3000).fill(7)),
    encodeFrame({ type: 0x11, stream: 3, flags: 0 }, new Uint8Array([0x80])),
  ];
  const stream = Buffer.concat(frames);

  it('yields the same frames for any chunking of the same bytes', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 500 }), { minLength: 1, maxLength: 60 }), (sizes) => {
        const decoder = new FrameDecoder();
        const out = [];
        let at = 0;
        let i = 0;
        while (at < stream.length) {
          const n = sizes[i++ % sizes.length]!;
          out.push(...decoder.push(stream.subarray(at, at + n)));
          at += n;
        }
        expect(decoder.idle).toBe(true);
        expect(out.map((f) => [f.type, f.stream, f.flags, Buffer.from(f.payload).toString('hex')])).toEqual(
          frames.map((f) => {
            const h = readHeader(f, 0);
            return [h.type, h.stream, h.flags, Buffer.from(f.subarray(HEADER_SIZE)).toString('hex')];
          }),
        );
      }),
      { numRuns: 500 },
    );
  });

  it('refuses an oversized length before buffering any payload', () => {
    const decoder = new FrameDecoder({ maxFrameSize: 1024 });
    const header = encodeHeader({ type: 0x13, stream: 1, flags: 0, length: 1025 });
    expect(() => decoder.push(header)).toThrow(expect.objectContaining({ code: 'ML_ERR_FRAME_TOO_LARGE' }));
    expect(decoder.bufferedBytes).toBeLessThanOrEqual(HEADER_SIZE);
  });

  it('refuses reserved flags', () => {
    const decoder = new FrameDecoder();
    const f = encodeFrame({ type: 5, stream: 0, flags: 0x04 }, new Uint8Array(1));
    expect(() => decoder.push(f)).toThrow(expect.objectContaining({ code: 'ML_ERR_RESERVED_FLAG', closeCode: 4002 }));
  });

  it('decodeMessage refuses a message that ends inside a frame', () => {
    const decoder = new FrameDecoder();
    expect(() => decodeMessage(frames[1]!.subarray(0, 100), decoder)).toThrow(expect.objectContaining({ code: 'ML_ERR_FRAME_TRUNCATED' }));
  });

  it('never throws anything but a protocol error (one with a close code) and never buffers past the frame limit (random and mutated bytes)', () => {
    const maxFrameSize = 64 * 1024;
    const valid = Object.entries(SAMPLE_PAYLOADS).map(([name, p]) => encodeMessage(name as KindName, name.startsWith('stream.') || !['control', 'any'].includes(MESSAGE_KINDS.find((k) => k.name === name)!.scope) ? 1 : 0, p as never));
    const mutated = fc
      .tuple(fc.constantFrom(...valid), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }))
      .map(([bytes, edits]) => {
        const copy = Uint8Array.from(bytes);
        for (const [pos, value] of edits) copy[pos % copy.length] = value;
        return copy;
      });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 4096 }), mutated), fc.integer({ min: 1, max: 64 }), (bytes, chunk) => {
        const decoder = new FrameDecoder({ maxFrameSize });
        try {
          for (let at = 0; at < bytes.length; at += chunk) {
            for (const frame of decoder.push(bytes.subarray(at, at + chunk))) decodeFrame(frame, maxFrameSize);
            expect(decoder.bufferedBytes).toBeLessThanOrEqual(maxFrameSize + HEADER_SIZE + chunk);
          }
        } catch (err) {
          if (!isProtocolError(err)) throw err;
        }
      }),
      { numRuns: 5000 },
    );
  });
});

describe('message registry and codec', () => {
  it('has at least 30 kinds with unique codes and names, each with a sample', () => {
    expect(MESSAGE_KINDS.length).toBeGreaterThanOrEqual(30);
    expect(new Set(MESSAGE_KINDS.map((k) => k.code)).size).toBe(MESSAGE_KINDS.length);
    expect(Object.keys(SAMPLE_PAYLOADS).sort()).toEqual(MESSAGE_KINDS.map((k) => k.name).sort());
  });

  it.each(MESSAGE_KINDS.map((k) => [k.name] as const))('%s round-trips', (name) => {
    const kind = MESSAGE_KINDS.find((k) => k.name === name)!;
    const stream = kind.scope === 'stream' ? 5 : 0;
    const sample = SAMPLE_PAYLOADS[name];
    const bytes = encodeMessage(name, stream, sample as never);
    const [frame] = new FrameDecoder().push(bytes);
    const decoded = decodeFrame(frame!, DEFAULT_MAX_FRAME_SIZE);
    expect(decoded.kind.name).toBe(name);
    expect(decoded.stream).toBe(stream);
    expect(decoded.payload).toEqual(sample);
  });

  it('compresses large compressible payloads and only when they shrink', () => {
    const big = { code: 'ML_ERR_X', message: 'a'.repeat(5000) };
    const bytes = encodeMessage('error', 0, big);
    const header = readHeader(bytes, 0);
    expect(header.flags & Flags.COMPRESSED).toBe(Flags.COMPRESSED);
    expect(bytes.length).toBeLessThan(500);
    expect(decodeFrame(new FrameDecoder().push(bytes)[0]!, DEFAULT_MAX_FRAME_SIZE).payload).toEqual(big);
    const random = { code: 'ML_ERR_X', message: Buffer.from(crypto.getRandomValues(new Uint8Array(3000))).toString('base64') };
    // base64 of random bytes still deflates a little; an incompressible bin must not be flagged:
    const noise = encodeMessage('stream.data', 1, crypto.getRandomValues(new Uint8Array(4000)));
    expect(readHeader(noise, 0).flags & Flags.COMPRESSED).toBe(0);
    expect(decodeFrame(new FrameDecoder().push(encodeMessage('error', 0, random))[0]!, DEFAULT_MAX_FRAME_SIZE).payload).toEqual(random);
  });

  it('refuses a compression bomb that inflates past the frame limit', () => {
    const bytes = encodeMessage('stream.data', 1, new Uint8Array(200_000));
    const [frame] = new FrameDecoder().push(bytes);
    expect(frame!.flags & Flags.COMPRESSED).toBe(Flags.COMPRESSED);
    expect(() => decodeFrame(frame!, 100_000)).toThrow(expect.objectContaining({ code: 'ML_ERR_BAD_PAYLOAD' }));
  });

  it("the scheduler's in-place data-frame header produces the same bytes as the generic encoder", () => {
    for (const n of [0, 1, 255, 256, 65535, 65536, 100_000]) {
      const data = new Uint8Array(n).fill(9);
      const generic = encodeMessage('stream.data', 9, data, { compress: false });
      const out = Buffer.alloc(dataPrefixSize(n) + n);
      out.set(data, writeDataPrefix(out, 0, 9, n, false));
      expect(out.equals(Buffer.from(generic))).toBe(true);
    }
  });

  it("stream.window's fast encoder writes the generic encoder's bytes", () => {
    const edges = [1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0x7fff_ffff];
    const check = (credit: number, stream: number): void => {
      expect(Buffer.from(encodeWindowFrame(stream, credit)).equals(Buffer.from(encodeMessage('stream.window', stream, { credit })))).toBe(true);
    };
    for (const credit of edges) check(credit, 7);
    fc.assert(fc.property(fc.integer({ min: 1, max: 0x7fff_ffff }), fc.integer({ min: 1, max: 0xffff_ffff }), (credit, stream) => check(credit, stream)), { numRuns: 2_000 });
    for (const bad of [0, -1, 1.5, 0x8000_0000, Number.NaN]) expect(() => encodeWindowFrame(1, bad)).toThrow(RangeError);
  });

  it("stream.window's fast decoder agrees with the generic decoder, and declines what it does not know", () => {
    const payloadOf = (bytes: Uint8Array): Uint8Array => new FrameDecoder().push(bytes)[0]!.payload;
    const generic = (payload: Uint8Array): number | 'error' => {
      try {
        return (decodeFrame({ type: 0x0014, stream: 1, flags: 0, length: payload.byteLength, payload }, DEFAULT_MAX_FRAME_SIZE).payload as { credit: number }).credit;
      } catch {
        return 'error';
      }
    };
    fc.assert(fc.property(fc.integer({ min: 1, max: 0x7fff_ffff }), (credit) => readWindowCredit(payloadOf(encodeWindowFrame(3, credit))) === credit), { numRuns: 2_000 });
    // Arbitrary and mutated payloads: whatever the fast path accepts, the generic path reads the same.
    const canonical = payloadOf(encodeWindowFrame(3, 300_000));
    const payloads = fc.oneof(
      fc.uint8Array({ maxLength: 16 }),
      fc.tuple(fc.integer({ min: 0, max: canonical.byteLength - 1 }), fc.integer({ min: 0, max: 255 })).map(([i, v]) => {
        const m = Uint8Array.from(canonical);
        m[i] = v;
        return m;
      }),
    );
    fc.assert(fc.property(payloads, (payload) => {
      const fast = readWindowCredit(payload);
      if (fast !== null) expect(generic(payload)).toBe(fast);
    }), { numRuns: 5_000 });
    // Any unsigned width is read; other valid MessagePack is left to the generic path: a uint64, a
    // second key (schemas drop unknown keys).
    const key = [0x81, 0xa6, ...Buffer.from('credit')];
    const wide = new Uint8Array([...key, 0xce, 0, 0, 0, 5]);
    expect(readWindowCredit(wide)).toBe(5);
    expect(generic(wide)).toBe(5);
    const uint64 = new Uint8Array([...key, 0xcf, 0, 0, 0, 0, 0, 0, 0, 5]);
    expect(readWindowCredit(uint64)).toBeNull();
    expect(generic(uint64)).toBe(5);
    const twoKeys = new Uint8Array([0x82, ...key.slice(1), 0x05, 0xa1, 0x78, 0xc0]);
    expect(readWindowCredit(twoKeys)).toBeNull();
    expect(generic(twoKeys)).toBe(5);
    const zero = new Uint8Array([0x81, 0xa6, ...Buffer.from('credit'), 0x00]);
    expect(readWindowCredit(zero)).toBeNull();
    expect(generic(zero)).toBe('error');
  });

  it('refuses payloads that fail the schema, with the kind and field named', () => {
    const bad = encodeFrame({ type: 0x0005, stream: 0, flags: 0 }, new Uint8Array([0x81, 0xa5, ...Buffer.from('nonce'), 0xa1, 0x78]));
    expect(() => decodeFrame(new FrameDecoder().push(bad)[0]!, DEFAULT_MAX_FRAME_SIZE)).toThrow(/ping: nonce/);
  });

  it('derives request, response and message types from the declarations', () => {
    expectTypeOf<RequestKindName>().toEqualTypeOf<'cert.renew' | 'state.request'>();
    expectTypeOf<ResponseKindOf<'cert.renew'>>().toEqualTypeOf<'cert.renewed'>();
    expectTypeOf<ResponseKindOf<'state.request'>>().toEqualTypeOf<'state.response'>();
    expectTypeOf<OpeningKindName>().toEqualTypeOf<'action.request' | 'log.stream' | 'exec.open' | 'file.open' | 'tunnel.open'>();
    expectTypeOf<Extract<StreamMessage, { name: 'exec.resize' }>['payload']>().toEqualTypeOf<PayloadOf<'exec.resize'>>();
    expectTypeOf<StreamMessage['name']>().not.toEqualTypeOf<KindName>();
    expectTypeOf<Extract<StreamMessage, { name: 'stream.data' }>>().toBeNever();
    const requests = (MESSAGE_KINDS as readonly MessageKind[]).filter((k) => k.response).map((k) => k.name);
    expect(requests).toEqual(['cert.renew', 'state.request']);
    expect((MESSAGE_KINDS as readonly MessageKind[]).filter(isResponseKind).map((k) => k.name)).toEqual(['cert.renewed', 'state.response']);
  });

  it('describes every kind with a JSON Schema', () => {
    const described = describeRegistry();
    expect(described).toHaveLength(MESSAGE_KINDS.length);
    const hello = described.find((d) => d.name === 'hello')!;
    expect(hello.schema).toMatchObject({ type: 'object', required: expect.arrayContaining(['versions', 'agentVersion']) });
    expect(JSON.stringify(described)).not.toContain('undefined');
  });
});
