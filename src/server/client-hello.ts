import type { Socket } from 'node:net';

/**
 * The first-byte deadline in front of the admission queue (issue 17, item 7).
 *
 * A TCP connection takes a handshake slot (admission.ts) only once its first bytes (a TLS client
 * sends its ClientHello at once) are readable. Before that it costs a file descriptor and nothing
 * else, and one that sends nothing within `timeoutMs` (default 3 s) is closed. Without this an idle
 * connection held its source's slot for the whole 10 s TLS handshake timeout: 16 of them from one
 * address blocked every other connection from that address (a NAT's other agents, a probe).
 *
 * Nothing is consumed: the bytes are read into the socket's own buffer (a 'readable' listener, no
 * read()), and the TLS socket that later wraps it feeds that buffer to its TLS state first
 * (node's _tls_wrap.js: "Socket already has some buffered data - emulate receiving it"), so the
 * handshake sees the whole ClientHello. test/server/client-hello.test.ts checks that it does.
 *
 * At most `maxPerSource` connections of one address wait for their first byte, and at most `maxTotal`
 * of all addresses together (many addresses are cheap: an IPv6 /64); one more is closed at once, so
 * the descriptors silent connections hold stay bounded by these caps, not by anyone's connect rate.
 */
export type HelloOutcome = 'ready' | 'timeout' | 'closed' | 'source_full';

export interface ClientHelloGateOptions {
  /** Read at every accept, so a changed value applies to the next connection (SIGHUP reload). */
  timeoutMs: () => number;
  maxPerSource: number;
  maxTotal: number;
}

export class ClientHelloGate {
  readonly #options: ClientHelloGateOptions;
  readonly #waitingBySource = new Map<string, number>();
  readonly #pending = new Set<Socket>();

  constructor(options: ClientHelloGateOptions) {
    this.#options = options;
  }

  /** How many connections wait for their first byte now. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Calls `then` once: 'ready' with the socket's first bytes buffered (unread), else after the socket
   * was destroyed ('timeout': nothing within the deadline; 'closed': the peer left first;
   * 'source_full': its address already has `maxPerSource` connections waiting, or `maxTotal` wait in all).
   */
  wait(socket: Socket, then: (outcome: HelloOutcome) => void): void {
    const source = socket.remoteAddress ?? 'unknown';
    const waiting = this.#waitingBySource.get(source) ?? 0;
    if (waiting >= this.#options.maxPerSource || this.#pending.size >= this.#options.maxTotal) {
      socket.destroy();
      then('source_full');
      return;
    }
    this.#waitingBySource.set(source, waiting + 1);
    this.#pending.add(socket);
    let done = false;
    const finish = (outcome: HelloOutcome): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('close', onClose);
      socket.off('error', onError);
      this.#pending.delete(socket);
      const n = (this.#waitingBySource.get(source) ?? 1) - 1;
      if (n > 0) this.#waitingBySource.set(source, n);
      else this.#waitingBySource.delete(source);
      if (outcome !== 'ready') socket.destroy();
      then(outcome);
    };
    // 'readable' also fires at end-of-stream with nothing buffered: a peer that closed without a byte.
    const onReadable = (): void => finish(socket.readableLength > 0 ? 'ready' : 'closed');
    const onClose = (): void => finish('closed');
    const onError = (): void => finish('closed');
    const timer = setTimeout(() => finish('timeout'), this.#options.timeoutMs());
    timer.unref();
    socket.on('readable', onReadable);
    socket.once('close', onClose);
    socket.once('error', onError);
  }

  /** Closes every connection still waiting (server shutdown). */
  close(): void {
    for (const socket of [...this.#pending]) socket.destroy();
  }
}
