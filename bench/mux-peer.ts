/**
 * The receiving side of bench/mux.ts, in its own process so sender and receiver each get a core.
 * Serves wss with mutual TLS on 127.0.0.1:
 *   /raw?total=N  counts N bytes of raw WebSocket messages, then answers "done".
 *   /mux          a meshlink server session; every stream is drained, and when it ends the peer
 *                 writes back the byte count and ends its side; a stream opened with the path
 *                 `/echo` gets every chunk written back instead (bench/mux-compare.ts's latency).
 *   /mux?stamp=1   the same, but an `/echo` stream answers each chunk with 64 bytes: the wall clock
 *                 (float64 ms) when the stream delivered it, and when ws delivered the WebSocket
 *                 message that held it (bench/mux-echo-path.ts; requests are 64 bytes of 0x01).
 */
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { attachSession } from '../src/net/ws-session.js';
import { BENCH_LISTEN } from './lib/bench-host.js';
import { makePki } from './lib/pki.js';

const pki = makePki(process.argv[2]);
const ECHO_REQUEST = Buffer.alloc(64, 1);
const https = createServer({ key: pki.serverKey, cert: pki.serverCert, ca: pki.ca, requestCert: true, rejectUnauthorized: true });
const wss = new WebSocketServer({ server: https, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });

wss.on('connection', (ws, req) => {
  const url = new URL(req.url ?? '/', 'https://x');
  if (url.pathname === '/raw') {
    const total = Number(url.searchParams.get('total'));
    let got = 0;
    ws.on('message', (data: Buffer) => {
      got += data.length;
      if (got >= total) ws.send('done');
    });
    return;
  }
  const stamp = url.searchParams.has('stamp');
  const wallNow = (): number => performance.timeOrigin + performance.now();
  let messageAt = 0;
  // Ahead of the session's own listener: the time ws handed over the message holding the request.
  if (stamp) ws.on('message', (data: Buffer) => void (data.indexOf(ECHO_REQUEST) >= 0 && (messageAt = wallNow())));
  const session = attachSession(ws, {
    role: 'server',
    onHello: () => ({ nodeId: 'bench', serverVersion: 'bench', heartbeatIntervalMs: 15_000 }),
    receiveWindow: Number(url.searchParams.get('window') ?? 256 * 1024),
    ...(url.searchParams.has('maxWindow') ? { maxReceiveWindow: Number(url.searchParams.get('maxWindow')) } : {}),
  });
  session.on('stream', (stream) => {
    session.accept(stream);
    if ((stream.meta as { path?: string }).path === '/echo') {
      stream.on('data', (c: Buffer) => {
        if (!stamp) return void stream.write(c);
        const answer = Buffer.alloc(64);
        answer.writeDoubleLE(wallNow(), 0);
        answer.writeDoubleLE(messageAt, 8);
        stream.write(answer);
      });
      stream.on('end', () => stream.end());
      return;
    }
    let n = 0;
    stream.on('data', (c: Buffer) => {
      n += c.length;
    });
    stream.on('end', () => stream.end(Buffer.from(String(n))));
  });
});

https.listen(0, BENCH_LISTEN, () => {
  process.stdout.write(`${(https.address() as AddressInfo).port}\n`);
});
process.on('disconnect', () => process.exit(0));
// bench/mux-cpu.ts asks for this process's CPU time (µs) before and after each run.
process.on('message', () => {
  const c = process.cpuUsage();
  process.send!({ cpuMicros: c.user + c.system });
});
