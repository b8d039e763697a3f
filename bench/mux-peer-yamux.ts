/**
 * The libp2p-yamux 7 receiver of bench/mux-compare.ts, in its own process: a TLS server with mutual
 * TLS on 127.0.0.1, one yamux muxer per connection (bench/lib/yamux.ts). A stream's first byte says
 * what to do: TAG_SINK drains it and answers the byte count (tag excluded), TAG_ECHO writes every
 * later byte back. Prints its port on stdout; answers an IPC message with its CPU time (µs).
 */
import type { AddressInfo } from 'node:net';
import { createServer } from 'node:tls';
import type { Stream } from '@libp2p/interface';
import { BENCH_LISTEN } from './lib/bench-host.js';
import { makePki } from './lib/pki.js';
import { TAG_ECHO, yamuxOver } from './lib/yamux.js';

const pki = makePki(process.argv[2]);

async function serve(stream: Stream): Promise<void> {
  const it = stream.source[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done) return stream.close();
  const tag = first.value.get(0);
  const rest = first.value.sublist(1);
  if (tag === TAG_ECHO) {
    await stream.sink(
      (async function* () {
        if (rest.byteLength > 0) yield rest;
        for (;;) {
          const r = await it.next();
          if (r.done) return;
          yield r.value;
        }
      })(),
    );
    return;
  }
  let n = rest.byteLength;
  for (;;) {
    const r = await it.next();
    if (r.done) break;
    n += r.value.byteLength;
  }
  await stream.sink([Buffer.from(String(n))]);
}

const server = createServer({ key: pki.serverKey, cert: pki.serverCert, ca: pki.ca, requestCert: true, rejectUnauthorized: true }, (socket) => {
  socket.on('error', () => {});
  yamuxOver(socket, 'inbound', (stream) => void serve(stream).catch(() => stream.abort(new Error('bench peer failed'))));
});
server.listen(0, BENCH_LISTEN, () => {
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
});
process.on('disconnect', () => process.exit(0));
process.on('message', () => {
  const c = process.cpuUsage();
  process.send!({ cpuMicros: c.user + c.system });
});
