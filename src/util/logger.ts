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

/**
 * Every live child (and grandchild) of a logger made here, so that `setLogLevel` reaches them: a pino
 * child copies its parent's level when it is made and never follows it afterwards. Weak, so a
 * per-connection child is collected with its connection.
 */
const descendants = new WeakMap<Logger, Set<WeakRef<Logger>>>();
const forget = new FinalizationRegistry<{ set: Set<WeakRef<Logger>>; ref: WeakRef<Logger> }>(({ set, ref }) => set.delete(ref));

/**
 * Changes the level of a logger made by createLogger and of every child it has made (the server's
 * SIGHUP reload). Children made later take it from their parent as usual.
 */
export function setLogLevel(logger: Logger, level: LevelWithSilent): void {
  logger.level = level;
  for (const ref of descendants.get(logger) ?? []) {
    const child = ref.deref();
    if (child) child.level = level;
  }
}

/** JSON logs on stdout (fd 1) and, when given, a sink; one line an entry, secrets redacted. */
export function createLogger(options: LoggerOptions): Logger {
  const children = new Set<WeakRef<Logger>>();
  const settings = {
    name: options.name,
    level: resolveLogLevel(options.level),
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { pid: process.pid },
    // Inherited by every descendant, so grandchildren are recorded too.
    onChild: (child: Logger) => {
      const ref = new WeakRef(child);
      children.add(ref);
      forget.register(child, { set: children, ref });
    },
  };
  const stdout = options.stdout !== false;
  const fd = options.stderr === true ? 2 : 1;
  const remember = (logger: Logger): Logger => {
    descendants.set(logger, children);
    return logger;
  };
  if (!options.sink) return remember(pino(settings, destination({ fd, sync: false })));
  // The logger's level filters first; every stream then takes every line it is given.
  const streams: StreamEntry[] = [];
  if (stdout) streams.push({ level: 'trace', stream: destination({ fd, sync: false }) });
  streams.push({ level: 'trace', stream: options.sink });
  return remember(pino(settings, multistream(streams)));
}
