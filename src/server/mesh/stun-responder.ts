import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { isIP } from 'node:net';
import {
  CHANGE_IP,
  CHANGE_PORT,
  StunAttribute,
  StunMessageType,
  encodeStunAddress,
  encodeStunErrorCode,
  encodeStunMessage,
  parseStunMessage,
  stunAttribute,
  type StunAttributeValue,
  type StunEndpoint,
  type StunMessage,
} from '../../contract/stun.js';
import { MeshlinkError } from '../../errors.js';
import type { Logger } from '../../util/logger.js';
import { TokenBuckets } from '../../util/token-bucket.js';

/**
 * The server's STUN Binding responder (RFC 8489, with the RFC 5780 attributes for the mapping test):
 * agents send it a Binding request from their WireGuard UDP port and learn the public address their
 * NAT maps that port to (docs/MESH.md, "NAT traversal").
 *
 * It listens on two UDP ports of one address, the primary and the alternate. Every answer carries
 * XOR-MAPPED-ADDRESS (the request's source), RESPONSE-ORIGIN (the answering port) and OTHER-ADDRESS
 * (the other port), so an agent that asks both ports from one local port sees whether its NAT keeps
 * one mapping for every destination (endpoint-independent mapping) or makes a new one per destination.
 * With one address only, the responder cannot tell address-dependent from address-and-port-dependent
 * mapping; both count as "not endpoint-independent", which is what the path choice needs.
 *
 * What a hostile sender gets:
 * - anything that is not a well-formed Binding request (a response, an indication, not STUN, a wrong
 *   FINGERPRINT) is dropped without a word, so the port is no reflector for other protocols;
 * - an answer is at most ~100 bytes for a request of at least 20: an amplification of 5 at worst, and
 *   answers are limited per source address and in all (token buckets), so a spoofed flood yields a
 *   bounded trickle;
 * - no state is kept per request; the rate table is capped (util/token-bucket.ts).
 * - CHANGE-REQUEST "change port" is honoured (the answer leaves from the other port: RFC 5780's
 *   filtering test); "change IP" gets error 420, since there is no second address to answer from.
 */

export interface StunResponderOptions {
  /** An IP address to bind (0.0.0.0 or :: for every address). */
  host: string;
  /** The primary port (3478 by default in the config; 0 picks a free one, for tests). */
  port: number;
  /** The alternate port; 0 picks a free one. */
  alternatePort: number;
  /** Answers per source address per minute (default 120: a probe is 2 to 8 requests). */
  perSourcePerMinute?: number;
  /** Answers per minute in all (default 60,000). */
  totalPerMinute?: number;
  logger: Logger;
}

export interface StunResponderCounters {
  answered: number;
  /** Datagrams that were not Binding requests. */
  dropped: number;
  /** Binding requests not answered because of a rate limit. */
  limited: number;
}

/** Comprehension-required attributes a request may carry. USERNAME and MESSAGE-INTEGRITY are understood and ignored: this responder authenticates no one (see above). */
const UNDERSTOOD = new Set<number>([StunAttribute.changeRequest, StunAttribute.username, StunAttribute.messageIntegrity]);
const SOFTWARE = Buffer.from('meshlink');

export class StunResponder {
  readonly counters: StunResponderCounters = { answered: 0, dropped: 0, limited: 0 };
  readonly #sockets: [Socket, Socket];
  readonly #endpoints: [StunEndpoint, StunEndpoint];
  readonly #perSource: TokenBuckets;
  readonly #total: TokenBuckets;

