import type { Socket } from 'node:net';

/**
 * Admission of accepted TCP connections to the TLS server.
 *
 * At most `maxInFlight` TLS handshakes run at once. A connection is offered here once its first bytes
 * have arrived (client-hello.ts; a silent one never takes a place). One beyond the cap waits with those
 * bytes in its socket's buffer, unconsumed, and no CPU spent on it,
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
  /**
   * Fairness across sources: at most this many handshakes in flight from one address (default 16).
   * Without it, one address opening idle TCP connections that never send a ClientHello held every
   * slot for the whole handshake timeout and health probes and agents elsewhere waited (issue 17).
   * A waiting connection whose source is at its cap is passed over for the next one in order.
   */
  maxInFlightPerSource?: number;
  /** At most this many connections of one address wait (default 256); one more is dropped at once. */
  maxQueuedPerSource?: number;
}

export type DropReason = 'queue_full' | 'queue_timeout' | 'source_queue_full';

export class AdmissionQueue {
  readonly #limits: AdmissionLimits;
  readonly #admit: (socket: Socket) => void;
  readonly #onDrop: (reason: DropReason) => void;
  /** Handshakes in flight, by "address:port" (the TLS socket that replaces the raw one has the same). */
  readonly #inFlight = new Map<string, string>();
  /** Handshakes in flight and connections waiting, per source address. */
  readonly #inFlightBySource = new Map<string, number>();
  readonly #waitingBySource = new Map<string, number>();
  /**
   * Waiting connections with their arrival time and key; a Map keeps arrival order and deletes in
   * O(1). The key is taken at accept, while the peer's address is surely known (a socket reset while
   * it waits may no longer report one).
   */
  readonly #waiting = new Map<Socket, { since: number; key: string; source: string }>();
  #sweeper: NodeJS.Timeout | null = null;

  /** Handshakes in flight now. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** Connections waiting for a handshake slot now. */
  get queued(): number {
    return this.#waiting.size;
  }

  constructor(limits: AdmissionLimits, admit: (socket: Socket) => void, onDrop: (reason: DropReason) => void) {
    this.#limits = limits;
    this.#admit = admit;
    this.#onDrop = onDrop;
  }

  /**
   * A connection sent its first bytes (buffered in the socket, unconsumed). `source` is its client's
   * address: the socket's peer, or the one a PROXY header named (client-address.ts).
   */
  offer(socket: Socket, source: string = socket.remoteAddress ?? 'unknown'): void {
    const key = keyOf(socket);
    // Whatever waits is blocked by its own source's cap (the pump starts everything else), so a
    // connection from a source under its cap may start while others wait.
    if (this.#inFlight.size < this.#limits.maxInFlight && this.#sourceMayStart(source)) {
      this.#start(socket, key, source);
      return;
    }
    if (this.#waiting.size >= this.#limits.maxQueued) {
      this.#onDrop('queue_full');
      socket.destroy();
      return;
    }
    if ((this.#waitingBySource.get(source) ?? 0) >= (this.#limits.maxQueuedPerSource ?? 256)) {
      this.#onDrop('source_queue_full');
      socket.destroy();
      return;
    }
    this.#waiting.set(socket, { since: Date.now(), key, source });
    bump(this.#waitingBySource, source, 1);
    // Nothing consumes a waiting socket's buffer, so it sees a peer's FIN only if the peer also resets; whichever
    // happens, a closed socket leaves the queue at once.
    socket.once('close', () => this.#unqueue(socket));
    this.#sweeper ??= setInterval(() => this.#sweep(), Math.max(50, Math.min(1_000, this.#limits.maxWaitMs / 4)));
    this.#sweeper.unref();
  }

  /** The handshake of the connection from `address:port` ended (completed, failed or closed). */
  finished(key: string): void {
    const source = this.#inFlight.get(key);
    if (source === undefined) return;
    this.#inFlight.delete(key);
    bump(this.#inFlightBySource, source, -1);
    this.#pump();
  }

  #sourceMayStart(source: string): boolean {
    return (this.#inFlightBySource.get(source) ?? 0) < (this.#limits.maxInFlightPerSource ?? 16);
  }

  #unqueue(socket: Socket): void {
    const entry = this.#waiting.get(socket);
    if (!entry) return;
    this.#waiting.delete(socket);
    bump(this.#waitingBySource, entry.source, -1);
  }

  /** Drops every waiting connection (server shutdown). */
  close(): void {
    if (this.#sweeper) clearInterval(this.#sweeper);
    this.#sweeper = null;
    for (const socket of this.#waiting.keys()) socket.destroy();
    this.#waiting.clear();
    this.#waitingBySource.clear();
  }

  #start(socket: Socket, key: string, source: string): void {
    this.#inFlight.set(key, source);
    bump(this.#inFlightBySource, source, 1);
    // A client that leaves before its handshake ends frees the slot too (no tlsClientError then).
    socket.once('close', () => this.finished(key));
    this.#admit(socket);
  }

  #pump(): void {
    for (const [socket, { key, source }] of this.#waiting) {
      if (this.#inFlight.size >= this.#limits.maxInFlight) break;
      if (!socket.destroyed && !this.#sourceMayStart(source)) continue;
      this.#unqueue(socket);
      if (socket.destroyed) continue;
      this.#start(socket, key, source);
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
      this.#unqueue(socket);
      this.#onDrop('queue_timeout');
      socket.destroy();
    }
    this.#pump();
  }
}

export function keyOf(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}

function bump(counts: Map<string, number>, source: string, by: number): void {
  const n = (counts.get(source) ?? 0) + by;
  if (n > 0) counts.set(source, n);
  else counts.delete(source);
}
