import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createHash, randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { Session } from '../../src/protocol/session.js';
import { MuxStream, WRITE_HIGH_WATER, type StreamHost } from '../../src/protocol/stream.js';
import { encodeFrame } from '../../src/protocol/frame.js';
import { decodeBin, encodeMessage } from '../../src/protocol/codec.js';
import { FrameDecoder } from '../../src/protocol/decoder.js';
import type { Timers } from '../../src/protocol/timers.js';
import { makeTestPki, type TestPki } from '../helpers/tls-fixtures.js';
import { memoryPair, wssPair, type SessionPair } from '../helpers/session-pairs.js';

let pki: TestPki;
beforeAll(() => {
  pki = makeTestPki();
});
afterAll(() => pki.cleanup());

type Factory = (a?: object, s?: object) => Promise<SessionPair>;
const transports: Array<[string, Factory]> = [
  ['in-memory pair', (a, s) => memoryPair(a, s)],
  ['ws over TLS on loopback', (a, s) => wssPair(pki, a, s)],
];

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

async function readAll(stream: MuxStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Echo server: every opened stream gets its bytes back, then END. */
function serveEcho(session: Session): void {
  session.on('stream', (stream) => {
    session.accept(stream);
    stream.on('error', () => {});
    void pipeline(stream, stream).catch(() => {});
  });
}

describe.each(transports)('session over %s', (_name, makePair) => {
  it('negotiates the version and exchanges control messages', async () => {
    const pair = await makePair();
    try {
      expect(pair.agent.version).toBe(2);
      expect(pair.server.version).toBe(2);
      const got = new Promise((r) => pair.server.once('message', r));
      pair.agent.send('heartbeat', { seq: 1, ts: 123 });
      expect(await got).toEqual({ name: 'heartbeat', payload: { seq: 1, ts: 123 } });
      const rtt = await pair.agent.ping();
      expect(rtt).toBeGreaterThanOrEqual(0);
    } finally {
      await pair.close();
    }
  });

  it('answers requests through handlers, and maps handler errors to RemoteError', async () => {
    const pair = await makePair();
    try {
      pair.server.handle('state.request', (p) => ({ inSync: p.digest === 'ok' }));
      expect(await pair.agent.request('state.request', { digest: 'ok' })).toEqual({ rid: expect.any(Number), inSync: true });
      pair.server.handle('cert.renew', () => {
        throw Object.assign(new Error('x'), {});
      });
      await expect(pair.agent.request('cert.renew', { csr: '-----BEGIN CERTIFICATE REQUEST-----\n' })).rejects.toMatchObject({
        code: 'ML_ERR_REMOTE',
        remoteCode: 'ML_ERR_INTERNAL',
      });
    } finally {
      await pair.close();
    }
  });

  it('has one handler a request kind: a second registration throws, and a removed one is answered unsupported', async () => {
    const pair = await makePair();
    try {
      const remove = pair.server.handle('state.request', () => ({ inSync: true }));
      expect(() => pair.server.handle('state.request', () => ({ inSync: false }))).toThrow(/already registered/);
      expect(await pair.agent.request('state.request', { digest: 'x' })).toMatchObject({ inSync: true });
      remove();
      await expect(pair.agent.request('state.request', { digest: 'x' })).rejects.toMatchObject({ code: 'ML_ERR_REMOTE', remoteCode: 'ML_ERR_UNSUPPORTED' });
    } finally {
      await pair.close();
    }
  });

  it('100 concurrent streams deliver byte-exact data in both directions', async () => {
    const pair = await makePair();
    try {
      serveEcho(pair.server);
      serveEcho(pair.agent);
      const run = async (from: Session, i: number): Promise<void> => {
        const data = randomBytes(20_000 + i * 1_000);
        const stream = await from.openStream('file.open', { path: `/f/${i}`, direction: 'push' });
        const echoed = readAll(stream);
        stream.end(data);
        expect(sha256(await echoed)).toBe(sha256(data));
      };
      await Promise.all([
        ...Array.from({ length: 50 }, (_, i) => run(pair.agent, i)),
        // The server may open streams of server-to-agent kinds only.
        ...Array.from({ length: 50 }, async (_, i) => {
          const data = randomBytes(30_000 + i * 777);
          const stream = await pair.server.openStream('exec.open', { command: '/bin/cat', args: [] });
          const echoed = readAll(stream);
          stream.end(data);
          expect(sha256(await echoed)).toBe(sha256(data));
        }),
      ]);
      // Fully closed streams are released from the table.
      await new Promise((r) => setTimeout(r, 50));
      expect(pair.agent.streamCount).toBe(0);
      expect(pair.server.streamCount).toBe(0);
    } finally {
      await pair.close();
    }
  });

  it('a reader that stops reading keeps the sender bounded (no loss, no growth)', async () => {
    const pair = await makePair();
    try {
      let serverStream!: MuxStream;
      const accepted = new Promise<void>((r) =>
        pair.server.on('stream', (s) => {
          serverStream = s;
          pair.server.accept(s);
          s.pause(); // the slow consumer
          r();
        }),
      );
      const stream = await pair.agent.openStream('file.open', { path: '/x', direction: 'push' });
      await accepted;
      const total = 8 * 1024 * 1024;
      const payload = randomBytes(total);
      let offered = 0;
      let blocked = false;
      // Write as a well-behaved producer does (wait for 'drain'), until no drain comes for 300 ms.
      while (offered < total) {
        if (!stream.write(payload.subarray(offered, offered + 16384))) {
          offered += 16384;
          const drained = await Promise.race([
            new Promise((r) => stream.once('drain', () => r(true))),
            new Promise((r) => setTimeout(() => r(false), 300)),
          ]);
          if (!drained) {
            blocked = true;
            break;
          }
        } else offered += 16384;
      }
      expect(blocked).toBe(true);
      // The wait for credit is counted once, however many writes queued behind it.
      expect(pair.agent.flowControlStalls).toBe(1);
      expect(pair.server.flowControlStalls).toBe(0);
      // The receiver never holds more than its window; the sender holds one high-water mark plus
      // one write; the transport holds at most its high-water mark plus one message.
      expect(serverStream.readableLength).toBeLessThanOrEqual(256 * 1024);
      expect(stream.sendCredit).toBe(0);
      expect(stream.writableLength).toBeLessThanOrEqual(WRITE_HIGH_WATER + 16384);
      expect(pair.agent.inflightBytes).toBeLessThanOrEqual(1024 * 1024 + 70 * 1024);
      expect(offered).toBeLessThan(total);

      // Now the reader reads: everything arrives, byte-exact.
      const received = readAll(serverStream);
      serverStream.resume();
      const writeRest = async (): Promise<void> => {
        if (stream.writableNeedDrain) await new Promise((r) => stream.once('drain', r));
        while (offered < total) {
          const ok = stream.write(payload.subarray(offered, offered + 16384));
          offered += 16384;
          if (!ok) await new Promise((r) => stream.once('drain', r));
        }
        stream.end();
      };
      await writeRest();
      expect(sha256(await received)).toBe(sha256(payload));
    } finally {
      await pair.close();
    }
  });

  it('auto-tuning keeps a window within its cap for a fast reader and never grows one for a slow reader', async () => {
    // Whether a loopback window grows depends on how fast it is consumed against the RTT (the rule
    // is tested in pipe.test.ts, with a link that has a round trip); what holds on any transport:
    const pair = await makePair({}, { maxReceiveWindow: 2 * 1024 * 1024 });
    try {
      const streams: MuxStream[] = [];
      pair.server.on('stream', (s) => {
        pair.server.accept(s);
        streams.push(s);
        if ((s.meta as { path: string }).path === '/fast') s.resume();
        else s.pause();
      });
      const fast = await pair.agent.openStream('file.open', { path: '/fast', direction: 'push' });
      const slow = await pair.agent.openStream('file.open', { path: '/slow', direction: 'push' });
      const chunk = randomBytes(64 * 1024);
      const writeFor = async (s: MuxStream, bytes: number): Promise<void> => {
        for (let n = 0; n < bytes; n += chunk.length) {
          if (!s.write(chunk)) await Promise.race([new Promise((r) => s.once('drain', r)), new Promise((r) => setTimeout(r, 100))]);
        }
      };
      await Promise.all([writeFor(fast, 32 * 1024 * 1024), writeFor(slow, 512 * 1024)]);
      const [fastIn, slowIn] = [streams.find((s) => (s.meta as { path: string }).path === '/fast')!, streams.find((s) => (s.meta as { path: string }).path === '/slow')!];
      expect(fastIn.receiveWindowSize).toBeGreaterThanOrEqual(256 * 1024);
      expect(fastIn.receiveWindowSize).toBeLessThanOrEqual(2 * 1024 * 1024);
      expect(slowIn.receiveWindowSize).toBe(256 * 1024);
      expect(slowIn.readableLength).toBeLessThanOrEqual(256 * 1024);
    } finally {
      await pair.close();
    }
  });

  it('control messages keep flowing while a bulk stream saturates the link', async () => {
    const pair = await makePair();
    try {
      pair.server.on('stream', (s) => {
        pair.server.accept(s);
        s.on('data', () => {}); // a fast reader: the link itself is the bottleneck
      });
      const stream = await pair.agent.openStream('file.open', { path: '/x', direction: 'push' });
      const chunk = randomBytes(256 * 1024);
      let stop = false;
      const bulk = (async () => {
        while (!stop) {
          if (!stream.write(chunk)) await new Promise((r) => stream.once('drain', r));
        }
        stream.end();
      })();
      await new Promise((r) => setTimeout(r, 100));
      const rtts: number[] = [];
      for (let i = 0; i < 20; i++) {
        rtts.push(await pair.agent.ping());
        await new Promise((r) => setTimeout(r, 10));
      }
      stop = true;
      await bulk;
      rtts.sort((a, b) => a - b);
      // Not a benchmark: a generous bound that still fails if pings queued behind the bulk data
      // (256 KiB writes without end would take seconds to drain ahead of them).
      expect(rtts[Math.floor(rtts.length / 2)]!).toBeLessThan(250);
    } finally {
      await pair.close();
    }
  });

  it('typed stream messages keep their place among the data, on both sides', async () => {
    const pair = await makePair();
    try {
      const events: string[] = [];
      const accepted = new Promise<MuxStream>((resolve) =>
        pair.server.on('stream', (s) => {
          pair.server.accept(s);
          s.pause(); // a reader that is behind when the message arrives
          resolve(s);
        }),
      );
      const stream = await pair.agent.openStream('file.open', { path: '/order', direction: 'push' });
      const incoming = await accepted;
      incoming.on('message', (m: { name: string }) => events.push(`msg ${m.name}`));
      // Written in one go: most of it is still in the Writable's buffer when the message is sent.
      for (const part of ['AAAA', 'BBBB', 'CCCC']) stream.write(Buffer.from(part.repeat(20_000)));
      stream.sendMessage('file.done', { size: 240_000, sha256: 'ab'.repeat(32) });
      stream.end();
      await new Promise((r) => setTimeout(r, 200));
      expect(events).toEqual([]); // nothing consumed yet: the message waits behind the data
      let bytes = 0;
      incoming.on('data', (c: Buffer) => {
        bytes += c.length;
        events.push('data');
      });
      const ended = new Promise((r) => incoming.once('end', r));
      incoming.resume();
      await ended;
      expect(bytes).toBe(240_000);
      const firstMsg = events.indexOf('msg file.done');
      expect(firstMsg).toBeGreaterThan(0);
      expect(events.slice(firstMsg + 1)).toEqual([]);
    } finally {
      await pair.close();
    }
  });

  it('reject and reset reach the other side as typed errors', async () => {
    const pair = await makePair();
    try {
      pair.server.on('stream', (s) => {
        if ((s.meta as { path: string }).path === '/1') pair.server.reject(s, 'ML_ERR_FORBIDDEN', 'not allowed');
        else {
          pair.server.accept(s);
          s.on('error', () => {});
          s.destroy();
        }
      });
      await expect(pair.agent.openStream('file.open', { path: '/1', direction: 'push' })).rejects.toMatchObject({ code: 'ML_ERR_STREAM_REJECTED', remoteCode: 'ML_ERR_FORBIDDEN' });
      // Accepted and reset at once (both frames in one message): the open rejects with the reset
      // rather than handing over a stream that already failed.
      await expect(pair.agent.openStream('file.open', { path: '/2', direction: 'push' })).rejects.toMatchObject({ code: 'ML_ERR_STREAM_RESET', remote: true, resetCode: 'ML_ERR_CANCELLED' });
    } finally {
      await pair.close();
    }
  });

  it('refuses a stream kind the peer may not open, without ending the session', async () => {
    const pair = await makePair();
    try {
      pair.server.on('stream', (s) => pair.server.accept(s));
      // exec.open is server-to-agent: the agent's own checks refuse to send it.
      await expect(async () => pair.agent.openStream('exec.open', { command: 'x', args: [] })).rejects.toThrow(/may not send/);
      expect(pair.agent.state).toBe('open');
    } finally {
      await pair.close();
    }
  });
});

describe('protocol violations end the session with the documented close code', () => {
  async function violate(bytes: Uint8Array): Promise<{ code: number; error?: string }> {
    const pair = await memoryPair();
    const closed = new Promise<{ code: number; error?: string }>((r) =>
      pair.server.once('close', (info) => r({ code: info.code, error: info.error?.code })),
    );
    pair.server.receive(bytes);
    return closed;
  }

  it('reserved flag → 4002', async () => {
    expect(await violate(encodeFrame({ type: 0x0005, stream: 0, flags: 0x80 }, new Uint8Array([0x80])))).toEqual({ code: 4002, error: 'ML_ERR_RESERVED_FLAG' });
  });
  it('unknown type → 4003', async () => {
    expect(await violate(encodeFrame({ type: 0x7777, stream: 0, flags: 0 }, new Uint8Array([0xc0])))).toEqual({ code: 4003, error: 'ML_ERR_UNKNOWN_TYPE' });
  });
  it('wrong direction (welcome sent to the server) → 4005', async () => {
    const frame = encodeMessage('welcome', 0, { version: 1, nodeId: 'x', serverVersion: 'y', heartbeatIntervalMs: 1000 });
    expect(await violate(frame)).toEqual({ code: 4005, error: 'ML_ERR_WRONG_DIRECTION' });
  });
  it('oversized frame → 1009', async () => {
    const header = encodeFrame({ type: 0x0013, stream: 1, flags: 0 }, new Uint8Array(0));
    new DataView(header.buffer).setUint32(7, 64 * 1024 * 1024);
    expect(await violate(header)).toEqual({ code: 1009, error: 'ML_ERR_FRAME_TOO_LARGE' });
  });
  it('data beyond the window → 4020', async () => {
    const pair = await memoryPair();
    pair.server.on('stream', (s) => pair.server.accept(s));
    const stream = await pair.agent.openStream('file.open', { path: '/x', direction: 'push' });
    const closed = new Promise<number>((r) => pair.server.once('close', (i) => r(i.code)));
    // Bypass the agent's own flow control and push 300 KiB at once.
    for (let i = 0; i < 5; i++) pair.server.receive(encodeMessage('stream.data', stream.id, new Uint8Array(60 * 1024), { compress: false }));
    expect(await closed).toBe(4020);
  });
  it('openStream rejects with the reset when stream.accept and stream.reset arrive in one message', async () => {
    const pair = await memoryPair();
    // The server opens; the test answers as the agent by hand, both frames in one WebSocket message.
    const opened = pair.server.openStream('action.request', { action: 'x' });
    const id = 2;
    const message = Buffer.concat([encodeMessage('stream.accept', id, {}), encodeMessage('stream.reset', id, { code: 'ML_ERR_OPS_IO', message: 'gone' })]);
    pair.server.receive(message);
    await expect(opened).rejects.toMatchObject({ code: 'ML_ERR_STREAM_RESET', resetCode: 'ML_ERR_OPS_IO' });
    await pair.close();
  });
  it('a stream id of the wrong parity → 4021', async () => {
    expect(await violate(encodeMessage('stream.open', 2, { kind: 'file.open', meta: { path: '/x', direction: 'push' } }))).toEqual({ code: 4021, error: 'ML_ERR_STREAM_ID' });
  });
  it('no common version → 4010 and the agent learns why', async () => {
    const agent = new Session({ role: 'agent', versions: [7], transport: { send: (m, d) => setImmediate(() => { server.receive(m); d(); }), close: (c, r) => setImmediate(() => server.transportClosed(c, r)) } });
    const server: Session = new Session({ role: 'server', onHello: () => ({ nodeId: 'n', serverVersion: 's', heartbeatIntervalMs: 1000 }), transport: { send: (m, d) => setImmediate(() => { agent.receive(m); d(); }), close: (c, r) => setImmediate(() => agent.transportClosed(c, r)) } });
    const closed = new Promise<number>((r) => server.once('close', (i) => r(i.code)));
    await expect(agent.handshake({ agentVersion: 'x' })).rejects.toMatchObject({ remoteCode: 'ML_ERR_NO_COMMON_VERSION' });
    expect(await closed).toBe(4010);
  });
  it('a peer that never reads while it keeps asking for answers overflows the control queue: 4023, not a crash', async () => {
    // The server's transport accepts messages but never reports them written (a peer that stopped
    // reading): pongs pile up in the priority queue until its hard limit.
    const sent: Uint8Array[] = [];
    const server = new Session({
      role: 'server',
      onHello: () => ({ nodeId: 'n', serverVersion: 's', heartbeatIntervalMs: 1000 }),
      transportHighWater: 64,
      priorityHighWater: 1024,
      transport: { send: (m) => void sent.push(m), close: () => {} },
    });
    const closed = new Promise<{ code: number; error?: string }>((r) => server.once('close', (i) => r({ code: i.code, error: i.error?.code })));
    server.receive(encodeMessage('hello', 0, { versions: [1], agentVersion: 'x' }));
    await new Promise((r) => setImmediate(r));
    expect(server.state).toBe('open');
    for (let i = 0; i < 5_000 && server.state === 'open'; i++) {
      expect(() => server.receive(encodeMessage('ping', 0, { nonce: i + 1 }))).not.toThrow();
    }
    expect(await closed).toEqual({ code: 4023, error: 'ML_ERR_QUEUE_OVERFLOW' });
  });

  it('the stream cap counts only streams the peer opened', async () => {
    const pair = await memoryPair({}, { maxStreams: 2 });
    pair.agent.on('stream', (s) => pair.agent.accept(s));
    pair.server.on('stream', (s) => pair.server.accept(s));
    // The server opens three streams of its own: they do not use up the agent's allowance at the server.
    await Promise.all([0, 1, 2].map((i) => pair.server.openStream('log.stream', { lines: i })));
    const opened = await Promise.allSettled([0, 1, 2].map((i) => pair.agent.openStream('file.open', { path: `/${i}`, direction: 'push' })));
    expect(opened.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected']);
    expect(pair.server.state).toBe('open');
    await pair.close();
  });

  it('a flood of stream opens beyond the cap is refused, then ends the session with 4022', async () => {
    const pair = await memoryPair({}, { maxStreams: 4 });
    pair.server.on('stream', (s) => pair.server.accept(s));
    const closed = new Promise<number>((r) => pair.server.once('close', (i) => r(i.code)));
    const results = await Promise.allSettled(Array.from({ length: 12 }, () => pair.agent.openStream('file.open', { path: '/x', direction: 'push' })));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(4);
    expect(results.filter((r) => r.status === 'rejected').length).toBe(8);
    expect(await closed).toBe(4022);
  });
});

describe('typed stream messages and flow control (version 2)', () => {
  it('a paused reader stops typed messages too: the sender holds them for credit, and all arrive in order after resume', async () => {
    const pair = await memoryPair();
    let accepted!: MuxStream;
    const got: number[] = [];
    const opened = new Promise<void>((r) =>
      pair.server.on('stream', (s: MuxStream) => {
        pair.server.accept(s);
        accepted = s;
        s.pause();
        s.on('message', (m: { name: string; payload: Uint8Array }) => got.push(m.payload[0]!));
        r();
      }),
    );
    // The server opens nothing here: the agent opens an exec-like stream and sends 2 MiB of
    // stderr-like messages (16 KiB each), eight times the window.
    const stream = await pair.agent.openStream('file.open', { path: '/x', direction: 'push' });
    await opened;
    for (let i = 0; i < 128; i++) {
      const chunk = Uint8Array.from(randomBytes(16 * 1024)); // incompressible, so frames keep their size
      chunk[0] = i;
      stream.sendMessage('exec.stderr', chunk);
    }
    // Wait until the sender has stalled on credit: nothing more can leave it.
    for (let i = 0; i < 200 && stream.sendCredit > 16 * 1024; i++) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50));
    expect(got.length).toBe(0);
    expect(stream.sendCredit).toBeLessThan(16 * 1024);
    expect(stream.queuedBytes).toBeGreaterThan(1024 * 1024); // held by the sender, not the receiver
    accepted.resume();
    for (let i = 0; i < 400 && got.length < 128; i++) await new Promise((r) => setTimeout(r, 5));
    expect(got).toEqual(Array.from({ length: 128 }, (_, i) => i));
    await pair.close();
  });

  it('typed messages beyond the credit end the session with 4020', async () => {
    const pair = await memoryPair();
    pair.server.on('stream', (s: MuxStream) => {
      pair.server.accept(s);
      s.pause();
    });
    const stream = await pair.agent.openStream('file.open', { path: '/x', direction: 'push' });
    const closed = new Promise<{ code: number; error?: string }>((r) => pair.server.once('close', (i) => r({ code: i.code, error: i.error?.code })));
    // Bypass the sender's accounting: 17 messages of 16 KiB, one more than the 256 KiB window.
    for (let i = 0; i < 17; i++) pair.server.receive(encodeMessage('exec.stderr', stream.id, new Uint8Array(16 * 1024), { compress: false }));
    expect(await closed).toEqual({ code: 4020, error: 'ML_ERR_FLOW_CONTROL' });
  });

  it('with a version-1 peer typed messages take no credit, and held ones are capped at 1 MiB (the stream is reset)', async () => {
    const pair = await memoryPair({ versions: [1] });
    expect(pair.server.version).toBe(1);
    let accepted!: MuxStream;
    const opened = new Promise<void>((r) =>
      pair.server.on('stream', (s: MuxStream) => {
        pair.server.accept(s);
        accepted = s;
        s.pause();
        s.on('message', () => {});
        r();
      }),
    );
    const stream = await pair.agent.openStream('file.open', { path: '/x', direction: 'push' });
    await opened;
    const reset = new Promise<Error>((r) => stream.once('error', r));
    for (let i = 0; i < 80; i++) stream.sendMessage('exec.stderr', new Uint8Array(16 * 1024));
    expect(await reset).toMatchObject({ code: 'ML_ERR_STREAM_RESET', resetCode: 'ML_ERR_QUEUE_OVERFLOW' });
    expect(accepted.destroyed).toBe(true);
    await pair.close();
  });
});

