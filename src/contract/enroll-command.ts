/**
 * The enrollment command an operator is shown (`meshlink server token create`, the console's Tokens
 * page; both print the `enrollCommand` of the tokens.create answer, which this one function makes) and
 * the variable the agent reads the token from.
 *
 * The token travels in the environment, not in argv: a command line is world-readable in `ps` and
 * /proc/PID/cmdline for as long as the enrollment runs, while /proc/PID/environ is readable by the
 * same user and root only. A shell puts `NAME=value cmd` in cmd's environment only, not in its own.
 *
 * The token is base64url and the pin `sha256:` and hex, safe in a shell as they are; the URL is an
 * origin, but an IPv6 one has brackets, which a shell would take as a glob: such a word is quoted.
 */
export const ENROLL_TOKEN_ENV = 'MESHLINK_ENROLL_TOKEN';

export interface EnrollCommandParts {
  readonly server: string;
  readonly token: string;
  readonly caPin: string;
  /** A re-enrollment token (keeps a node id): the agent must replace the identity it holds. */
  readonly force: boolean;
}

export function enrollCommand(parts: EnrollCommandParts): string {
  return `${ENROLL_TOKEN_ENV}=${shellWord(parts.token)} meshlink agent enroll --server ${shellWord(parts.server)} --ca-pin ${shellWord(parts.caPin)}${parts.force ? ' --force' : ''}`;
}

/** The word as is when a POSIX shell reads it literally, else in single quotes (a ' inside closed, escaped, reopened). */
function shellWord(word: string): string {
  return /^[A-Za-z0-9_./:@%+,=-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}
