import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { FrameDecoder, decodeMessage } from '../../src/protocol/decoder.js';
import { decodeFrame } from '../../src/protocol/codec.js';
import { DEFAULT_MAX_FRAME_SIZE } from '../../src/protocol/frame.js';
import { MESSAGE_KINDS, describeRegistry, type MessageKind } from '../../src/protocol/registry.js';

/** docs/PROTOCOL.md must stay exact: its dumps decode, its tables match the code. */
const doc = readFileSync('docs/PROTOCOL.md', 'utf8');

function dumps(): Buffer[] {
  const section = doc.slice(doc.indexOf('## 10. Example frames'), doc.indexOf('## 11.'));
  return [...section.matchAll(/```\n([0-9a-f \n]+)```/g)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'hex'));
}

describe('docs/PROTOCOL.md', () => {
  it('the JSON Schemas agree with §3.1: unknown keys are ignored, so no schema forbids additional properties', () => {
    const text = JSON.stringify(describeRegistry().map((k) => k.schema));
    expect(text).not.toContain('"additionalProperties":false');
    expect(doc).toContain('Receivers ignore map');
  });

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

  describe('states what the registry declares', () => {
    const kinds = MESSAGE_KINDS as readonly MessageKind[];
    const names = (pred: (k: MessageKind) => boolean): string[] => kinds.filter(pred).map((k) => k.name).sort();
    const quoted = (text: string): string[] => [...text.matchAll(/`([a-z]+(?:\.[a-z]+)*)`/g)].map((m) => m[1]!);
    const section = (from: string, to: string): string => {
      const start = doc.indexOf(from);
      expect(start).toBeGreaterThanOrEqual(0);
      return doc.slice(start, doc.indexOf(to, start));
    };

    it('END_STREAM: the kinds §2.1 allows it on', () => {
      const row = /^\| 1 \| `0x02` \| `END_STREAM` \|.*valid only on (.*?),/m.exec(doc);
      expect(row).not.toBeNull();
      expect(quoted(row![1]!).sort()).toEqual(names((k) => k.endStream));
    });

    it('bytes payloads: the kinds of §3.2 and the `bin` (raw bytes) rows of §4', () => {
      const sentence = /### 3\.2 Byte payloads\n\n(.*?) carry a MessagePack \*\*bin\*\*/s.exec(doc);
      expect(sentence).not.toBeNull();
      expect(quoted(sentence![1]!).sort()).toEqual(names((k) => k.payload === 'bytes'));
      const rows = [...doc.matchAll(/^\| `0x[0-9a-f]{4}` \| `([a-z.]+)` \| [^|]+ \| [a-z]+ \| `bin` \(raw bytes\) \|$/gm)].map((m) => m[1]!);
      expect(rows.sort()).toEqual(names((k) => k.payload === 'bytes'));
    });

    it('requests and their responses: §8', () => {
      const line = /Requests in version 1: (.*?)\.\n/.exec(doc);
      expect(line).not.toBeNull();
      const pairs = [...line![1]!.matchAll(/`([a-z.]+)` → `([a-z.]+)`/g)].map((m) => [m[1], m[2]]);
      expect(pairs).toEqual(kinds.filter((k) => k.response).map((k) => [k.name, k.response]));
    });

    it('the multiplexer’s own frames and the kinds any stream may carry: §6.3', () => {
      const text = section('### 6.3 Messages on a stream', '### 6.3.1');
      const own = /multiplexer's own frames \(([^)]*)\)/.exec(text);
      expect(own).not.toBeNull();
      expect(quoted(own![1]!).sort()).toEqual(names((k) => k.onStream === 'mux'));
      const anyStream = [...text.matchAll(/`([a-z.]+)` \(scope `any`\) may travel on any stream/g)].map((m) => m[1]!);
      expect(anyStream.sort()).toEqual(names((k) => k.onStream === 'any'));
    });

    it('each conversation and the typed messages it carries: the table of §6.3.1', () => {
      const text = section('### 6.3.1', '### 6.4');
      const rows = [...text.matchAll(/^\| `([a-z.]+)`[^|]* \| (server|agent|either) \| (.*) \| (.*) \|$/gm)];
      expect(rows.length).toBeGreaterThan(0);
      const carried = new Map<string, { byOpener: Set<string>; byAcceptor: Set<string> }>();
      const isMessage = (n: string): boolean => kinds.some((k) => k.name === n && k.onStream !== 'mux');
      for (const [, opener, , toAcceptor, toOpener] of rows) {
        const entry = carried.get(opener!) ?? { byOpener: new Set(), byAcceptor: new Set() };
        for (const n of quoted(toAcceptor!)) if (isMessage(n)) entry.byOpener.add(n);
        for (const n of quoted(toOpener!)) if (isMessage(n)) entry.byAcceptor.add(n);
        carried.set(opener!, entry);
      }
      expect([...carried.keys()].sort()).toEqual(names((k) => k.onStream === 'opens'));
      for (const [opener, { byOpener, byAcceptor }] of carried) {
        const declared = names((k) => Array.isArray(k.onStream) && k.onStream.includes(opener));
        expect([...new Set([...byOpener, ...byAcceptor])].sort(), opener).toEqual(declared);
        // Who sends each message in the table agrees with the kind's direction (the opening kinds
        // of version 1 are opened by the server).
        const dirOf = (n: string): string => kinds.find((k) => k.name === n)!.direction;
        for (const n of byOpener) expect(['server-to-agent', 'both'], `${opener}: ${n}`).toContain(dirOf(n));
        for (const n of byAcceptor) expect(['agent-to-server', 'both'], `${opener}: ${n}`).toContain(dirOf(n));
      }
    });
  });
});
