/**
 * The PROXY protocol version 2 header (haproxy's doc/proxy-protocol.txt, section 2.2), as a load
 * balancer in TCP mode (haproxy `send-proxy-v2`, AWS NLB, …) sends it before the client's first byte,
 * so that the server learns the client's address. A pure parser: bytes in, a verdict out; the
 * gateway's first-byte gate (client-hello.ts) feeds it and consumes exactly the header's bytes.
 *
 * Layout (all integers big-endian):
 *
 * | offset | size | field |
 * |---|---|---|
 * | 0 | 12 | signature `0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A` |
 * | 12 | 1 | version (high nibble, must be 2) and command (low nibble: 0 LOCAL, 1 PROXY) |
 * | 13 | 1 | address family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport (low: 0 UNSPEC, 1 STREAM, 2 DGRAM) |
 * | 14 | 2 | length of what follows (addresses, then TLVs) |
 * | 16 | 12 | INET: source address (4), destination address (4), source port (2), destination port (2) |
 * | 16 | 36 | INET6: source address (16), destination address (16), source port (2), destination port (2) |
 * | 16 | 216 | UNIX: source path (108), destination path (108) |
 *
 * What follows the addresses (TLVs: ALPN, authority, SSL details, a cloud's endpoint id) is skipped:
 * nothing here relies on it. Decisions:
 *
 * * **Version 1 (the text form `PROXY TCP4 …\r\n`) is refused**, not parsed: every balancer that sends
 *   v1 can send v2 (haproxy `send-proxy-v2`), v2 is fixed-layout binary with no number or address text
 *   to parse, and accepting one form only leaves nothing to guess. A v1 header is reported as such so
 *   the operator's log says what to change.
 * * LOCAL (the balancer's own health check) means: use the socket's address. So do PROXY headers of
 *   family UNSPEC or UNIX (spec: the receiver uses the real connection's addresses then).
 * * INET and INET6 must be STREAM (this is a TCP listener); DGRAM, an unknown family, transport,
 *   version or command is refused (spec: receivers must drop connections with unexpected values).
 * * The whole header is capped at PROXY_V2_MAX_BYTES (the addresses take at most 232; the rest would be
 *   TLVs, which a balancer sends only when configured to). A longer one is refused before its bytes
 *   are awaited.
 *
 * Written here rather than taken from npm: `proxy-protocol-js` (4.0.6) parses a buffer that already
 * holds the whole header (it cannot say how many more bytes are needed, has no size cap, and gives
 * addresses as byte arrays), and `@balena/proxy-protocol-parser` (1.0.2) answers only "a header or
 * null" and brings two dependencies. The gate needs an incremental verdict on the first bytes of a
 * socket with a cap; the layout is fixed, so the parser is short and tested against the spec's bytes
 * (test/server/proxy-protocol.test.ts).
 */

export const PROXY_V2_SIGNATURE: Buffer = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Signature, version/command, family/transport and the length field. */
export const PROXY_V2_FIXED_BYTES = 16;
/** The largest whole header accepted (fixed part, addresses and TLVs). */
export const PROXY_V2_MAX_BYTES = 1_024;

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');

/** The command (low nibble of byte 12). */
export const ProxyCommand = Object.freeze({ Local: 0x0, Proxy: 0x1 });
/** The address family (high nibble of byte 13). */
export const ProxyFamily = Object.freeze({ Unspec: 0x0, Inet: 0x1, Inet6: 0x2, Unix: 0x3 });
/** The transport (low nibble of byte 13). */
export const ProxyTransport = Object.freeze({ Unspec: 0x0, Stream: 0x1, Dgram: 0x2 });

/** An endpoint the header names (IPv6 in RFC 5952 form, as Node reports socket addresses). */
export interface ProxyEndpoint {
  address: string;
  port: number;
}

export type ProxyHeader =
  /** The balancer speaks for itself (LOCAL), or names no IP endpoints (UNSPEC, UNIX): use the socket's address. */
  | { command: 'local' | 'unspec' }
  | { command: 'proxy'; family: 'ipv4' | 'ipv6'; source: ProxyEndpoint; destination: ProxyEndpoint };

export type ProxyInvalid = 'not_proxy' | 'v1' | 'version' | 'command' | 'family' | 'length' | 'too_large';

export type ProxyParse =
  /** Not enough bytes yet: at least `need` in all are required. */
  | { kind: 'incomplete'; need: number }
  | { kind: 'header'; header: ProxyHeader; /** bytes the header takes; what follows is the client's */ length: number }
  | { kind: 'invalid'; reason: ProxyInvalid };

/**
 * Parses the start of a connection's bytes. A wrong byte is reported as soon as it is seen (a TLS
 * client that connected directly is refused on its first byte, 0x16, without waiting for 16).
 */
