import type { Command, CommanderError } from 'commander';
import { EXIT_CODES, MeshlinkError } from '../errors.js';
import { printable } from './table.js';

/**
 * How every command reports a failure: `error <CODE>: message` on stderr and the exit number of the
 * error's exit class (src/errors.ts, EXIT_CODES; docs/ERRORS.md). Anything that is not a MeshlinkError
 * is ML_ERR_INTERNAL, exit 1, with its stack only at MESHLINK_LOG_LEVEL=debug; our own errors never
 * print a stack.
 */

export function exitCodeFor(err: unknown): number {
  return EXIT_CODES[err instanceof MeshlinkError ? err.exit : 'internal'];
}

/** Sets process.exitCode rather than exiting, so that buffered output (logs, stdout) is flushed. */
export function reportFailure(err: unknown): void {
  const code = err instanceof MeshlinkError ? err.code : 'ML_ERR_INTERNAL';
  // A message can carry a peer's words (an agent's reject or error text): escaped like every agent-supplied string.
  process.stderr.write(`error ${code}: ${printable(err instanceof Error ? err.message : String(err))}\n`);
  if (!(err instanceof MeshlinkError) && err instanceof Error && err.stack !== undefined && process.env.MESHLINK_LOG_LEVEL === 'debug') {
    process.stderr.write(`${err.stack}\n`);
  }
  process.exitCode = exitCodeFor(err);
}

/** Wraps a command action so that every failure ends in reportFailure. */
export function withFailureReport<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      reportFailure(err);
    }
  };
}

/**
 * Makes commander's own parse errors (unknown command or option, missing argument or value, a bare
 * command group) usage errors: `error ML_ERR_USAGE: …` and exit 2. Help and --version keep exit 0.
 * Called on the root program before any subcommand is added: commander copies both settings into
 * every subcommand created afterwards, so each command group inherits them.
 */
export function usageErrorsExit2(program: Command): Command {
  return program
    .exitOverride((err: CommanderError) => {
      process.exit(err.exitCode === 0 ? EXIT_CODES.ok : EXIT_CODES.usage);
    })
    .configureOutput({ outputError: (str, write) => write(`error ML_ERR_USAGE: ${str.replace(/^error: /, '')}`) });
}
