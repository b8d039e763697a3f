import { MeshlinkError } from '../protocol/errors.js';

/** A command-line mistake: exit code 2 in every command group. */
export class UsageError extends MeshlinkError {
  constructor(message: string) {
    super('ML_ERR_USAGE', message);
  }
}

/**
 * How a command group reports failures: `error <CODE>: message` on stderr and the documented exit code
 * for that code (`fallback` for anything else). Sets process.exitCode rather than exiting, so that
 * buffered output is flushed. Our own errors never print a stack.
 */
export function failureReporter(exitByCode: Readonly<Record<string, number>>, fallback: number): (err: unknown) => void {
  return (err: unknown) => {
    const maybe = (err as { code?: unknown } | null)?.code;
    const code = typeof maybe === 'string' ? maybe : 'ML_ERR_INTERNAL';
    process.stderr.write(`error ${code}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = exitByCode[code] ?? fallback;
  };
}

/** Wraps a command action so that every failure goes to `fail`. */
export function withFailureReport<A extends unknown[]>(fail: (err: unknown) => void, fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      fail(err);
    }
  };
}
