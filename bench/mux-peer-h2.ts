/**
 * The node:http2 receiver of bench/mux-compare.ts, in its own process: an HTTP/2 server with mutual
 * TLS on 127.0.0.1 and the tuned windows of bench/lib/h2.ts.
 *   POST /sink  drains the request body, then answers 200 with the byte count.
 *   POST /echo  answers 200 at once and writes every chunk of the request body back.
 * Prints its port on stdout; answers an IPC message with its CPU time (µs).
 */
import { createSecureServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { H2_CONNECTION_WINDOW, h2ServerOptions } from './lib/h2.js';
import { BENCH_LISTEN } from './lib/bench-host.js';
import { makePki } from './lib/pki.js';

const pki = makePki(process.argv[2]);
const server = createSecureServer({
  key: pki.serverKey,
  cert: pki.serverCert,
  ca: pki.ca,
  requestCert: true,
  rejectUnauthorized: true,
  ...h2ServerOptions,
});
// ws sets TCP_NODELAY on its sockets; do the same here so that the comparison is of multiplexers.
server.on('secureConnection', (socket) => socket.setNoDelay(true));
server.on('session', (session) => {
  session.setLocalWindowSize(H2_CONNECTION_WINDOW);
  session.on('error', () => {});
});
server.on('stream', (stream, headers) => {
  stream.on('error', () => {});
  if (headers[':path'] === '/echo') {
    stream.respond({ ':status': 200 });
    stream.on('data', (c: Buffer) => stream.write(c));
    stream.on('end', () => stream.end());
    return;
  }
  let n = 0;
  stream.on('data', (c: Buffer) => {
    n += c.length;
  });
  stream.on('end', () => {
    stream.respond({ ':status': 200 });
    stream.end(String(n));
  });
});

server.listen(0, BENCH_LISTEN, () => {
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
});
process.on('disconnect', () => process.exit(0));
process.on('message', () => {
  const c = process.cpuUsage();
  process.send!({ cpuMicros: c.user + c.system });
});
