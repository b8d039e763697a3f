import { randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import {
  CHANGE_IP,
  CHANGE_PORT,
  StunAttribute,
  StunMessageType,
  decodeStunAddress,
  decodeStunErrorCode,
  encodeStunMessage,
  mappedEndpoint,
  parseStunMessage,
  stunAttribute,
  type StunMessage,
} from '../../src/contract/stun.js';
import { classify, probeNat } from '../../src/agent/mesh/nat-probe.js';
import { StunResponder } from '../../src/server/mesh/stun-responder.js';
import { createLogger } from '../../src/util/logger.js';

/** The server's STUN responder and the agent's probe over real UDP sockets on loopback. */

const logger = createLogger({ name: 'stun-test', level: 'silent' });
const open: Array<{ close(): unknown }> = [];
afterEach(async () => {
  for (const o of open.splice(0)) await o.close();
});

async function responder(options: { perSourcePerMinute?: number } = {}): Promise<StunResponder> {
  const r = await StunResponder.listen({ host: '127.0.0.1', port: 0, alternatePort: 0, logger, ...options });
  open.push(r);
  return r;
}

async function client(): Promise<Socket> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  open.push({ close: () => new Promise<void>((resolve) => socket.close(() => resolve())) });
  return socket;
}

/** Sends one datagram and waits for the first answer (with its source port). */
function ask(socket: Socket, port: number, datagram: Buffer): Promise<{ message: StunMessage; fromPort: number }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no answer within 10 s')), 10_000);
    socket.once('message', (answer, from) => {
      clearTimeout(timer);
      const parsed = parseStunMessage(answer);
      if (!parsed.ok) reject(new Error(parsed.reason));
      else resolve({ message: parsed.message, fromPort: from.port });
    });
    socket.send(datagram, port, '127.0.0.1');
  });
}

const bindingRequest = (attributes: Array<{ type: number; value: Buffer }> = []) =>
  encodeStunMessage({ type: StunMessageType.bindingRequest, transactionId: randomBytes(12), attributes });
const changeRequest = (flags: number) => {
  const value = Buffer.alloc(4);
  value.writeUInt32BE(flags, 0);
  return { type: StunAttribute.changeRequest, value };
};

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 1_000 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(condition()).toBe(true);
}