  private constructor(sockets: [Socket, Socket], options: StunResponderOptions) {
    this.#sockets = sockets;
    this.#endpoints = [endpointOf(sockets[0]), endpointOf(sockets[1])];
    this.#perSource = new TokenBuckets({ perMinute: options.perSourcePerMinute ?? 120 });
    this.#total = new TokenBuckets({ perMinute: options.totalPerMinute ?? 60_000, maxEntries: 1 });
    const log = options.logger;
    sockets.forEach((socket, index) => {
      socket.on('message', (datagram, from) => this.#onDatagram(index as 0 | 1, datagram, from));
      // A UDP socket's errors are per datagram (an ICMP unreachable for an earlier answer): log, go on.
      socket.on('error', (err) => log.debug({ err }, 'stun: socket error'));
    });
  }

  /** Binds both ports; fails with ML_ERR_CONFIG when the address is not an IP, ML_ERR_STUN_PORT_BUSY when a port is taken. */
  static async listen(options: StunResponderOptions): Promise<StunResponder> {
    const family = isIP(options.host);
    if (family === 0) throw new MeshlinkError('ML_ERR_CONFIG', `the STUN listen address must be an IP address, got "${options.host}"`);
    const type = family === 6 ? 'udp6' : 'udp4';
    const primary = await bind(type, options.host, options.port);
    try {
      const alternate = await bind(type, options.host, options.alternatePort);
      return new StunResponder([primary, alternate], options);
    } catch (err) {
      primary.close();
      throw err;
    }
  }

  /** The two bound endpoints: [primary, alternate]. */
  get endpoints(): readonly [StunEndpoint, StunEndpoint] {
    return this.#endpoints;
  }

  async close(): Promise<void> {
    await Promise.all(this.#sockets.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }

  #onDatagram(index: 0 | 1, datagram: Buffer, from: RemoteInfo): void {
    const parsed = parseStunMessage(datagram);
    if (!parsed.ok || parsed.message.type !== StunMessageType.bindingRequest) {
      this.counters.dropped++;
      return;
    }
    if (!this.#perSource.take(from.address) || !this.#total.take('*')) {
      this.counters.limited++;
      return;
    }
    const { socketIndex, answer } = this.#answer(index, parsed.message, { address: from.address, port: from.port });
    this.counters.answered++;
    this.#sockets[socketIndex].send(answer, from.port, from.address);
  }

  #answer(index: 0 | 1, request: StunMessage, source: StunEndpoint): { socketIndex: 0 | 1; answer: Buffer } {
    const unknown = request.attributes.filter((a) => a.type < 0x8000 && !UNDERSTOOD.has(a.type)).map((a) => a.type);
    const change = stunAttribute(request, StunAttribute.changeRequest);
    const flags = change && change.length === 4 ? change.readUInt32BE(0) : 0;
    if (unknown.length > 0 || (flags & CHANGE_IP) !== 0) {
      // 420 Unknown Attribute (RFC 8489 §6.3.1.1), naming what was not understood; "change IP" is
      // not understood here because there is no other address to answer from (RFC 5780 §6.1).
      const list = (unknown.length > 0 ? unknown : [StunAttribute.changeRequest]).slice(0, 16);
      const value = Buffer.alloc(list.length * 2);
      list.forEach((type, i) => value.writeUInt16BE(type, i * 2));
      const attributes: StunAttributeValue[] = [
        { type: StunAttribute.errorCode, value: encodeStunErrorCode(420, 'Unknown Attribute') },
        { type: StunAttribute.unknownAttributes, value },
        { type: StunAttribute.software, value: SOFTWARE },
      ];
      return { socketIndex: index, answer: encodeStunMessage({ type: StunMessageType.bindingError, transactionId: request.transactionId, attributes }) };
    }
    const socketIndex: 0 | 1 = (flags & CHANGE_PORT) !== 0 ? ((1 - index) as 0 | 1) : index;
    const attributes: StunAttributeValue[] = [
      { type: StunAttribute.xorMappedAddress, value: encodeStunAddress(source, request.transactionId) },
      { type: StunAttribute.responseOrigin, value: encodeStunAddress(this.#endpoints[socketIndex]) },
      { type: StunAttribute.otherAddress, value: encodeStunAddress(this.#endpoints[1 - socketIndex]!) },
      { type: StunAttribute.software, value: SOFTWARE },
    ];
    return { socketIndex, answer: encodeStunMessage({ type: StunMessageType.bindingSuccess, transactionId: request.transactionId, attributes }) };
  }
}

function bind(type: 'udp4' | 'udp6', host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket({ type });
    const onError = (err: NodeJS.ErrnoException): void => {
      socket.close();
      reject(err.code === 'EADDRINUSE' ? new MeshlinkError('ML_ERR_STUN_PORT_BUSY', `UDP ${host}:${port} for STUN is in use`) : err);
    };
    socket.once('error', onError);
    socket.bind(port, host, () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

function endpointOf(socket: Socket): StunEndpoint {
  const { address, port } = socket.address();
  return { address, port };
}
