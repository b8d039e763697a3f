import type { Socket } from 'node:net';

/**
 * Admission of accepted TCP connections to the TLS server.
 *
 * At most `maxInFlight` TLS handshakes run at once. A connection beyond that waits, paused (the
 * listener is created with `pauseOnConnect`, so none of its bytes are read and no CPU is spent on it),
 * in arrival order, and starts its handshake when a slot frees. A connection that arrives when
 * `maxQueued` are already waiting, or that has waited `maxWaitMs`, is dropped.
 *
 * Why a queue and not only a cap: after a server restart every agent reconnects within seconds. With a
 * bare cap the burst beyond it was dropped, each dropped agent backed off (1 s, 2 s, 4 s … 60 s), and
 * recovery took as long as the slowest backoff chain although the server sat idle between the waves
 * (3,000 agents: 8,357 attempts, 28 s). Waiting costs the server one file descriptor and a few KiB; a
 * refusal costs the agent a backoff period. Without any cap, thousands of handshakes ran interleaved,
 * each finishing past the handshake timeout, and every retry joined the same pile (the collapse the
 * cap was introduced for). The cap bounds CPU work in progress; the queue holds the rest in order.
 */
export interface AdmissionLimits {
  maxInFlight: number;
  maxQueued: number;
  maxWaitMs: number;
}

export type DropReason = 'queue_full' | 'queue_timeout';

export class AdmissionQueue {
  readonly #limits: AdmissionLimits;
  readonly #admit: (socket: Socket) => void;
  readonly #onDrop: (reason: DropReason) => void;
  /** Handshakes in flight, by "address:port" (the TLS socket that replaces the raw one has the same). */
  readonly #inFlight = new Set<string>();
  /**
   * Waiting connections with their arrival time and key; a Map keeps arrival order and deletes in
   * O(1). The key is taken at accept, while the peer's address is surely known (a socket reset while
   * it waits may no longer report one).
   */
  readonly #waiting = new Map<Socket, { since: number; key: string }>();
  #sweeper: NodeJS.Timeout | null = null;

  constructor(limits: AdmissionLimits, admit: (socket: Socket) => void, onDrop: (reason: DropReason) => void) {
    this.#limits = limits;
    this.#admit = admit;
    this.#onDrop = onDrop;
  }

  /** A connection was accepted (paused). */
  offer(socket: Socket): void {
    const key = keyOf(socket);
    if (this.#inFlight.size < this.#limits.maxInFlight && this.#waiting.size === 0) {
      this.#start(socket, key);
      return;
    }
    if (this.#waiting.size >= this.#limits.maxQueued) {
      this.#onDrop('queue_full');
      socket.destroy();
      return;
    }
    this.#waiting.set(socket, { since: Date.now(), key });
    // A waiting socket is paused, so it sees a peer's FIN only if the peer also resets; whichever
    // happens, a closed socket leaves the queue at once.
    socket.once('close', () => this.#waiting.delete(socket));
    this.#sweeper ??= setInterval(() => this.#sweep(), Math.max(50, Math.min(1_000, this.#limits.maxWaitMs / 4)));
    this.#sweeper.unref();
  }

  /** The handshake of the connection from `address:port` ended (completed, failed or closed). */
  finished(key: string): void {
    if (!this.#inFlight.delete(key)) return;
    this.#pump();
  }

  /** Drops every waiting connection (server shutdown). */
  close(): void {
    if (this.#sweeper) clearInterval(this.#sweeper);
    this.#sweeper = null;
    for (const socket of this.#waiting.keys()) socket.destroy();
    this.#waiting.clear();
  }

  #start(socket: Socket, key: string): void {
    this.#inFlight.add(key);
    // A client that leaves before its handshake ends frees the slot too (no tlsClientError then).
    socket.once('close', () => this.finished(key));
    this.#admit(socket);
  }

  #pump(): void {
    for (const [socket, { key }] of this.#waiting) {
      if (this.#inFlight.size >= this.#limits.maxInFlight) break;
      this.#waiting.delete(socket);
      if (socket.destroyed) continue;
      this.#start(socket, key);
    }
    if (this.#waiting.size === 0 && this.#sweeper) {
      clearInterval(this.#sweeper);
      this.#sweeper = null;
    }
  }

  #sweep(): void {
    const oldest = Date.now() - this.#limits.maxWaitMs;
    for (const [socket, { since }] of this.#waiting) {
      if (since > oldest) break; // arrival order: the rest waited less
      this.#waiting.delete(socket);
      this.#onDrop('queue_timeout');
      socket.destroy();
    }
    this.#pump();
  }
}

export function keyOf(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}
