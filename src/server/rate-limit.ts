/**
 * Per-source-address token bucket for FAILED requests: each address may fail `perMinute` times in a
 * burst, refilled continuously at `perMinute` per minute. Successful requests cost nothing, so a
 * fleet enrolling from behind one NAT address is not throttled unless it keeps failing.
 * The table is capped; full buckets are dropped first, then the oldest entries.
 */
export class FailureRateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly capacity: number;
  private readonly refillPerMs: number;
  private readonly maxEntries: number;

  constructor(options: { perMinute: number; maxEntries?: number }) {
    this.capacity = options.perMinute;
    this.refillPerMs = options.perMinute / 60_000;
    this.maxEntries = options.maxEntries ?? 10_000;
  }

  private level(key: string, now: number): number {
    const b = this.buckets.get(key);
    if (!b) return this.capacity;
    return Math.min(this.capacity, b.tokens + (now - b.at) * this.refillPerMs);
  }

  /** Seconds to wait before this address may try again, or 0 when it may try now. */
  retryAfterSec(key: string, now: number = Date.now()): number {
    const level = this.level(key, now);
    if (level >= 1) return 0;
    return Math.max(1, Math.ceil((1 - level) / this.refillPerMs / 1000));
  }

  recordFailure(key: string, now: number = Date.now()): void {
    const tokens = Math.max(0, this.level(key, now) - 1);
    this.buckets.delete(key); // re-insert so Map order is least-recently-failed first
    this.buckets.set(key, { tokens, at: now });
    if (this.buckets.size > this.maxEntries) this.evict(now);
  }

  get size(): number {
    return this.buckets.size;
  }

  private evict(now: number): void {
    for (const [key] of this.buckets) {
      if (this.level(key, now) >= this.capacity) this.buckets.delete(key);
    }
    for (const [key] of this.buckets) {
      if (this.buckets.size <= this.maxEntries) break;
      this.buckets.delete(key);
    }
  }
}
