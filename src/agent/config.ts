import { homedir, hostname as osHostname } from 'node:os';
import { isIP } from 'node:net';
import { isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { caPinSchema } from '../contract/ca-pin.js';
import { ENROLL_TOKEN_ENV } from '../contract/enroll-command.js';
import { KEY_TYPES } from './csr.js';
import { EXIT_CODES, MeshlinkError } from '../errors.js';
import { zodErrorText } from '../util/zod-error.js';

/**
 * Agent configuration: where the state dir lives and the validated, frozen options of `enroll`.
 * Everything crossing into src/agent from the CLI or the environment is parsed here once.
 */

export const ENV_STATE_DIR = 'MESHLINK_STATE_DIR';
export const ENV_LOG_LEVEL = 'MESHLINK_LOG_LEVEL';
/** Alternative to --token that keeps the token out of `ps` output and shell history (what token create prints). */
export const ENV_ENROLL_TOKEN = ENROLL_TOKEN_ENV;

export const ROOT_STATE_DIR = '/var/lib/meshlink/agent';

/**
 * Exit codes of `meshlink agent ...`, documented in docs/AGENT.md (a test keeps the two in
 * agreement): the numbers of the exit classes the agent commands use (src/errors.ts EXIT_CODES).
 * The systemd unit depends on `revoked` and `certExpired` (RestartPreventExitStatus).
 */
export const AGENT_EXIT_CODES = Object.freeze({
  ok: EXIT_CODES.ok,
  internal: EXIT_CODES.internal,
  usage: EXIT_CODES.usage,
  enrollRefused: EXIT_CODES.enrollRefused,
  pinMismatch: EXIT_CODES.pinMismatch,
  alreadyEnrolled: EXIT_CODES.alreadyEnrolled,
  serverUnavailable: EXIT_CODES.serverUnavailable,
  notEnrolled: EXIT_CODES.notEnrolled,
  /** `agent run`: another agent runs on this state dir. */
  agentRunning: EXIT_CODES.agentRunning,
  /** Reserved: `agent run` replaced its binary and wants to be started again. */
  upgradeRestart: EXIT_CODES.upgradeRestart,
  /** `agent run`: the server revoked this node's certificate; restarting cannot help. */
  revoked: EXIT_CODES.revoked,
  /** `agent run`: the certificate expired past the server's renewal grace; re-enroll (docs/AGENT.md). */
  certExpired: EXIT_CODES.certExpired,
});

/**
 * `MESHLINK_STATE_DIR`, else `/var/lib/meshlink/agent` for root, else
 * `$HOME/.local/state/meshlink/agent` (XDG state home convention).
 */
export function defaultStateDir(
  env: NodeJS.ProcessEnv = process.env,
  uid: number | undefined = process.getuid?.(),
  home: string = homedir(),
): string {
  const fromEnv = env[ENV_STATE_DIR];
  if (fromEnv !== undefined && fromEnv !== '') return resolve(fromEnv);
  if (uid === 0) return ROOT_STATE_DIR;
  return join(home, '.local', 'state', 'meshlink', 'agent');
}

/** Flag if given, else the default; always absolute. */
export function resolveStateDir(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (flag !== undefined) {
    if (flag === '') throw new MeshlinkError('ML_ERR_CONFIG', '--state-dir must not be empty');
    return isAbsolute(flag) ? flag : resolve(flag);
  }
  return defaultStateDir(env);
}

// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, 253 chars max.
const DNS_LABEL = '[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?';
const DNS_NAME = new RegExp(`^${DNS_LABEL}(?:\\.${DNS_LABEL})*\\.?$`);

export const hostnameSchema = z
  .string()
  .max(253)
  .regex(DNS_NAME, 'must be a DNS host name (letters, digits, hyphens, dots)')
  .transform((s) => s.replace(/\.$/, '').toLowerCase());

export const sanSchema = z
  .string()
  .max(253)
  .refine((s) => isIP(s) !== 0 || DNS_NAME.test(s), 'must be a DNS name or an IP address')
  .transform((s) => (isIP(s) !== 0 ? s : s.replace(/\.$/, '').toLowerCase()));

/** https://HOST[:PORT] only: the agent adds the /v1/... paths itself. */
export const serverUrlSchema = z
  .string()
  .transform((s, ctx) => {
    let url: URL;
    try {
      url = new URL(s);
    } catch {
      ctx.addIssue({ code: 'custom', message: 'must be a URL like https://HOST:PORT' });
      return z.NEVER;
    }
    if (url.protocol !== 'https:') {
      ctx.addIssue({ code: 'custom', message: 'must use https://' });
      return z.NEVER;
    }
    if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '' || url.pathname !== '/') {
      ctx.addIssue({ code: 'custom', message: 'must be https://HOST[:PORT] without path, query or credentials' });
      return z.NEVER;
    }
    return url.origin;
  });

// Tokens are opaque to the agent; bound the size and forbid whitespace/control characters so a
// pasted line break is caught here instead of as a 401.
export const tokenSchema = z
  .string()
  .min(8, 'is too short')
  .max(512, 'is too long')
  .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');

export const enrollOptionsSchema = z.object({
  server: serverUrlSchema,
  token: tokenSchema,
  caPins: z.array(caPinSchema).min(1, 'at least one --ca-pin is required').max(16),
  stateDir: z.string().min(1),
  hostname: hostnameSchema,
  sans: z.array(sanSchema).max(64).default([]),
  force: z.boolean().default(false),
  keyType: z.enum(KEY_TYPES).default('rsa2048'),
  /** Whole-request budget for each HTTP call, in milliseconds. */
  timeoutMs: z.number().int().min(100).max(300_000).default(30_000),
});

export type EnrollOptionsInput = z.input<typeof enrollOptionsSchema>;
export type EnrollOptions = Readonly<z.output<typeof enrollOptionsSchema>>;

export function parseEnrollOptions(raw: EnrollOptionsInput): EnrollOptions {
  const result = enrollOptionsSchema.safeParse(raw);
  if (!result.success) throw new MeshlinkError('ML_ERR_CONFIG', `invalid enroll options: ${zodErrorText(result.error, { root: 'value', all: true })}`);
  const options = result.data;
  return Object.freeze({ ...options, caPins: Object.freeze([...options.caPins]), sans: Object.freeze([...options.sans]) }) as EnrollOptions;
}

/** The machine's host name, lower-cased, as the default CN. */
export function defaultHostname(): string {
  return osHostname().toLowerCase();
}
