import { crc32 } from 'node:zlib';
import { isIP } from 'node:net';

/**
 * STUN Binding (RFC 8489, which obsoletes RFC 5389) as meshlink uses it for mesh endpoint discovery:
 * the server's responder reflects the source address of a Binding request, and the agent learns from
 * it the public address a NAT gives its WireGuard port (docs/MESH.md, "NAT traversal"). Only the
 * Binding method is spoken, without authentication: the answer is the requester's own address, which
 * an on-path attacker can forge anyway, and WireGuard authenticates every packet that follows.
 *
 * Why a codec of our own: the npm `stun` package is abandoned and pulls vulnerable dependencies, and
 * Binding needs a 20-byte header and four address attributes. It is tested against the RFC 5769 test
 * vectors (test/contract/stun.test.ts).
 *
 * Wire rules (all integers big-endian):
 * - header: 2 bytes message type (top two bits 0), 2 bytes length of the attributes (a multiple of 4),
 *   4 bytes magic cookie 0x2112A442, 12 bytes transaction id;
 * - attributes: 2 bytes type, 2 bytes value length, the value, then zero padding to a multiple of 4;
 *   types 0x0000-0x7FFF are comprehension-required, 0x8000-0xFFFF optional;
 * - FINGERPRINT (0x8028), when present, is last: CRC-32 of every byte before it, the header's length
 *   already counting the FINGERPRINT, XOR 0x5354554E. A message with a wrong one is not STUN and is
 *   dropped without an answer (that is how STUN is told apart from WireGuard on a shared port);
 * - after MESSAGE-INTEGRITY (0x0008) only FINGERPRINT may follow; anything else there is ignored.
 */

export const STUN_MAGIC_COOKIE = 0x2112a442;
export const STUN_HEADER_BYTES = 20;
/**
 * The largest message either side accepts or builds. RFC 8489 §6.1 keeps STUN over UDP under the path
 * MTU; 548 bytes is its floor for IPv4. A Binding answer from this codec is at most 100 bytes.
 */
export const STUN_MAX_MESSAGE_BYTES = 548;
/** XOR'ed into the CRC-32 of FINGERPRINT ("STUN" in ASCII). */
const FINGERPRINT_XOR = 0x5354554e;

export const StunMessageType = {
  bindingRequest: 0x0001,
  bindingSuccess: 0x0101,
  bindingError: 0x0111,
} as const;

export const StunAttribute = {
  mappedAddress: 0x0001,
  /** RFC 5780: ask for the answer from the other port (0x02) or the other address (0x04). */
  changeRequest: 0x0003,
  username: 0x0006,
  messageIntegrity: 0x0008,
  errorCode: 0x0009,
  unknownAttributes: 0x000a,
  xorMappedAddress: 0x0020,
  software: 0x8022,
  fingerprint: 0x8028,
  /** RFC 5780: the address and port the answer was sent from. */
  responseOrigin: 0x802b,
  /** RFC 5780: the responder's other address and port, for the mapping test. */
  otherAddress: 0x802c,
} as const;

/** CHANGE-REQUEST flags (RFC 5780 §7.2). */
export const CHANGE_PORT = 0x02;
export const CHANGE_IP = 0x04;

export interface StunEndpoint {
  /** An IPv4 dotted quad or an IPv6 address in its compressed form. */
  readonly address: string;
  readonly port: number;
}

export interface StunAttributeValue {
  readonly type: number;
  readonly value: Buffer;
}

export interface StunMessage {
  readonly type: number;
  /** 12 bytes. */
  readonly transactionId: Buffer;
  /** In wire order, MESSAGE-INTEGRITY's followers and FINGERPRINT left out. */
  readonly attributes: readonly StunAttributeValue[];
  /** Whether a FINGERPRINT was present (and, since the message parsed, correct). */
  readonly fingerprinted: boolean;
}

export type StunParseResult = { ok: true; message: StunMessage } | { ok: false; reason: string };

/**
 * Parses one datagram as a STUN message. Never throws: anything that is not a well-formed STUN
 * message gets `ok: false` with the reason, for counters and tests; a responder drops it silently.
 */
