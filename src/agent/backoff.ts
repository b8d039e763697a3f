/**
 * Reconnect delays: exponential from 1 s, doubling, capped at 60 s, each with ±25 % jitter so that a
 * fleet cut off at once (server restart) does not come back in lockstep. The sequence starts over
 * after a connection that stayed up for `stableAfterMs` (default 30 s): an agent that flaps
 * immediately after connecting keeps backing off.
 */
export interface BackoffOptions {
  baseMs?: number;
  maxMs?: number;
  factor?: number;
  /** Relative jitter, 0.25 = ±25 %. */
  jitter?: number;
  stableAfterMs?: number;
  random?: () => number;
}

export class Backoff {
  readonly #base: number;
  readonly #max: number;
  readonly #factor: number;
  readonly #jitter: number;
  readonly #stableAfter: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.#base = options.baseMs ?? 1_000;
    this.#max = options.maxMs ?? 60_000;
    this.#factor = options.factor ?? 2;
    this.#jitter = options.jitter ?? 0.25;
    this.#stableAfter = options.stableAfterMs ?? 30_000;
    this.#random = options.random ?? Math.random;
  }

  get attempt(): number {
    return this.#attempt;
  }

  /** The delay before the next attempt; advances the sequence. */
  next(): number {
    const raw = Math.min(this.#max, this.#base * this.#factor ** this.#attempt);
    this.#attempt++;
    const spread = raw * this.#jitter * (2 * this.#random() - 1);
    return Math.max(0, Math.round(Math.min(this.#max * (1 + this.#jitter), raw + spread)));
  }

  /** Call when a connection ends: resets the sequence if it had stayed up long enough. */
  connectionEnded(upForMs: number): void {
    if (upForMs >= this.#stableAfter) this.#attempt = 0;
  }

  reset(): void {
    this.#attempt = 0;
  }
}