describe('stream writes and typed messages', () => {
  it('a message sent between two corked writes arrives between them', async () => {
    const pair = await memoryPair();
    const events: string[] = [];
    const ended = new Promise<void>((resolve) =>
      pair.server.on('stream', (s) => {
        pair.server.accept(s);
        s.on('data', (c: Buffer) => events.push(`data ${c.length}`));
        s.on('message', () => events.push('message'));
        s.on('end', () => resolve());
      }),
    );
    const stream = await pair.agent.openStream('file.open', { path: '/a', direction: 'push' });
    stream.cork();
    stream.write(Buffer.alloc(1));
    stream.sendMessage('file.done', { size: 1, sha256: '0'.repeat(64) });
    stream.write(Buffer.alloc(2));
    stream.uncork();
    stream.end();
    await ended;
    expect(events).toEqual(['data 1', 'message', 'data 2']);
    await pair.close();
  });

  it('any mix of writes, corks and messages: each message arrives after exactly the bytes written before it, END last, every write callback once', async () => {
    type Op = { t: 'write'; n: number } | { t: 'message' } | { t: 'cork' } | { t: 'uncork' } | { t: 'tick' };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ t: fc.constant('write' as const), n: fc.integer({ min: 0, max: 40_000 }) }),
      fc.constant({ t: 'message' as const }),
      fc.constant({ t: 'cork' as const }),
      fc.constant({ t: 'uncork' as const }),
      fc.constant({ t: 'tick' as const }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 60 }), fc.boolean(), async (ops, slowReader) => {
        const pair = await memoryPair();
        const seen: string[] = [];
        let received = 0;
        const ended = new Promise<void>((resolve) =>
          pair.server.on('stream', (s: MuxStream) => {
            pair.server.accept(s);
            s.on('message', (m: { payload: { size: number } }) => seen.push(`message ${m.payload.size} at ${received}`));
            s.on('data', (c: Buffer) => {
              received += c.length;
              if (slowReader) {
                s.pause();
                setTimeout(() => s.resume(), 1);
              }
            });
            s.on('end', () => {
              seen.push(`end at ${received}`);
              resolve();
            });
          }),
        );
        const stream = await pair.agent.openStream('file.open', { path: '/a', direction: 'push' });
        const expected: string[] = [];
        let written = 0;
        let corked = 0;
        let issued = 0;
        let called = 0;
        for (const o of ops) {
          if (o.t === 'write') {
            written += o.n;
            issued++;
            stream.write(Buffer.alloc(o.n, 1), () => void called++);
          } else if (o.t === 'message') {
            stream.sendMessage('file.done', { size: written, sha256: '0'.repeat(64) });
            expected.push(`message ${written} at ${written}`);
          } else if (o.t === 'cork') {
            stream.cork();
            corked++;
          } else if (o.t === 'uncork' && corked > 0) {
            stream.uncork();
            corked--;
          } else if (o.t === 'tick') {
            await new Promise((r) => setImmediate(r));
          }
        }
        while (corked-- > 0) stream.uncork();
        stream.end();
        expected.push(`end at ${written}`);
        await ended;
        await new Promise((r) => setTimeout(r, 5));
        await pair.close();
        expect(seen).toEqual(expected);
        expect(called).toBe(issued);
      }),
      { numRuns: 150 },
    );
  });

  it('destroying a stream resets and releases it before its pending write callbacks run', async () => {
    const pair = await memoryPair();
    const peer = new Promise<MuxStream>((resolve) =>
      pair.server.on('stream', (s) => {
        pair.server.accept(s);
        resolve(s);
      }),
    );
    const stream = await pair.agent.openStream('file.open', { path: '/a', direction: 'push' });
    // More than the window: part of the write waits for credit, with its callback. The callback sees
    // the stream already released (an application may throw from it: nothing must depend on it).
    const atCallback: Array<{ code: string | undefined; streams: number }> = [];
    stream.write(Buffer.alloc(300 * 1024), (err?: Error | null) => {
      atCallback.push({ code: (err as { code?: string } | null | undefined)?.code, streams: pair.agent.streamCount });
    });
    const serverStream = await peer;
    await new Promise((r) => setTimeout(r, 20));
    stream.destroy();
    await new Promise((r) => setTimeout(r, 20));
    expect(atCallback).toEqual([{ code: 'ML_ERR_STREAM_CLOSED', streams: 0 }]);
    expect(serverStream.destroyed).toBe(true);
    await pair.close();
  });

  for (const withDefer of [true, false]) {
    it(`an async-iterating reader sees a message after the data sent before it (timers ${withDefer ? 'with' : 'without'} defer)`, async () => {
      const timers: Timers = { now: () => Date.now(), setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) };
      if (withDefer) timers.defer = (fn) => setImmediate(fn);
      const pair = await memoryPair({}, { timers });
      const events: string[] = [];
      const done = new Promise<void>((resolve) =>
        pair.server.on('stream', (s: MuxStream) => {
          pair.server.accept(s);
          s.on('message', () => events.push('message'));
          void (async () => {
            for await (const c of s) events.push(`data ${(c as Buffer).length}`);
            resolve();
          })();
        }),
      );
      const stream = await pair.agent.openStream('file.open', { path: '/a', direction: 'push' });
      stream.write(Buffer.alloc(5));
      stream.sendMessage('file.done', { size: 5, sha256: '0'.repeat(64) });
      setTimeout(() => stream.end(), 20);
      await done;
      await pair.close();
      expect(events).toEqual(['data 5', 'message']);
    });
  }

  it('custom timers without defer() still flow (credit then goes out in a microtask)', async () => {
    const timers: Timers = { now: () => Date.now(), setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) };
    const pair = await memoryPair({}, { timers });
    let got = 0;
    const done = new Promise<void>((resolve) =>
      pair.server.on('stream', (s) => {
        pair.server.accept(s);
        s.on('data', (c: Buffer) => (got += c.length));
        s.on('end', () => resolve());
      }),
    );
    const stream = await pair.agent.openStream('file.open', { path: '/a', direction: 'push' });
    stream.end(Buffer.alloc(600 * 1024));
    await done;
    expect(got).toBe(600 * 1024);
    expect(pair.server.state).toBe('open');
    await pair.close();
  });
});

