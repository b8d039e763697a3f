import { pino, destination, multistream, type Logger, type LevelWithSilent, type StreamEntry } from 'pino';

export type { Logger };

/**
 * Paths that must never reach a log line. Redaction is a safety net: code also avoids logging these
 * values in the first place.
 */
const REDACT_PATHS = [
  'token',
  '*.token',
  'csr',
  '*.csr',
  'key',
  '*.key',
  'keyPem',
  '*.keyPem',
  'privateKey',
  '*.privateKey',
  'passphrase',
  '*.passphrase',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'psk',
  '*.psk',
  'presharedKey',
  '*.presharedKey',
];

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export function resolveLogLevel(flag?: string): LevelWithSilent {
  const raw = flag ?? process.env.MESHLINK_LOG_LEVEL ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(raw)) {
    throw new Error(`invalid log level "${raw}": expected one of ${LOG_LEVELS.join(', ')}`);
  }
  return raw as LevelWithSilent;
}

/**
 * Somewhere besides stdout that takes the same lines: a synchronous `write` of one or more complete
 * JSON lines (the agent's own log file, src/agent/state/log-file.ts, rotates and tails it).
 */
export interface LogLineSink {
  write(chunk: string): boolean;
}

export interface LoggerOptions {
  level?: string;
  name: string;
  /** Also write every line (at the logger's level) here. */
  sink?: LogLineSink;
  /** Write to stdout (default true); false with a sink keeps in-process agents of tests quiet. */
  stdout?: boolean;
  /**
   * Log to stderr instead of stdout: for commands whose stdout is their result (`agent enroll
   * --json` must print exactly one JSON document there); services keep logging to stdout.
   */
  stderr?: boolean;
}

/** JSON logs on stdout (fd 1) and, when given, a sink; one line an entry, secrets redacted. */
export function createLogger(options: LoggerOptions): Logger {
  const settings = {
    name: options.name,
    level: resolveLogLevel(options.level),
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { pid: process.pid },
  };
  const stdout = options.stdout !== false;
  const fd = options.stderr === true ? 2 : 1;
  if (!options.sink) return pino(settings, destination({ fd, sync: false }));
  // The logger's level filters first; every stream then takes every line it is given.
  const streams: StreamEntry[] = [];
  if (stdout) streams.push({ level: 'trace', stream: destination({ fd, sync: false }) });
  streams.push({ level: 'trace', stream: options.sink });
  return pino(settings, multistream(streams));
}
