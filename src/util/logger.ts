import { pino, destination, type Logger, type LevelWithSilent } from 'pino';

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

/** JSON logs on stdout (fd 1), one line an entry. */
export function createLogger(options: { level?: string; name: string }): Logger {
  return pino(
    {
      name: options.name,
      level: resolveLogLevel(options.level),
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
    },
    destination({ fd: 1, sync: false }),
  );
}