describe('receive path', () => {
  /** A server session whose transport records what it sends; the test plays the agent by hand. */
  function handDrivenServer(): { server: Session; sent: Uint8Array[]; sentDataBytes: () => number; closes: number[] } {
    const sent: Uint8Array[] = [];
    const closes: number[] = [];
    const server = new Session({
      role: 'server',
      onHello: () => ({ nodeId: 'n', serverVersion: 's', heartbeatIntervalMs: 1000 }),
      transport: { send: (m, done) => { sent.push(Uint8Array.from(m)); done(); }, close: (code) => void closes.push(code) },
    });
    const sentDataBytes = (): number => {
      const decoder = new FrameDecoder();
      let n = 0;
      for (const m of sent) for (const f of decoder.push(m)) if (f.type === 0x0013) n += decodeBin(f.payload).byteLength;
      return n;
    };
    return { server, sent, sentDataBytes, closes };
  }

  it('stream.window grants credit in any valid MessagePack form, not only the one meshlink writes', async () => {
    const { server, sentDataBytes, closes } = handDrivenServer();
    server.on('stream', (stream) => {
      server.accept(stream);
      stream.write(Buffer.alloc(400 * 1024, 1));
    });
    server.receive(encodeMessage('hello', 0, { versions: [1], agentVersion: 'x' }));
    await new Promise((r) => setImmediate(r));
    expect(server.state).toBe('open');
    server.receive(encodeMessage('stream.open', 1, { kind: 'file.open', meta: { path: '/x', direction: 'pull' } }));
    await new Promise((r) => setImmediate(r));
    expect(sentDataBytes()).toBe(256 * 1024); // the initial window, then the stream waits
    // credit 65536 as a uint64, and then with an extra key: both valid, neither the fast path's form.
    const key = [0xa6, ...Buffer.from('credit')];
    server.receive(encodeFrame({ type: 0x0014, stream: 1, flags: 0 }, new Uint8Array([0x81, ...key, 0xcf, 0, 0, 0, 0, 0, 1, 0, 0])));
    server.receive(encodeFrame({ type: 0x0014, stream: 1, flags: 0 }, new Uint8Array([0x82, ...key, 0xcd, 0x80, 0x00, 0xa1, 0x78, 0xc0])));
    await new Promise((r) => setImmediate(r));
    expect(sentDataBytes()).toBe(256 * 1024 + 65536 + 32768);
    // Zero credit in the fast path's own form is still refused, by the generic path.
    server.receive(encodeFrame({ type: 0x0014, stream: 1, flags: 0 }, new Uint8Array([0x81, ...key, 0x00])));
    expect(server.state).toBe('closed');
    expect(closes).toEqual([4004]);
  });

  it('credit freed by messages read in one event-loop turn leaves in one message', async () => {
    const { server, sent } = handDrivenServer();
    const received: number[] = [];
    server.on('stream', (stream) => {
      server.accept(stream);
      stream.on('data', (c: Buffer) => received.push(c.length));
    });
    server.receive(encodeMessage('hello', 0, { versions: [1], agentVersion: 'x' }));
    await new Promise((r) => setImmediate(r));
    server.receive(encodeMessage('stream.open', 1, { kind: 'file.open', meta: { path: '/x', direction: 'push' } }));
    await new Promise((r) => setImmediate(r));
    sent.length = 0;
    // Four 64 KiB messages, each in its own callback of the same turn, as socket reads arrive:
    // half a window is consumed twice, so two credits are due.
    const data = encodeMessage('stream.data', 1, new Uint8Array(64 * 1024), { compress: false });
    await new Promise<void>((resolve) => {
      for (let i = 0; i < 4; i++) setImmediate(() => {
        server.receive(data);
        if (i === 3) resolve();
      });
    });
    await new Promise((r) => setImmediate(r));
    expect(received.reduce((a, b) => a + b, 0)).toBe(256 * 1024);
    const windowFramesPerMessage = sent.map((m) => new FrameDecoder().push(m).filter((f) => f.type === 0x0014).length).filter((n) => n > 0);
    expect(windowFramesPerMessage).toEqual([2]);
  });

  it('hands the application views of chunks that are most of their message, and copies of smaller ones', async () => {
    const pair = await memoryPair();
    const messages: ArrayBufferLike[] = [];
    const receive = pair.server.receive.bind(pair.server);
    pair.server.receive = (m: Uint8Array) => {
      messages.push(m.buffer);
      return receive(m);
    };
    const chunks: Buffer[][] = [[], []];
    pair.server.on('stream', (stream) => {
      pair.server.accept(stream);
      const mine = chunks[Number((stream.meta as { path: string }).path.slice(1))]!;
      stream.on('data', (c: Buffer) => mine.push(c));
    });
    const [a, b] = await Promise.all([0, 1].map((i) => pair.agent.openStream('file.open', { path: `/${i}`, direction: 'push' })));
    const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 20));
    messages.length = 0;
    a!.write(Buffer.alloc(3000, 0xa)); // alone in its message: a view
    await settle();
    expect(messages).toHaveLength(1);
    expect(chunks[0]![0]!.buffer).toBe(messages[0]);
    // 100 bytes next to 3000 of the other stream's in one message: a copy, so it cannot pin the message.
    a!.write(Buffer.alloc(3000, 0xa));
    b!.write(Buffer.alloc(100, 0xb));
    await settle();
    expect(messages).toHaveLength(2);
    expect(chunks[0]![1]!.buffer).toBe(messages[1]);
    expect(chunks[1]![0]!.equals(Buffer.alloc(100, 0xb))).toBe(true);
    expect(chunks[1]![0]!.buffer).not.toBe(messages[1]);
    await pair.close();
  });

  it("receive() never throws for the peer's input; an exception of the application's own 'close' listener reaches the caller after the session has closed", async () => {
    const pair = await memoryPair();
    const accepted: MuxStream[] = [];
    pair.server.on('stream', (s) => {
      pair.server.accept(s);
      accepted.push(s);
    });
    await pair.agent.openStream('file.open', { path: '/x', direction: 'push' });
    expect(accepted).toHaveLength(1);
    expect(() => pair.server.receive(new Uint8Array([0, 1, 2]))).not.toThrow(); // a truncated frame: 4003
    expect(pair.server.state).toBe('closed');

    const other = await memoryPair();
    other.server.on('stream', (s) => {
      other.server.accept(s);
      accepted.push(s);
    });
    await other.agent.openStream('file.open', { path: '/y', direction: 'push' });
    other.server.once('close', () => {
      throw new Error('bug in the application');
    });
    // Not swallowed: the application's bug surfaces where it happened, as with any EventEmitter...
    expect(() => other.server.receive(new Uint8Array([0, 1, 2]))).toThrow('bug in the application');
    // ...and only after the session has finished closing: state, streams, transport.
    expect(other.server.state).toBe('closed');
    expect(accepted[1]!.destroyed).toBe(true);
    expect(() => other.server.receive(new Uint8Array([0, 1, 2]))).not.toThrow();
    await Promise.all([pair.close(), other.close()]);
  });
});

