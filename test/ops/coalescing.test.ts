import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runTunnel } from '../../src/admin-api/tunnel-client.js';
import { MeshlinkError } from '../../src/errors.js';
import { INITIAL_WINDOW } from '../../src/protocol/stream.js';
import { connectRawAgent, dataFrame, frame, type RawAgent } from '../helpers/raw-agent.js';
import { startTestServer, type TestServer } from '../server/helpers.js';

/**
 * PROTOCOL.md §1: a WebSocket message carries one or more whole frames, and a second implementation
 * may put the agent's stream.accept and whatever ends or breaks the stream into one message. Each
 * case below does that with a raw agent on the real server, and the operator's command must end with
 * the error that fits (it hung forever before: the stream failed before the relay listened to it).
 */

let ts: TestServer;
beforeAll(async () => {
  ts = await startTestServer();
});
afterAll(async () => {
  await ts.stop();
});

/** Runs an action on `agent` and answers its stream.open with `answer(streamId)` in one message. */
async function actionAnswered(agent: RawAgent, answer: (id: number) => Uint8Array[]): Promise<unknown> {
  const op = runTunnel(ts.server.adminSocketPath, { op: 'action', node: agent.nodeId, actor: 'tester', action: 'diagnostics' });
  const open = await agent.waitFor((m) => m.name === 'stream.open');
  agent.sendMessage(...answer(open.stream));
  // A bounded wait instead of a hang: the command must settle by itself long before this.
  const hung = new Promise((_, reject) => setTimeout(() => reject(new Error('the operator command did not end')), 15_000).unref());
  return Promise.race([op.then(() => null, (err: unknown) => err), hung]);
}

describe('an operation ends with the right error whatever the coalescing', () => {
  it('stream.accept + stream.reset in one message: the reset code reaches the operator', async () => {
    const agent = await connectRawAgent(ts, 'coalesce-reset');
    const err = await actionAnswered(agent, (id) => [frame('stream.accept', id, {}), frame('stream.reset', id, { code: 'ML_ERR_OPS_IO', message: 'disk gone' })]);
    expect(err).toBeInstanceOf(MeshlinkError);
    expect((err as MeshlinkError).code).toBe('ML_ERR_OPS_IO');
    agent.ws.close();
  });

  it('stream.accept + data beyond the window in one message: ML_ERR_FLOW_CONTROL, the session closes with 4020', async () => {
    const agent = await connectRawAgent(ts, 'coalesce-window');
    const chunk = new Uint8Array(64 * 1024);
    const frames = (id: number): Uint8Array[] => [frame('stream.accept', id, {}), ...Array.from({ length: INITIAL_WINDOW / chunk.length + 1 }, () => dataFrame(id, chunk))];
    const err = await actionAnswered(agent, frames);
    expect((err as MeshlinkError).code).toBe('ML_ERR_FLOW_CONTROL');
    expect((await agent.closed).code).toBe(4020);
  });

  it('stream.accept + data after END_STREAM in one message: ML_ERR_STREAM_ID, the session closes with 4021', async () => {
    const agent = await connectRawAgent(ts, 'coalesce-end');
    const err = await actionAnswered(agent, (id) => [frame('stream.accept', id, {}), dataFrame(id, new Uint8Array([1]), true), dataFrame(id, new Uint8Array([2]))]);
    expect((err as MeshlinkError).code).toBe('ML_ERR_STREAM_ID');
    expect((await agent.closed).code).toBe(4021);
  });

  it('stream.accept + output + result + END_STREAM in one message: the operator gets the result', async () => {
    const agent = await connectRawAgent(ts, 'coalesce-ok');
    let output = '';
    const op = runTunnel(ts.server.adminSocketPath, { op: 'action', node: agent.nodeId, actor: 'tester', action: 'diagnostics' }, { onData: (c) => void (output += c.toString()) });
    const open = await agent.waitFor((m) => m.name === 'stream.open');
    const id = open.stream;
    agent.sendMessage(
      frame('stream.accept', id, {}),
      frame('action.ack', id, { startedAt: Date.now() }),
      dataFrame(id, Buffer.from('all good')),
      frame('action.result', id, { exitCode: 0, durationMs: 1, truncated: false }),
      frame('stream.close', id, {}, true),
    );
    const final = await op;
    expect(final).toMatchObject({ type: 'result', exitCode: 0 });
    expect(output).toBe('all good');
    agent.ws.close();
  });
});
