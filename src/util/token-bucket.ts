/**
 * Token buckets by key (a source address, a node and batch kind): each key holds up to `perMinute`
 * tokens, refilled continuously at `perMinute` per minute, so a key may spend a burst of `perMinute`
 * and then one per 60/perMinute seconds. The one rate limiter of the project: enrollment failures
 * per address (`charge` on a failure, `retryAfterSec` before any work) and agent uploads per node
 * (`take`).
 *
 * The table is capped at `maxEntries`: past it, full buckets (keys that would start full anyway) are
 * dropped first, then the least recently charged, so a flood of new keys cannot grow memory.
 */
export interface TokenBucketOptions {
  perMinute: number;
  /** Keys kept at most (default 10,000). */
  maxEntries?: number;
  /** Tokens a bucket holds at most (default `perMinute`: a burst of one minute's worth). A bandwidth cap
   * in bytes wants a smaller burst than a minute of its rate (server/mesh/relay.ts). */
  capacity?: number;
}

export class TokenBuckets {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  #capacity: number;
  /** A capacity given to the constructor stays across setRate(); otherwise the burst is one minute's rate. */
  readonly #fixedCapacity: number | undefined;
  #refillPerMs: number;
  readonly #maxEntries: number;

  constructor(options: TokenBucketOptions) {
    if (!(options.perMinute > 0)) throw new RangeError(`perMinute must be positive, got ${options.perMinute}`);
    if (options.capacity !== undefined && !(options.capacity >= 1)) throw new RangeError(`capacity must be at least 1, got ${options.capacity}`);
    this.#fixedCapacity = options.capacity;
    this.#capacity = options.capacity ?? options.perMinute;
    this.#refillPerMs = options.perMinute / 60_000;
    this.#maxEntries = options.maxEntries ?? 10_000;
  }

  /**
   * A new rate for every key from now on (the server's SIGHUP reload). A key keeps the tokens it holds,
   * capped at the new burst, so a lower rate takes effect at once and a higher one refills from there.
   * The burst is the constructor's capacity when one was given, else the new rate's minute.
   */
  setRate(perMinute: number, now: number = Date.now()): void {
    if (!(perMinute > 0)) throw new RangeError(`perMinute must be positive, got ${perMinute}`);
    const capacity = this.#fixedCapacity ?? perMinute;
    for (const [key] of this.#buckets) this.#buckets.set(key, { tokens: Math.min(capacity, this.level(key, now)), at: now });
    this.#capacity = capacity;
    this.#refillPerMs = perMinute / 60_000;
  }

  /** Tokens the key holds now (a key never seen holds a full bucket). */
  level(key: string, now: number = Date.now()): number {
    const b = this.#buckets.get(key);
    if (!b) return this.#capacity;
    return Math.min(this.#capacity, b.tokens + (now - b.at) * this.#refillPerMs);
  }

  /** Seconds to wait before the key holds a whole token again, or 0 when it holds one now. */
  retryAfterSec(key: string, now: number = Date.now()): number {
    const level = this.level(key, now);
    if (level >= 1) return 0;
    return Math.max(1, Math.ceil((1 - level) / this.#refillPerMs / 1000));
  }

  /** Spends one token if the key has one; false (nothing spent) when it has none. */
  take(key: string, now: number = Date.now()): boolean {
    return this.takeMany(key, 1, now);
  }

  /** Spends `count` tokens if the key holds that many (a datagram's bytes); false (nothing spent) otherwise. */
  takeMany(key: string, count: number, now: number = Date.now()): boolean {
    const level = this.level(key, now);
    if (level < count) return false;
    this.#set(key, level - count, now);
    return true;
  }

  /** Spends one token whatever the level (never below zero): for charging something after the fact. */
  charge(key: string, now: number = Date.now()): void {
    this.#set(key, Math.max(0, this.level(key, now) - 1), now);
  }

  /** Forgets the keys `matches` picks (e.g. a node's buckets when it goes offline). */
  forget(matches: (key: string) => boolean): void {
    for (const key of this.#buckets.keys()) if (matches(key)) this.#buckets.delete(key);
  }

  get size(): number {
    return this.#buckets.size;
  }

  #set(key: string, tokens: number, now: number): void {
    this.#buckets.delete(key); // re-insert so Map order is least recently charged first
    this.#buckets.set(key, { tokens, at: now });
    if (this.#buckets.size > this.#maxEntries) this.#evict(now);
  }

  #evict(now: number): void {
    for (const [key] of this.#buckets) {
      if (this.level(key, now) >= this.#capacity) this.#buckets.delete(key);
    }
    for (const [key] of this.#buckets) {
      if (this.#buckets.size <= this.#maxEntries) break;
      this.#buckets.delete(key);
    }
  }
}
