/**
 * Worker thread for bench/enroll.ts: keeps a few agent connections open, each with a real protocol
 * session (hello/welcome, so the server's session host keeps it), and every 50 ms sends a WebSocket
 * ping and a protocol `heartbeat`, timing the pong and the `heartbeat.ack`. Runs on its own event loop
 * so the load generator does not inflate the round trips.
 * Messages: {type:'start'} → begin recording; {type:'stop'} → reply {type:'rtts', ping, heartbeat}.
 */
import { parentPort, workerData } from 'node:worker_threads';
import WebSocket from 'ws';
import { attachSession } from '../src/net/ws-session.js';

interface PingerData {
  url: string;
  ca: string;
  clients: { certPem: string; keyPem: string }[];
  everyMs: number;
}

const data = workerData as PingerData;
const port = parentPort!;
let recording = false;
let pingRtts: number[] = [];
let heartbeatRtts: number[] = [];

const sockets = await Promise.all(
  data.clients.map(async (c, i) => {
    const ws = await new Promise<WebSocket>((resolve, reject) => {
      const w = new WebSocket(`${data.url.replace('https:', 'wss:')}/v1/connect`, { ca: data.ca, cert: c.certPem, key: c.keyPem, perMessageDeflate: false });
      w.once('open', () => resolve(w));
      w.once('error', reject);
    });
    const session = attachSession(ws, { role: 'agent' });
    await session.handshake({ agentVersion: 'bench', hostname: `bench-pinger-${i}` });
    return { ws, session };
  }),
);

let seq = 0;
const timers = sockets.map(({ ws, session }) => {
  let pingSentAt = 0;
  let pingOutstanding = false;
  ws.on('pong', () => {
    if (recording && pingOutstanding) pingRtts.push(performance.now() - pingSentAt);
    pingOutstanding = false;
  });
  const sentAt = new Map<number, number>();
  session.on('message', (msg) => {
    if (msg.name !== 'heartbeat.ack') return;
    const s = (msg.payload as { seq: number }).seq;
    const t = sentAt.get(s);
    sentAt.delete(s);
    if (recording && t !== undefined) heartbeatRtts.push(performance.now() - t);
  });
  return setInterval(() => {
    if (!pingOutstanding) {
      // one ws ping in flight per socket
      pingOutstanding = true;
      pingSentAt = performance.now();
      ws.ping();
    }
    if (session.state === 'open' && sentAt.size < 100) {
      const s = ++seq;
      sentAt.set(s, performance.now());
      session.send('heartbeat', { seq: s, ts: Date.now() });
    }
  }, data.everyMs);
});

port.on('message', (msg: { type: string }) => {
  if (msg.type === 'start') {
    pingRtts = [];
    heartbeatRtts = [];
    recording = true;
  } else if (msg.type === 'stop') {
    recording = false;
    port.postMessage({ type: 'rtts', ping: pingRtts, heartbeat: heartbeatRtts });
  } else if (msg.type === 'close') {
    for (const t of timers) clearInterval(t);
    for (const { ws } of sockets) ws.terminate();
    port.close();
  }
});
port.postMessage({ type: 'ready' });
