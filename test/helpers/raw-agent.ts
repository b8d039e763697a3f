import type WebSocket from 'ws';
import { decodeFrame, encodeMessage, type DecodedMessage } from '../../src/protocol/codec.js';
import { FrameDecoder } from '../../src/protocol/decoder.js';
import { encodeFrame, Flags } from '../../src/protocol/frame.js';
import type { InputOf, KindName } from '../../src/protocol/registry.js';
import { requireKind } from '../../src/protocol/registry.js';
import { dialConnect, enrollNode, type TestServer } from '../server/helpers.js';

/**
 * An agent written against docs/PROTOCOL.md with nothing of the reference session: it speaks raw
 * frames over the real mTLS WebSocket, so a test chooses exactly which frames share one WebSocket
 * message (the coalescing a second implementation may do) and sees the server's frames and close.
 */
export interface RawAgent {
  ws: WebSocket;
  nodeId: string;
  /** Every frame the server sent, decoded, in order. */
  frames: DecodedMessage[];
  /** Waits for the first frame (from the start) that `match` accepts. */
  waitFor(match: (m: DecodedMessage) => boolean, timeoutMs?: number): Promise<DecodedMessage>;
  /** Sends one WebSocket message made of these already encoded frames, back to back. */
  sendMessage(...frames: Uint8Array[]): void;
  /** The close code and reason the server closed with. */
  closed: Promise<{ code: number; reason: string }>;
}

/** A frame of kind `name` (encoded by the reference codec, so its payload is valid). */
export function frame<N extends KindName>(name: N, stream: number, payload: InputOf<N>, endStream = false): Uint8Array {
  return encodeMessage(name, stream, payload, { endStream, compress: false });
}

/** A stream.data frame with `data`, optionally END_STREAM. */
export function dataFrame(stream: number, data: Uint8Array, endStream = false): Uint8Array {
  return frame('stream.data', stream, Uint8Array.from(data), endStream);
}

/** A frame with a hand-made payload (raw bytes, optionally flagged COMPRESSED). */
export function rawFrame(name: KindName, stream: number, payload: Uint8Array, flags = 0): Uint8Array {
  return encodeFrame({ type: requireKind(name).code, stream, flags }, payload);
}

export { Flags };

/** Enrolls a node on `ts` and connects it as a raw agent that has completed the handshake. */
export async function connectRawAgent(ts: TestServer, hostname: string): Promise<RawAgent> {
  const node = await enrollNode(ts, hostname);
  const out = await dialConnect(ts.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
  if (out.kind !== 'open') throw new Error(`connect failed: ${JSON.stringify(out)}`);
  const ws = out.ws;
  const decoder = new FrameDecoder();
  const frames: DecodedMessage[] = [];
  const waiters: Array<() => void> = [];
  ws.on('message', (data: Buffer) => {
    for (const f of decoder.push(new Uint8Array(data))) frames.push(decodeFrame(f, 1024 * 1024));
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') })));
  const agent: RawAgent = {
    ws,
    nodeId: node.nodeId,
    frames,
    waitFor(match, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no matching frame within ${timeoutMs} ms; got ${frames.map((f) => f.name).join(', ')}`)), timeoutMs);
        const check = (): void => {
          const found = frames.find(match);
          if (found) {
            clearTimeout(timer);
            resolve(found);
          } else waiters.push(check);
        };
        check();
      });
    },
    sendMessage(...parts) {
      ws.send(Buffer.concat(parts), { binary: true });
    },
    closed,
  };
  agent.sendMessage(frame('hello', 0, { versions: [1], agentVersion: 'raw-test', hostname }));
  await agent.waitFor((m) => m.name === 'welcome');
  return agent;
}
