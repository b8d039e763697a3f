import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { unmapIpv4 } from '../../src/server/client-hello.js';
import { encodeProxyV2, ipv6Text, parseProxyV2, PROXY_V2_MAX_BYTES } from '../../src/server/proxy-protocol.js';

/**
 * The PROXY protocol v2 parser (src/server/proxy-protocol.ts) against byte layouts written out by hand
 * from haproxy's doc/proxy-protocol.txt, section 2.2, not produced by the encoder under test.
 */
const SIG = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
const bytes = (...parts: Array<number[] | string>): Buffer => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));

// What haproxy 2.x sends with `send-proxy-v2` for 172.19.0.1:42578 -> 172.19.0.3:80, then the client's bytes.
const TCP4 = bytes(SIG, [0x21, 0x11, 0x00, 0x0c], [0xac, 0x13, 0x00, 0x01], [0xac, 0x13, 0x00, 0x03], [0xa6, 0x52], [0x00, 0x50]);
// 2001:db8::1:443 -> ::1:8443 (PROXY, INET6 STREAM, 36 bytes of addresses).
const TCP6 = bytes(
  SIG,
  [0x21, 0x21, 0x00, 0x24],
  [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
  [0x01, 0xbb],
  [0x20, 0xfb],
);

describe('parseProxyV2: the spec\'s layouts', () => {
  it('TCP over IPv4: addresses, ports, and the length the header takes (the client\'s bytes follow)', () => {
    const r = parseProxyV2(Buffer.concat([TCP4, Buffer.from('GET ')]));
    expect(r).toEqual({
      kind: 'header',
      length: 28,
      header: { command: 'proxy', family: 'ipv4', source: { address: '172.19.0.1', port: 42578 }, destination: { address: '172.19.0.3', port: 80 } },
    });
  });

  it('TCP over IPv6, written as Node writes socket addresses', () => {
    expect(parseProxyV2(TCP6)).toEqual({
      kind: 'header',
      length: 52,
      header: { command: 'proxy', family: 'ipv6', source: { address: '2001:db8::1', port: 443 }, destination: { address: '::1', port: 8443 } },
    });
  });

  it('TLVs after the addresses are skipped: the length covers them', () => {
    // A NOOP TLV (type 0x04) of 4 bytes: 12 + 3 + 4 = 19 bytes after the fixed part.
    const withTlv = bytes(SIG, [0x21, 0x11, 0x00, 0x13], [10, 0, 0, 9], [10, 0, 0, 1], [0x30, 0x39], [0x01, 0xbb], [0x04, 0x00, 0x04, 1, 2, 3, 4]);
    const r = parseProxyV2(Buffer.concat([withTlv, Buffer.from([0x16, 0x03, 0x01])]));
    expect(r).toMatchObject({ kind: 'header', length: 35, header: { source: { address: '10.0.0.9', port: 12345 } } });
  });

  it('LOCAL (a health check of the balancer) means the socket\'s own address, with or without an address block', () => {
    expect(parseProxyV2(bytes(SIG, [0x20, 0x00, 0x00, 0x00]))).toEqual({ kind: 'header', length: 16, header: { command: 'local' } });
    expect(parseProxyV2(bytes(SIG, [0x20, 0x11, 0x00, 0x0c], [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]))).toEqual({ kind: 'header', length: 28, header: { command: 'local' } });
  });

  it('PROXY with family UNSPEC or UNIX names no IP: the socket\'s address is used', () => {
    expect(parseProxyV2(bytes(SIG, [0x21, 0x00, 0x00, 0x00]))).toEqual({ kind: 'header', length: 16, header: { command: 'unspec' } });
    const unix = bytes(SIG, [0x21, 0x31, 0x00, 0xd8], new Array<number>(216).fill(0x61));
    expect(parseProxyV2(unix)).toEqual({ kind: 'header', length: 232, header: { command: 'unspec' } });
  });

  it('asks for exactly the bytes it needs: the fixed 16, then the announced length', () => {
    expect(parseProxyV2(TCP4.subarray(0, 0))).toEqual({ kind: 'incomplete', need: 16 });
    expect(parseProxyV2(TCP4.subarray(0, 11))).toEqual({ kind: 'incomplete', need: 16 });
    expect(parseProxyV2(TCP4.subarray(0, 16))).toEqual({ kind: 'incomplete', need: 28 });
    expect(parseProxyV2(TCP4.subarray(0, 27))).toEqual({ kind: 'incomplete', need: 28 });
    expect(parseProxyV2(TCP6.subarray(0, 40))).toEqual({ kind: 'incomplete', need: 52 });
  });
});

describe('parseProxyV2: refusals', () => {
  const cases: Array<[string, Buffer, string]> = [
    ['a direct TLS client (0x16) on its first byte', Buffer.from([0x16]), 'not_proxy'],
    ['a ClientHello', Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0, 0, 0]), 'not_proxy'],
    ['a signature wrong in its last byte', bytes(SIG.slice(0, 11), [0x0b]), 'not_proxy'],
    ['the v1 text form', bytes('PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n'), 'v1'],
    ['the v1 text form, first bytes only', bytes('PROX'), 'v1'],
    ['version 1 in the binary form', bytes(SIG, [0x11, 0x11, 0x00, 0x0c]), 'version'],
    ['version 3', bytes(SIG, [0x31, 0x11, 0x00, 0x0c]), 'version'],
    ['command 2', bytes(SIG, [0x22, 0x11, 0x00, 0x0c]), 'command'],
    ['family 4', bytes(SIG, [0x21, 0x41, 0x00, 0x0c]), 'family'],
    ['transport 3', bytes(SIG, [0x21, 0x13, 0x00, 0x0c]), 'family'],
    ['UDP over IPv4 (this is a TCP port)', bytes(SIG, [0x21, 0x12, 0x00, 0x0c], new Array<number>(12).fill(1)), 'family'],
    ['an IPv4 block shorter than 12 bytes', bytes(SIG, [0x21, 0x11, 0x00, 0x0b]), 'length'],
    ['an IPv6 block shorter than 36 bytes', bytes(SIG, [0x21, 0x21, 0x00, 0x0c]), 'length'],
    ['a UNIX block shorter than 216 bytes', bytes(SIG, [0x21, 0x31, 0x00, 0x0c]), 'length'],
    [`a header over ${PROXY_V2_MAX_BYTES} bytes, before its bytes arrive`, bytes(SIG, [0x21, 0x11, 0x03, 0xf5]), 'too_large'],
    ['the largest length field', bytes(SIG, [0x21, 0x11, 0xff, 0xff]), 'too_large'],
  ];
  for (const [what, buf, reason] of cases) {
    it(`refuses ${what}: ${reason}`, () => {
      expect(parseProxyV2(buf)).toEqual({ kind: 'invalid', reason });
    });
  }

  it(`accepts a header of exactly ${PROXY_V2_MAX_BYTES} bytes`, () => {
    const len = PROXY_V2_MAX_BYTES - 16;
    const buf = bytes(SIG, [0x21, 0x11, len >> 8, len & 0xff], [192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2], new Array<number>(len - 12).fill(0));
    expect(parseProxyV2(buf)).toMatchObject({ kind: 'header', length: PROXY_V2_MAX_BYTES });
  });
});

