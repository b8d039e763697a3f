/** Injected time source, so protocol logic can be driven by fake clocks in tests. */
export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  /**
   * Runs `fn` once the I/O callbacks of the event loop's current turn have run (setImmediate).
   * Optional for custom timers; without it the session uses setTimeout(fn, 0).
   */
  defer?(fn: () => void): void;
  /** A monotonic clock in fractional milliseconds, for round trips below 1 ms (performance.now()). Optional: now() otherwise. */
  preciseNow?(): number;
}

export const systemTimers: Timers = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn: () => void, ms: number) => {
    const t = setTimeout(fn, ms);
    // Protocol timers never keep a process alive on their own.
    t.unref?.();
    return t;
  },
  clearTimeout: (handle: unknown) => clearTimeout(handle as NodeJS.Timeout),
  defer: (fn: () => void) => {
    setImmediate(fn);
  },
  preciseNow: () => performance.now(),
});