describe('typed messages on a stream', () => {
  function bareStream(): MuxStream {
    const host: StreamHost = {
      markReady: () => {},
      sendPriority: () => {},
      sendWindowUpdate: () => {},
      release: () => {},
      maxDataFrame: 64 * 1024,
      receiveWindow: 256 * 1024,
      maxReceiveWindow: 256 * 1024,
      messagesUseCredit: false,
      reserveWindow: () => false,
      releaseWindow: () => {},
      noteStall: () => {},
      now: () => 0,
      preciseNow: () => 0,
      rttMs: null,
      probeRtt: () => {},
      defer: (fn) => setImmediate(fn),
    };
    const stream = new MuxStream(host, { id: 1, kind: 'action.request', meta: {}, local: true });
    stream._opened();
    return stream;
  }

  it('are held until the application listens, then delivered in order, also ahead of one that arrives meanwhile', async () => {
    const stream = bareStream();
    stream._receiveMessage({ name: 'action.ack', payload: 1 });
    stream._receiveMessage({ name: 'action.output', payload: 2 });
    const got: unknown[] = [];
    stream.on('message', (m: { payload: unknown }) => got.push(m.payload));
    stream._receiveMessage({ name: 'action.result', payload: 3 }); // before the held ones are flushed
    expect(got).toEqual([]);
    await Promise.resolve();
    expect(got).toEqual([1, 2, 3]);
    stream._receiveMessage({ name: 'action.result', payload: 4 });
    expect(got).toEqual([1, 2, 3, 4]);
  });

  it('held ones go out one at a time: a once() listener takes one, and a listener that reads cannot reorder them', async () => {
    const stream = bareStream();
    stream._receiveMessage({ name: 'action.output', payload: 1 });
    stream._receiveMessage({ name: 'action.output', payload: 2 });
    const got: unknown[] = [];
    stream.once('message', (m: { payload: unknown }) => got.push(m.payload));
    await Promise.resolve();
    expect(got).toEqual([1]);
    stream._receiveData(Buffer.alloc(10), false);
    stream._receiveMessage({ name: 'action.result', payload: 3 }); // due once the 10 bytes are read
    stream.on('message', (m: { payload: unknown }) => {
      got.push(m.payload);
      if (m.payload === 2) stream.read();
    });
    // Wait for them by event-loop turns (each runs every tick and microtask queued before it; bounded),
    // not by a fixed 5 ms timer, which flaked under load.
    for (let turns = 0; turns < 1_000 && got.length < 3; turns++) await new Promise((r) => setImmediate(r));
    expect(got).toEqual([1, 2, 3]);
  });

  it('a consumer that takes chunks from read() (async iteration) sees a message after the data sent before it, and before the end', async () => {
    const stream = bareStream();
    const events: string[] = [];
    stream.on('message', (m: { payload: unknown }) => events.push(`message ${String(m.payload)}`));
    stream._receiveData(Buffer.alloc(3), false);
    stream._receiveMessage({ name: 'action.output', payload: 'after 3' });
    stream._receiveData(Buffer.alloc(4), false);
    stream._receiveMessage({ name: 'action.result', payload: 'after 7' });
    stream._receiveEnd();
    for await (const chunk of stream) {
      events.push(`data ${(chunk as Buffer).length}`);
      await new Promise((r) => setImmediate(r)); // the consumer takes its time
    }
    events.push('end');
    // Both chunks may come out of read() together; the messages never come before their data.
    expect(events.filter((e) => e !== 'end').join(' | ')).toMatch(/^data (3 \| message after 3 \| data 4|7 \| message after 3) \| message after 7$/);
    expect(events.at(-1)).toBe('end');
  });

  it('nothing is delivered after the stream is destroyed: not a deferred message, not a held one', async () => {
    const events: string[] = [];
    const broken = bareStream();
    broken.on('message', () => events.push('message'));
    broken.on('close', () => events.push('close'));
    broken._receiveData(Buffer.alloc(3), false);
    broken._receiveMessage({ name: 'action.output', payload: 1 });
    for await (const chunk of broken) {
      events.push(`data ${(chunk as Buffer).length}`);
      break; // destroys the stream
    }
    const readThenDestroyed = bareStream();
    readThenDestroyed.on('message', () => events.push('message 2'));
    readThenDestroyed._receiveData(Buffer.alloc(3), false);
    readThenDestroyed._receiveMessage({ name: 'action.output', payload: 2 });
    readThenDestroyed.read();
    readThenDestroyed.destroy();
    const held = bareStream();
    held._receiveMessage({ name: 'action.output', payload: 3 });
    held.on('message', () => events.push('message 3'));
    held.destroy();
    await new Promise((r) => setTimeout(r, 10));
    expect(events).toEqual(['data 3', 'close']);
  });

  it('held without a listener are bounded: the 1025th resets the stream', () => {
    const stream = bareStream();
    for (let i = 0; i < 1024; i++) stream._receiveMessage({ name: 'action.output', payload: i });
    expect(stream.destroyed).toBe(false);
    stream._receiveMessage({ name: 'action.output', payload: 1024 });
    expect(stream.destroyed).toBe(true);
    expect((stream.errored as { code?: string }).code).toBe('ML_ERR_QUEUE_OVERFLOW');
  });
});
