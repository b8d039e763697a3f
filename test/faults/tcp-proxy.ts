import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * A loopback TCP proxy for fault injection between an agent and the server:
 * - `pass`: forwards both ways (optionally with `delayMs` added to every chunk);
 * - `blackhole`: keeps the connections open but silently discards every byte, and a close on one
 *   side does not reach the other (a half-open path: nothing errors, nothing arrives); `blackhole-down` discards only server → agent bytes;
 * - `drop()`: destroys every connection at once (RST), new ones are still accepted;
 * - `blackholeDownAt(match)`: switches to `blackhole-down` when an agent → server chunk on one of the
 *   connections open now matches, before that chunk is forwarded, so the server gets the request and
 *   its answer is the first thing lost (no timer decides when the path goes dark; a new connection's
 *   TLS handshake cannot trigger it).
 */
export type ProxyMode = 'pass' | 'blackhole' | 'blackhole-down';

export class TcpProxy {
  mode: ProxyMode = 'pass';
  delayMs = 0;
  connections = 0;
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();
  #downAt: { match: (chunk: Buffer) => boolean; on: Set<Socket> } | null = null;

  private constructor(readonly targetPort: number) {
    this.#server = createServer((client) => this.#accept(client));
  }

  static async start(targetPort: number): Promise<TcpProxy> {
    const p = new TcpProxy(targetPort);
    await new Promise<void>((r) => p.#server.listen(0, '127.0.0.1', r));
    return p;
  }

  get port(): number {
    return (this.#server.address() as { port: number }).port;
  }

  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  /** Arms a one-shot switch to `blackhole-down` on the first agent → server chunk, of a connection open now, that `match`es. */
  blackholeDownAt(match: (chunk: Buffer) => boolean): void {
    this.#downAt = { match, on: new Set([...this.#pairs].map(([client]) => client)) };
  }

  drop(): void {
    for (const [a, b] of this.#pairs) {
      a.resetAndDestroy();
      b.resetAndDestroy();
    }
    this.#pairs.clear();
  }

  async close(): Promise<void> {
    this.drop();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }

  #accept(client: Socket): void {
    this.connections++;
    const upstream = createConnection({ host: '127.0.0.1', port: this.targetPort });
    const pair: [Socket, Socket] = [client, upstream];
    this.#pairs.add(pair);
    const forward = (from: Socket, to: Socket, down: boolean): void => {
      from.on('data', (chunk: Buffer) => {
        if (!down && this.#downAt?.on.has(from) && this.#downAt.match(chunk)) {
          this.#downAt = null;
          this.mode = 'blackhole-down';
        }
        if (this.mode === 'blackhole' || (down && this.mode === 'blackhole-down')) return;
        if (this.delayMs > 0) setTimeout(() => to.writable && to.write(chunk), this.delayMs);
        else if (to.writable) to.write(chunk);
      });
    };
    forward(client, upstream, false);
    forward(upstream, client, true);
    const end = (): void => {
      // In a black hole the FIN or RST is lost too: the other side must find out by itself (its
      // heartbeat timeout), so nothing is propagated; drop() or close() cleans up what is left.
      if (this.mode === 'blackhole') {
        if (client.destroyed && upstream.destroyed) this.#pairs.delete(pair);
        return;
      }
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  }
}
