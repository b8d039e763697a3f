/**
 * The pieces bench/mux.ts and bench/mux-cpu.ts share: a client connection to bench/mux-peer.ts as
 * the agent makes it (mutual TLS; a zero masking key when asked), and the raw ws workload.
 */
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { zeroMaskingKey } from '../../src/net/ws-mask.js';
import { BENCH_HOST, benchServerIdentity } from './bench-host.js';
import type { BenchPki } from './pki.js';

const MIB = 1024 * 1024;

export interface Peer {
  port: number;
  pki: BenchPki;
}

export function connect(peer: Peer, path: string, zeroMask: boolean): Promise<WebSocket> {
  const ws = new WebSocket(`wss://${BENCH_HOST}:${peer.port}${path}`, {
    // Passed through to tls.connect (ws's own typing of this option is not tls's).
    ...({ checkServerIdentity: benchServerIdentity } as object),
    ca: peer.pki.ca,
    cert: peer.pki.clientCert,
    key: peer.pki.clientKey,
    perMessageDeflate: false,
    maxPayload: 64 * MIB,
    ...(zeroMask ? { generateMask: zeroMaskingKey } : {}),
  });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

/** Raw ws: `total` bytes in messages of `size`, with the send callback as backpressure. MB/s. */
export async function rawWs(peer: Peer, size: number, total: number, zeroMask = false): Promise<number> {
  const ws = await connect(peer, `/raw?total=${total}`, zeroMask);
  const payload = Buffer.alloc(size, 7);
  const done = once(ws, 'message');
  const start = performance.now();
  let sent = 0;
  let inflight = 0;
  const highWater = 1 * MIB;
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      while (sent < total && inflight < highWater) {
        inflight += size;
        sent += size;
        ws.send(payload, { binary: true }, () => {
          inflight -= size;
          if (sent < total) pump();
          else if (inflight === 0) resolve();
        });
      }
    };
    pump();
  });
  await done;
  const secs = (performance.now() - start) / 1000;
  ws.close();
  return total / MIB / secs;
}
