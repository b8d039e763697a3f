/**
 * Worker thread for bench/enroll.ts: keeps a few agent WebSockets open and pings each every 50 ms
 * (ws ping/pong), on its own event loop so the load generator's work does not inflate the measured
 * round trips. Messages: {type:'start'} → begin recording; {type:'stop'} → reply {type:'rtts', rtts}.
 */
import { parentPort, workerData } from 'node:worker_threads';
import WebSocket from 'ws';

interface PingerData {
  url: string;
  ca: string;
  clients: { certPem: string; keyPem: string }[];
  everyMs: number;
}

const data = workerData as PingerData;
const port = parentPort!;
let recording = false;
let rtts: number[] = [];

const sockets = await Promise.all(
  data.clients.map(
    (c) =>
      new Promise<WebSocket>((resolve, reject) => {
        const ws = new WebSocket(`${data.url.replace('https:', 'wss:')}/v1/connect`, { ca: data.ca, cert: c.certPem, key: c.keyPem, perMessageDeflate: false });
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
      }),
  ),
);

const timers = sockets.map((ws) => {
  let sentAt = 0;
  let outstanding = false;
  ws.on('pong', () => {
    if (recording && outstanding) rtts.push(performance.now() - sentAt);
    outstanding = false;
  });
  return setInterval(() => {
    if (outstanding) return; // one ping in flight per socket
    outstanding = true;
    sentAt = performance.now();
    ws.ping();
  }, data.everyMs);
});

port.on('message', (msg: { type: string }) => {
  if (msg.type === 'start') {
    rtts = [];
    recording = true;
  } else if (msg.type === 'stop') {
    recording = false;
    port.postMessage({ type: 'rtts', rtts });
  } else if (msg.type === 'close') {
    for (const t of timers) clearInterval(t);
    for (const ws of sockets) ws.terminate();
    port.close();
  }
});
port.postMessage({ type: 'ready' });
