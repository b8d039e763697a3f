import { deflateRawSync } from 'node:zlib';
import { Encoder } from '@msgpack/msgpack';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecodeBudget } from '../../src/protocol/decode-budget.js';
import { Flags, connectRawAgent, rawFrame } from '../helpers/raw-agent.js';
import { httpsRequest, startTestServer, type TestServer } from './helpers.js';

/**
 * Issue 17 item 3, reproduced on the real server: one WebSocket message of about 720 KB holding 200
 * compressed frames, each inflating to a valid logs.batch of about 0.9 MiB (180 MiB of decoding in
 * all). The session must be closed with 4024 ML_ERR_DECODE_BUDGET (after at most the per-message
 * budget of decoding), and a request to the server made while it is worked through must be answered.
 */

let ts: TestServer;
beforeAll(async () => {
  ts = await startTestServer();
});
afterAll(async () => {
  await ts.stop();
});

/** One logs.batch frame whose MessagePack payload is about 0.9 MiB and deflates to a few KB. */
function bombFrame(): Uint8Array {
  const records = Array.from({ length: 900 }, (_, i) => ({ ts: 1_767_225_600_000 + i, level: 'warn' as const, msg: 'x'.repeat(1000) }));
  const body = new Encoder().encode({ records });
  return rawFrame('logs.batch', 0, deflateRawSync(body, { level: 9 }), Flags.COMPRESSED);
}

describe('decode work is bounded per message and per session', () => {
  it('a message of 200 compressed 0.9 MiB logs.batch frames closes the session with 4024, and /healthz is answered meanwhile', async () => {
    const agent = await connectRawAgent(ts, 'bomber');
    const one = bombFrame();
    const message = Buffer.concat(Array.from({ length: 200 }, () => one));
    expect(message.byteLength).toBeLessThan(1024 * 1024);
    agent.sendMessage(message);
    const health = httpsRequest(`${ts.url}/healthz`, { ca: ts.server.caCertPem });
    const closed = await agent.closed;
    expect(closed).toEqual({ code: 4024, reason: 'ML_ERR_DECODE_BUDGET' });
    // The error frame came first (§9).
    expect(agent.frames.some((f) => f.name === 'error' && (f.payload as { code: string }).code === 'ML_ERR_DECODE_BUDGET')).toBe(true);
    expect((await health).status).toBe(200);
  });

  it('the per-session budget: a burst, then the refill rate (pure logic, injected clock)', () => {
    const MiB = 1024 * 1024;
    const budget = new DecodeBudget({ perMessage: 8 * MiB, perSecond: 16 * MiB, burst: 32 * MiB }, 0);
    // 32 MiB at once, in messages within the per-message cap.
    for (let i = 0; i < 4; i++) budget.charge(8 * MiB, 8 * MiB, 0);
    expect(() => budget.charge(1, 1, 0)).toThrow(expect.objectContaining({ code: 'ML_ERR_DECODE_BUDGET' }));
    // Half a second refills 8 MiB, and no more.
    const later = new DecodeBudget({ perMessage: 8 * MiB, perSecond: 16 * MiB, burst: 32 * MiB }, 0);
    later.charge(32 * MiB, 1, 0);
    later.charge(8 * MiB, 8 * MiB, 500);
    expect(() => later.charge(MiB, MiB, 500)).toThrow(expect.objectContaining({ code: 'ML_ERR_DECODE_BUDGET' }));
    // Past the per-message cap whatever the bucket holds.
    expect(() => new DecodeBudget({ perMessage: 8 * MiB, perSecond: 16 * MiB, burst: 32 * MiB }, 0).charge(1, 8 * MiB + 1, 0)).toThrow(expect.objectContaining({ code: 'ML_ERR_DECODE_BUDGET' }));
  });
});

describe('closes for the certificate follow §9: an error frame first, the code as the close reason', () => {
  it('removal: error ML_ERR_CERT_REVOKED, then close 4401 with reason ML_ERR_CERT_REVOKED', async () => {
    const { removeNode } = await import('../../src/server/nodes.js');
    const agent = await connectRawAgent(ts, 'to-remove');
    await removeNode(ts.server.store, agent.nodeId, ts.server.live);
    expect(await agent.closed).toEqual({ code: 4401, reason: 'ML_ERR_CERT_REVOKED' });
    expect(agent.frames.some((f) => f.name === 'error' && (f.payload as { code: string }).code === 'ML_ERR_CERT_REVOKED')).toBe(true);
  });
});