export function parseStunMessage(datagram: Uint8Array): StunParseResult {
  const buf = Buffer.from(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  if (buf.length < STUN_HEADER_BYTES) return { ok: false, reason: 'shorter than a STUN header' };
  if (buf.length > STUN_MAX_MESSAGE_BYTES) return { ok: false, reason: `longer than ${STUN_MAX_MESSAGE_BYTES} bytes` };
  const type = buf.readUInt16BE(0);
  if ((type & 0xc000) !== 0) return { ok: false, reason: 'the two top bits of the type are not zero' };
  const length = buf.readUInt16BE(2);
  if (length % 4 !== 0) return { ok: false, reason: 'the length is not a multiple of 4' };
  if (STUN_HEADER_BYTES + length !== buf.length) return { ok: false, reason: 'the length does not match the datagram' };
  if (buf.readUInt32BE(4) !== STUN_MAGIC_COOKIE) return { ok: false, reason: 'no magic cookie' };

  const attributes: StunAttributeValue[] = [];
  let fingerprinted = false;
  let afterIntegrity = false;
  let offset = STUN_HEADER_BYTES;
  while (offset < buf.length) {
    if (offset + 4 > buf.length) return { ok: false, reason: 'a truncated attribute header' };
    const attrType = buf.readUInt16BE(offset);
    const attrLength = buf.readUInt16BE(offset + 2);
    const valueStart = offset + 4;
    const next = valueStart + attrLength + ((4 - (attrLength % 4)) % 4);
    if (next > buf.length) return { ok: false, reason: 'an attribute runs past the message' };
    if (attrType === StunAttribute.fingerprint) {
      if (attrLength !== 4 || next !== buf.length) return { ok: false, reason: 'FINGERPRINT is not the last 4-byte attribute' };
      const expected = (crc32(buf.subarray(0, offset)) ^ FINGERPRINT_XOR) >>> 0;
      if (buf.readUInt32BE(valueStart) !== expected) return { ok: false, reason: 'wrong FINGERPRINT' };
      fingerprinted = true;
    } else if (!afterIntegrity) {
      attributes.push({ type: attrType, value: Buffer.from(buf.subarray(valueStart, valueStart + attrLength)) });
      if (attrType === StunAttribute.messageIntegrity) afterIntegrity = true;
    }
    offset = next;
  }
  return { ok: true, message: { type, transactionId: Buffer.from(buf.subarray(8, 20)), attributes, fingerprinted } };
}

/** The first attribute of a type, if any. */
export function stunAttribute(message: StunMessage, type: number): Buffer | undefined {
  return message.attributes.find((a) => a.type === type)?.value;
}

/**
 * Decodes an address attribute value (MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS; XOR-MAPPED-ADDRESS
 * with `xorWith` the message's transaction id): 1 reserved byte, the family (1 IPv4, 2 IPv6), the
 * port, then 4 or 16 address bytes. For the XOR form the port is XOR'ed with the cookie's top 16 bits,
 * an IPv4 address with the cookie, an IPv6 address with the cookie followed by the transaction id.
 */
export function decodeStunAddress(value: Buffer, xorWith?: Buffer): StunEndpoint | undefined {
  if (value.length < 4) return undefined;
  const family = value[1];
  const size = family === 1 ? 4 : family === 2 ? 16 : 0;
  if (size === 0 || value.length !== 4 + size) return undefined;
  const mask = xorWith ? xorMask(xorWith) : undefined;
  const port = value.readUInt16BE(2) ^ (mask ? mask.readUInt16BE(0) : 0);
  const bytes = Buffer.from(value.subarray(4));
  if (mask) for (let i = 0; i < bytes.length; i++) bytes[i]! ^= mask[i]!;
  return { address: size === 4 ? [...bytes].join('.') : ipv6Text(bytes), port };
}

/** The address and port in a XOR-MAPPED-ADDRESS, else a MAPPED-ADDRESS (RFC 3489 servers), else none. */
export function mappedEndpoint(message: StunMessage): StunEndpoint | undefined {
  const xored = stunAttribute(message, StunAttribute.xorMappedAddress);
  if (xored) return decodeStunAddress(xored, message.transactionId);
  const plain = stunAttribute(message, StunAttribute.mappedAddress);
  return plain ? decodeStunAddress(plain) : undefined;
}

export interface StunMessageInput {
  type: number;
  transactionId: Uint8Array;
  attributes?: readonly StunAttributeValue[];
  /** Append a FINGERPRINT (this codec always does for what meshlink sends). Default true. */
  fingerprint?: boolean;
}

/** Builds one STUN message; throws RangeError on input no valid message could carry. */
export function encodeStunMessage(input: StunMessageInput): Buffer {
  if (input.transactionId.byteLength !== 12) throw new RangeError('a STUN transaction id has 12 bytes');
  if ((input.type & 0xc000) !== 0) throw new RangeError('a STUN message type has its two top bits zero');
  const parts: Buffer[] = [];
  for (const attr of input.attributes ?? []) {
    if (attr.value.length > 0xffff) throw new RangeError('a STUN attribute value has at most 65535 bytes');
    const head = Buffer.alloc(4);
    head.writeUInt16BE(attr.type, 0);
    head.writeUInt16BE(attr.value.length, 2);
    parts.push(head, attr.value, Buffer.alloc((4 - (attr.value.length % 4)) % 4));
  }
  const withFingerprint = input.fingerprint ?? true;
  const body = Buffer.concat(parts);
  const length = body.length + (withFingerprint ? 8 : 0);
  if (STUN_HEADER_BYTES + length > STUN_MAX_MESSAGE_BYTES) throw new RangeError(`a STUN message has at most ${STUN_MAX_MESSAGE_BYTES} bytes`);
  const header = Buffer.alloc(STUN_HEADER_BYTES);
  header.writeUInt16BE(input.type, 0);
  header.writeUInt16BE(length, 2);
  header.writeUInt32BE(STUN_MAGIC_COOKIE, 4);
  Buffer.from(input.transactionId.buffer, input.transactionId.byteOffset, 12).copy(header, 8);
  const message = Buffer.concat([header, body]);
  if (!withFingerprint) return message;
  const fingerprint = Buffer.alloc(8);
  fingerprint.writeUInt16BE(StunAttribute.fingerprint, 0);
  fingerprint.writeUInt16BE(4, 2);
  fingerprint.writeUInt32BE((crc32(message) ^ FINGERPRINT_XOR) >>> 0, 4);
  return Buffer.concat([message, fingerprint]);
}

/** An address attribute value (see decodeStunAddress); `xorWith` the transaction id for XOR-MAPPED-ADDRESS. */
export function encodeStunAddress(endpoint: StunEndpoint, xorWith?: Uint8Array): Buffer {
  const family = isIP(endpoint.address);
  if (family === 0) throw new RangeError(`not an IP address: ${endpoint.address}`);
  if (!Number.isInteger(endpoint.port) || endpoint.port < 0 || endpoint.port > 65_535) throw new RangeError(`not a port: ${endpoint.port}`);
  const bytes = family === 4 ? Buffer.from(endpoint.address.split('.').map(Number)) : ipv6Bytes(endpoint.address);
  const value = Buffer.alloc(4 + bytes.length);
  value[1] = family === 4 ? 1 : 2;
  const mask = xorWith ? xorMask(Buffer.from(xorWith.buffer, xorWith.byteOffset, xorWith.byteLength)) : undefined;
  value.writeUInt16BE(endpoint.port ^ (mask ? mask.readUInt16BE(0) : 0), 2);
  for (let i = 0; i < bytes.length; i++) value[4 + i] = bytes[i]! ^ (mask ? mask[i]! : 0);
  return value;
}

/** ERROR-CODE value (RFC 8489 §14.8): class and number, then a UTF-8 reason. */
export function encodeStunErrorCode(code: number, reason: string): Buffer {
  const text = Buffer.from(reason, 'utf8').subarray(0, 128);
  const value = Buffer.alloc(4 + text.length);
  value[2] = Math.floor(code / 100);
  value[3] = code % 100;
  text.copy(value, 4);
  return value;
}

/** The error code number of an ERROR-CODE value (e.g. 420), if well-formed. */
export function decodeStunErrorCode(value: Buffer): number | undefined {
  if (value.length < 4) return undefined;
  const errorClass = value[2]! & 0x07;
  const number = value[3]!;
  if (errorClass < 3 || errorClass > 6 || number > 99) return undefined;
  return errorClass * 100 + number;
}

/** The cookie followed by the transaction id: the mask of the XOR address form (port: first 2 bytes). */
function xorMask(transactionId: Buffer): Buffer {
  const mask = Buffer.alloc(16);
  mask.writeUInt32BE(STUN_MAGIC_COOKIE, 0);
  transactionId.copy(mask, 4, 0, 12);
  return mask;
}

function ipv6Text(bytes: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  // RFC 5952: the longest run (of two or more) of zero groups becomes "::".
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  if (bestStart < 0) return groups.join(':');
  return `${groups.slice(0, bestStart).join(':')}::${groups.slice(bestStart + bestLength).join(':')}`;
}

function ipv6Bytes(address: string): Buffer {
  const [head = '', tail] = address.split('::') as [string, string?];
  const parse = (part: string): number[] => (part === '' ? [] : part.split(':').flatMap(group6));
  const headGroups = parse(head);
  const tailGroups = tail === undefined ? [] : parse(tail);
  const zeros = 8 - headGroups.length - tailGroups.length;
  const groups = tail === undefined ? headGroups : [...headGroups, ...new Array<number>(zeros).fill(0), ...tailGroups];
  const bytes = Buffer.alloc(16);
  groups.forEach((g, i) => bytes.writeUInt16BE(g, i * 2));
  return bytes;
}

/** One colon-separated IPv6 part as 16-bit groups (an embedded IPv4 tail gives two). */
function group6(part: string): number[] {
  if (!part.includes('.')) return [parseInt(part, 16)];
  const [a, b, c, d] = part.split('.').map(Number) as [number, number, number, number];
  return [(a << 8) | b, (c << 8) | d];
}
