import { deflateRawSync } from 'node:zlib';
import { Encoder } from '@msgpack/msgpack';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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

  it('many messages each within the per-message budget hit the per-second budget: 4024', async () => {
    const agent = await connectRawAgent(ts, 'bomber-2');
    const one = bombFrame();
    const message = Buffer.concat(Array.from({ length: 6 }, () => one)); // ≈ 5.4 MiB of decoding each
    for (let i = 0; i < 12; i++) agent.sendMessage(message);
    expect(await agent.closed).toEqual({ code: 4024, reason: 'ML_ERR_DECODE_BUDGET' });
  });
});