describe('STUN responder', () => {
  it('answers a Binding request with the source address, its own port and the other port', async () => {
    const r = await responder();
    const [primary, alternate] = r.endpoints;
    const socket = await client();
    const { message, fromPort } = await ask(socket, primary.port, bindingRequest());
    expect(message.type).toBe(StunMessageType.bindingSuccess);
    expect(message.fingerprinted).toBe(true);
    expect(fromPort).toBe(primary.port);
    expect(mappedEndpoint(message)).toEqual({ address: '127.0.0.1', port: socket.address().port });
    expect(decodeStunAddress(stunAttribute(message, StunAttribute.responseOrigin)!)).toEqual(primary);
    expect(decodeStunAddress(stunAttribute(message, StunAttribute.otherAddress)!)).toEqual(alternate);
    // The alternate port answers the same way, naming the primary as the other.
    const second = await ask(socket, alternate.port, bindingRequest());
    expect(second.fromPort).toBe(alternate.port);
    expect(decodeStunAddress(stunAttribute(second.message, StunAttribute.otherAddress)!)).toEqual(primary);
  });

  it('CHANGE-REQUEST "change port" is answered from the other port; "change IP" gets 420', async () => {
    const r = await responder();
    const [primary, alternate] = r.endpoints;
    const socket = await client();
    const changed = await ask(socket, primary.port, bindingRequest([changeRequest(CHANGE_PORT)]));
    expect(changed.fromPort).toBe(alternate.port);
    expect(changed.message.type).toBe(StunMessageType.bindingSuccess);
    const refused = await ask(socket, primary.port, bindingRequest([changeRequest(CHANGE_IP)]));
    expect(refused.message.type).toBe(StunMessageType.bindingError);
    expect(decodeStunErrorCode(stunAttribute(refused.message, StunAttribute.errorCode)!)).toBe(420);
  });

  it('an unknown comprehension-required attribute gets 420 naming it; an unknown optional one is ignored', async () => {
    const r = await responder();
    const socket = await client();
    const refused = await ask(socket, r.endpoints[0].port, bindingRequest([{ type: 0x0024, value: Buffer.alloc(4) }]));
    expect(refused.message.type).toBe(StunMessageType.bindingError);
    expect(decodeStunErrorCode(stunAttribute(refused.message, StunAttribute.errorCode)!)).toBe(420);
    expect(stunAttribute(refused.message, StunAttribute.unknownAttributes)).toEqual(Buffer.from([0x00, 0x24]));
    const fine = await ask(socket, r.endpoints[0].port, bindingRequest([{ type: 0x8029, value: Buffer.alloc(8) }]));
    expect(fine.message.type).toBe(StunMessageType.bindingSuccess);
  });

  it('drops what is not a Binding request, silently, and limits answers per source', async () => {
    const r = await responder({ perSourcePerMinute: 3 });
    const socket = await client();
    const port = r.endpoints[0].port;
    let answers = 0;
    socket.on('message', () => answers++);
    socket.send(Buffer.from('not stun at all, but long enough to be a header'), port, '127.0.0.1');
    socket.send(encodeStunMessage({ type: StunMessageType.bindingSuccess, transactionId: randomBytes(12) }), port, '127.0.0.1');
    const broken = bindingRequest();
    broken[broken.length - 1]! ^= 0xff; // a wrong FINGERPRINT
    socket.send(broken, port, '127.0.0.1');
    await until(() => r.counters.dropped === 3);
    for (let i = 0; i < 5; i++) socket.send(bindingRequest(), port, '127.0.0.1');
    await until(() => r.counters.answered + r.counters.limited === 5);
    expect(r.counters).toEqual({ answered: 3, dropped: 3, limited: 2 });
    await until(() => answers === 3);
  });

  it('an explicit port in use fails with ML_ERR_STUN_PORT_BUSY', async () => {
    const r = await responder();
    await expect(StunResponder.listen({ host: '127.0.0.1', port: r.endpoints[0].port, alternatePort: 0, logger })).rejects.toMatchObject({ code: 'ML_ERR_STUN_PORT_BUSY' });
    await expect(StunResponder.listen({ host: 'localhost', port: 0, alternatePort: 0, logger })).rejects.toMatchObject({ code: 'ML_ERR_CONFIG' });
  });
});

describe('the agent NAT probe', () => {
  it('on loopback: the reflexive address is its own, both ports agree: no NAT', async () => {
    const r = await responder();
    const result = await probeNat({ server: { host: '127.0.0.1', port: r.endpoints[0].port }, localPort: 0 });
    expect(result.reflexive).toEqual({ address: '127.0.0.1', port: result.localPort });
    expect(result.alternateReflexive).toEqual(result.reflexive);
    expect(result.mapping).toBe('none');
    expect(r.counters.answered).toBeGreaterThanOrEqual(2);
  });

  it('probes from the port it is given, and says so when that port is taken', async () => {
    const r = await responder();
    const holder = await client();
    await expect(probeNat({ server: { host: '127.0.0.1', port: r.endpoints[0].port }, localPort: holder.address().port })).rejects.toMatchObject({ code: 'ML_ERR_STUN_PORT_BUSY' });
  });

  it('no answer: ML_ERR_STUN_NO_ANSWER', async () => {
    const silent = await client(); // bound, never answers
    await expect(probeNat({ server: { host: '127.0.0.1', port: silent.address().port }, localPort: 0, timeoutMs: 300 })).rejects.toMatchObject({ code: 'ML_ERR_STUN_NO_ANSWER' });
  });

  it('classifies the mapping from the two answers', () => {
    const own = new Set(['192.168.1.10']);
    const pub = { address: '203.0.113.7', port: 40000 };
    expect(classify(51820, { address: '192.168.1.10', port: 51820 }, null, own)).toBe('none');
    expect(classify(51820, pub, pub, own)).toBe('endpoint-independent');
    expect(classify(51820, pub, { ...pub, port: 40001 }, own)).toBe('endpoint-dependent');
    expect(classify(51820, pub, null, own)).toBe('unknown');
    // The local address but another port: a NAT on this host (e.g. a container's) that rewrote the port.
    expect(classify(51820, { address: '192.168.1.10', port: 40000 }, { address: '192.168.1.10', port: 40000 }, own)).toBe('endpoint-independent');
  });
});
