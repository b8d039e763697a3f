import { describe, expect, it } from 'vitest';
import { MESSAGE_KINDS } from '../../src/protocol/registry.js';
import { cli } from './harness.js';
import { ERRORS } from '../../src/errors.js';

describe('meshlink protocol (CLI)', () => {
  it('messages --json prints every kind with its code, direction, scope and a JSON Schema', async () => {
    const r = await cli(['protocol', 'messages', '--json']);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { versions: number[]; messages: Array<{ code: number; name: string; direction: string; scope: string; schema: Record<string, unknown> }> };
    expect(out.versions).toEqual([1, 2]);
    expect(out.messages.map((m) => [m.code, m.name, m.direction, m.scope])).toEqual(MESSAGE_KINDS.map((k) => [k.code, k.name, k.direction, k.scope]));
    for (const m of out.messages) expect(m.schema.$schema).toMatch(/json-schema\.org/);
    const heartbeat = out.messages.find((m) => m.name === 'heartbeat')!;
    expect(heartbeat.schema).toMatchObject({ type: 'object', required: ['seq', 'ts'] });
    const data = out.messages.find((m) => m.name === 'stream.data')!;
    expect(data.schema).toMatchObject({ contentEncoding: 'msgpack-bin' });
  });

  it('messages --json carries the declarations: response, payload encoding, END_STREAM, part on a stream', async () => {
    const r = await cli(['protocol', 'messages', '--json']);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { messages: Array<{ name: string; response?: string; payload: string; endStream: boolean; onStream?: unknown }> };
    expect(out.messages.map((m) => [m.name, m.response, m.payload, m.endStream, m.onStream])).toEqual(
      MESSAGE_KINDS.map((k) => [k.name, 'response' in k ? k.response : undefined, k.payload, k.endStream, 'onStream' in k ? k.onStream : undefined]),
    );
    const resize = out.messages.find((m) => m.name === 'exec.resize')!;
    expect(resize.onStream).toEqual(['exec.open']);
    expect(out.messages.find((m) => m.name === 'exec.stderr')!.payload).toBe('bytes');
  });

  it('errors --json prints the error table', async () => {
    const r = await cli(['protocol', 'errors', '--json']);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as Array<{ code: string }>).map((e) => e.code)).toEqual(Object.keys(ERRORS));
  });
});