describe('IPv6 text and the encoder', () => {
  it('writes IPv6 as RFC 5952 (the WHATWG URL serializer agrees), IPv4-mapped as ::ffff:a.b.c.d', () => {
    const group = fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff }));
    fc.assert(
      fc.property(fc.array(group, { minLength: 8, maxLength: 8 }), (groups) => {
        const b = Buffer.alloc(16);
        groups.forEach((g, i) => b.writeUInt16BE(g, i * 2));
        const text = ipv6Text(b);
        const mapped = groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff;
        if (mapped) expect(text).toBe(`::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`);
        else expect(text).toBe(new URL(`http://[${text}]/`).hostname.slice(1, -1));
        // And it is the address the bytes say.
        const round = encodeProxyV2({ command: 'proxy', source: { address: text, port: 1 }, destination: { address: '::1', port: 2 } });
        expect(round.subarray(16, 32).equals(b)).toBe(true);
      }),
      { numRuns: 2_000 },
    );
  });

  it('round-trips through the encoder, IPv4 and IPv6, with TLVs', () => {
    fc.assert(
      fc.property(fc.ipV4(), fc.ipV6(), fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 }), fc.uint8Array({ maxLength: 200 }), (v4, v6, sp, dp, tlv) => {
        for (const [src, dst] of [[v4, '192.0.2.10'], [v6, '2001:db8::10']] as const) {
          const enc = encodeProxyV2({ command: 'proxy', source: { address: src, port: sp }, destination: { address: dst, port: dp } }, Buffer.from(tlv));
          const r = parseProxyV2(enc);
          expect(r.kind).toBe('header');
          if (r.kind !== 'header' || r.header.command !== 'proxy') return;
          expect(r.length).toBe(enc.length);
          expect(r.header.source.port).toBe(sp);
          expect(r.header.destination.port).toBe(dp);
          const canonical = src.includes(':') ? new URL(`http://[${src}]/`).hostname.slice(1, -1) : src;
          if (!r.header.source.address.startsWith('::ffff:')) expect(r.header.source.address).toBe(canonical);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('parseProxyV2 on arbitrary bytes', () => {
  it('never throws, never claims more bytes than it has or than the cap, and asks for more only within the cap', () => {
    const prefixed = fc.tuple(fc.constantFrom(0, 4, 8, 12, 13, 14, 16), fc.uint8Array({ maxLength: 1_200 })).map(([keep, rest]) => Buffer.concat([Buffer.from(SIG.slice(0, keep)), Buffer.from(rest)]));
    const versioned = fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 1_100 }), fc.uint8Array({ maxLength: 1_200 })).map(([vc, fam, len, rest]) =>
      Buffer.concat([Buffer.from(SIG), Buffer.from([vc, fam, len >> 8, len & 0xff]), Buffer.from(rest)]),
    );
    fc.assert(
      fc.property(fc.oneof(prefixed, versioned), (buf) => {
        const r = parseProxyV2(buf);
        if (r.kind === 'header') {
          expect(r.length).toBeLessThanOrEqual(buf.length);
          expect(r.length).toBeLessThanOrEqual(PROXY_V2_MAX_BYTES);
          expect(r.length).toBeGreaterThanOrEqual(16);
        } else if (r.kind === 'incomplete') {
          expect(r.need).toBeGreaterThan(buf.length);
          expect(r.need).toBeLessThanOrEqual(PROXY_V2_MAX_BYTES);
          // Given the bytes it asked for, it decides.
          const more = parseProxyV2(Buffer.concat([buf, Buffer.alloc(r.need - buf.length)]));
          expect(more.kind).not.toBe('incomplete');
        }
      }),
      { numRuns: 3_000 },
    );
  });
});

describe('an IPv4 client in an INET6 header', () => {
  it('is keyed as the same IPv4 client (the gate unmaps ::ffff:a.b.c.d), other IPv6 stays as it is', () => {
    expect(unmapIpv4('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(unmapIpv4('::FFFF:10.1.2.3')).toBe('10.1.2.3');
    expect(unmapIpv4('::ffff:999.1.2.3')).toBe('::ffff:999.1.2.3');
    expect(unmapIpv4('2001:db8::ffff:1.2.3.4')).toBe('2001:db8::ffff:1.2.3.4');
    expect(unmapIpv4('192.0.2.7')).toBe('192.0.2.7');
    const parsed = parseProxyV2(encodeProxyV2({ command: 'proxy', source: { address: '::ffff:192.0.2.7', port: 40000 }, destination: { address: '::1', port: 443 } }));
    expect(parsed.kind === 'header' && parsed.header.command === 'proxy' && unmapIpv4(parsed.header.source.address)).toBe('192.0.2.7');
  });
});