export function parseProxyV2(buf: Buffer): ProxyParse {
  const seen = Math.min(buf.length, PROXY_V2_SIGNATURE.length);
  if (!buf.subarray(0, seen).equals(PROXY_V2_SIGNATURE.subarray(0, seen))) {
    const v1 = Math.min(buf.length, V1_PREFIX.length);
    return { kind: 'invalid', reason: buf.subarray(0, v1).equals(V1_PREFIX.subarray(0, v1)) ? 'v1' : 'not_proxy' };
  }
  if (buf.length < PROXY_V2_FIXED_BYTES) return { kind: 'incomplete', need: PROXY_V2_FIXED_BYTES };
  const versionCommand = buf[12]!;
  if (versionCommand >> 4 !== 2) return { kind: 'invalid', reason: 'version' };
  const command = versionCommand & 0x0f;
  if (command !== ProxyCommand.Local && command !== ProxyCommand.Proxy) return { kind: 'invalid', reason: 'command' };
  const family = buf[13]! >> 4;
  const transport = buf[13]! & 0x0f;
  if (family > ProxyFamily.Unix || transport > ProxyTransport.Dgram) return { kind: 'invalid', reason: 'family' };
  const length = PROXY_V2_FIXED_BYTES + buf.readUInt16BE(14);
  if (length > PROXY_V2_MAX_BYTES) return { kind: 'invalid', reason: 'too_large' };
  // The address block must fit the announced length, whatever the command (a LOCAL header's addresses are ignored).
  const addressBytes = family === ProxyFamily.Inet ? 12 : family === ProxyFamily.Inet6 ? 36 : family === ProxyFamily.Unix ? 216 : 0;
  if (length < PROXY_V2_FIXED_BYTES + addressBytes) return { kind: 'invalid', reason: 'length' };
  if (buf.length < length) return { kind: 'incomplete', need: length };
  if (command === ProxyCommand.Local) return { kind: 'header', header: { command: 'local' }, length };
  if (family === ProxyFamily.Unspec || family === ProxyFamily.Unix) return { kind: 'header', header: { command: 'unspec' }, length };
  if (transport !== ProxyTransport.Stream) return { kind: 'invalid', reason: 'family' };
  if (family === ProxyFamily.Inet) {
    return {
      kind: 'header',
      header: {
        command: 'proxy',
        family: 'ipv4',
        source: { address: ipv4Text(buf.subarray(16, 20)), port: buf.readUInt16BE(24) },
        destination: { address: ipv4Text(buf.subarray(20, 24)), port: buf.readUInt16BE(26) },
      },
      length,
    };
  }
  return {
    kind: 'header',
    header: {
      command: 'proxy',
      family: 'ipv6',
      source: { address: ipv6Text(buf.subarray(16, 32)), port: buf.readUInt16BE(48) },
      destination: { address: ipv6Text(buf.subarray(32, 48)), port: buf.readUInt16BE(50) },
    },
    length,
  };
}

/** A v2 PROXY header for an IPv4 or IPv6 TCP connection, or LOCAL (tests, and the reference for the parser). */
export function encodeProxyV2(header: { command: 'local' } | { command: 'proxy'; source: ProxyEndpoint; destination: ProxyEndpoint }, tlvs: Buffer = Buffer.alloc(0)): Buffer {
  if (header.command === 'local') {
    const out = Buffer.alloc(PROXY_V2_FIXED_BYTES + tlvs.length);
    PROXY_V2_SIGNATURE.copy(out, 0);
    out[12] = 0x20;
    out[13] = 0x00;
    out.writeUInt16BE(tlvs.length, 14);
    tlvs.copy(out, 16);
    return out;
  }
  const v6 = header.source.address.includes(':');
  const size = v6 ? 16 : 4;
  const out = Buffer.alloc(PROXY_V2_FIXED_BYTES + size * 2 + 4 + tlvs.length);
  PROXY_V2_SIGNATURE.copy(out, 0);
  out[12] = 0x21;
  out[13] = v6 ? 0x21 : 0x11;
  out.writeUInt16BE(size * 2 + 4 + tlvs.length, 14);
  (v6 ? ipv6Bytes : ipv4Bytes)(header.source.address).copy(out, 16);
  (v6 ? ipv6Bytes : ipv4Bytes)(header.destination.address).copy(out, 16 + size);
  out.writeUInt16BE(header.source.port, 16 + size * 2);
  out.writeUInt16BE(header.destination.port, 18 + size * 2);
  tlvs.copy(out, 20 + size * 2);
  return out;
}

function ipv4Text(b: Buffer): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** RFC 5952: lower-case hex, the longest run (≥ 2) of zero groups as `::`, IPv4-mapped as `::ffff:a.b.c.d` (as Node writes them). */
export function ipv6Text(b: Buffer): string {
  const groups = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) return `::ffff:${ipv4Text(b.subarray(12, 16))}`;
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
}

function ipv4Bytes(text: string): Buffer {
  return Buffer.from(text.split('.').map((p) => Number(p)));
}

function ipv6Bytes(text: string): Buffer {
  const out = Buffer.alloc(16);
  let body = text;
  const tail: number[] = [];
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(body);
  if (v4) {
    const b = ipv4Bytes(v4[1]!);
    tail.push(b.readUInt16BE(0), b.readUInt16BE(2));
    body = body.slice(0, -v4[1]!.length).replace(/:$/, '') || ':';
    if (body === ':') body = '::';
  }
  const [head, rest] = body.includes('::') ? body.split('::') : [body, undefined];
  const parse = (s: string | undefined): number[] => (s ? s.split(':').filter((x) => x !== '').map((x) => parseInt(x, 16)) : []);
  const left = parse(head);
  const right = [...parse(rest), ...tail];
  const groups = rest === undefined && !v4 ? left : [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}
