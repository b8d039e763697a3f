import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { enrollCommand, ENROLL_TOKEN_ENV } from '../../src/contract/enroll-command.js';
import { ENV_ENROLL_TOKEN } from '../../src/agent/config.js';

const run = promisify(execFile);
const PIN = `sha256:${'ab'.repeat(32)}`;

/** The one enroll command both the CLI and the console show (the tokens.create answer's enrollCommand). */
describe('enrollCommand', () => {
  it('puts the token in the environment, not in the arguments, under the name the agent reads', () => {
    expect(ENROLL_TOKEN_ENV).toBe(ENV_ENROLL_TOKEN);
    expect(enrollCommand({ server: 'https://mesh.example:8443', token: 'Abc_-123', caPin: PIN, force: false })).toBe(
      `MESHLINK_ENROLL_TOKEN=Abc_-123 meshlink agent enroll --server https://mesh.example:8443 --ca-pin ${PIN}`,
    );
    expect(enrollCommand({ server: 'https://mesh.example', token: 't', caPin: PIN, force: true })).toMatch(/ --force$/);
  });

  it('quotes a word a shell would not read literally (an IPv6 URL’s brackets are a glob)', async () => {
    const command = enrollCommand({ server: 'https://[::1]:8443', token: 'tok', caPin: PIN, force: false });
    expect(command).toContain("--server 'https://[::1]:8443'");
    // What sh really hands the command: the variable in its environment, the URL as one argument.
    const { stdout } = await run('sh', ['-c', `meshlink() { printf '%s|' "$MESHLINK_ENROLL_TOKEN" "$@"; }; ${command}`]);
    expect(stdout).toBe(`tok|agent|enroll|--server|https://[::1]:8443|--ca-pin|${PIN}|`);
  });
});
