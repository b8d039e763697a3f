import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { FrameDecoder, decodeMessage } from '../../src/protocol/decoder.js';
import { decodeFrame } from '../../src/protocol/codec.js';
import { DEFAULT_MAX_FRAME_SIZE } from '../../src/protocol/frame.js';
import { MESSAGE_KINDS } from '../../src/protocol/registry.js';

/** docs/PROTOCOL.md must stay exact: its dumps decode, its tables match the code. */
const doc = readFileSync('docs/PROTOCOL.md', 'utf8');

function dumps(): Buffer[] {
  const section = doc.slice(doc.indexOf('## 10. Example frames'), doc.indexOf('## 11.'));
  return [...section.matchAll(/```\n([0-9a-f \n]+)```/g)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'hex'));
}

describe('docs/PROTOCOL.md', () => {
  it('every hex dump decodes to what the document says', () => {
    const frames = dumps().map((bytes) => {
      const decoded = decodeMessage(bytes, new FrameDecoder());
      expect(decoded).toHaveLength(1);
      return decodeFrame(decoded[0]!, DEFAULT_MAX_FRAME_SIZE);
    });
    expect(frames.map((f) => [f.kind.name, f.stream, f.flags])).toEqual([
      ['hello', 0, 0],
      ['heartbeat', 0, 0],
      ['stream.open', 1, 0],
      ['stream.data', 1, 2],
      ['stream.window', 2, 0],
    ]);
    expect(frames[0]!.payload).toEqual({ versions: [1], agentVersion: '0.1.0', hostname: 'web-1' });
    expect(frames[1]!.payload).toEqual({ seq: 1, ts: 1767225600000 });
    expect(frames[2]!.payload).toEqual({ kind: 'file.open', meta: { path: '/srv/a', direction: 'push' } });
    expect(Buffer.from(frames[3]!.payload as Uint8Array).toString()).toBe('hello');
    expect(frames[4]!.payload).toEqual({ credit: 65536 });
  });

  it('lists every message kind with its code, direction and scope', () => {
    const dir = { 'agent-to-server': 'A→S', 'server-to-agent': 'S→A', both: 'both' } as const;
    const rows = [...doc.matchAll(/^\| `(0x[0-9a-f]{4})` \| `([a-z.]+)` \| (A→S|S→A|both) \| (control|stream|any) \|/gm)].map((m) => m.slice(1, 5));
    expect(rows).toEqual(MESSAGE_KINDS.map((k) => [`0x${k.code.toString(16).padStart(4, '0')}`, k.name, dir[k.direction], k.scope]));
  });
});
