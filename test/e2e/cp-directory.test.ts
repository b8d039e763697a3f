import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cli, enrollAgent, freePort, spawnCli, startServerProc, tempDir, type Proc, type ServerProc } from './harness.js';

/**
 * `cp FILE NODE:/dir/` and `cp NODE:/path/file DIR/` copy into the directory under the file's name;
 * the agent still refuses a directory outside its transfer dir (a symlink out of it included). The
 * agent's transfer dir comes from its config file as a relative path, resolved against the file's
 * directory. Real server, real agent, real CLI.
 */
describe('cp into a directory (real processes)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let agent: Proc;
  let drop: string;
  let outside: string;
  let local: string;
  const dd = (): string[] => ['--data-dir', server.dataDir];

  beforeAll(async () => {
    dir = await tempDir('ml-cp-dir-');
    server = await startServerProc(join(dir.path, 'srv'), await freePort());
    const stateDir = join(dir.path, 'state');
    await enrollAgent(server, stateDir, 'cp-host');
    const conf = join(dir.path, 'etc');
    drop = join(conf, 'drop');
    outside = join(dir.path, 'outside');
    local = join(dir.path, 'local');
    await Promise.all([mkdir(drop, { recursive: true }), mkdir(outside), mkdir(local)]);
    await symlink(outside, join(drop, 'escape'));
    await writeFile(join(conf, 'agent.json'), JSON.stringify({ transferDir: ['drop'] }));
    await writeFile(join(local, 'report.txt'), 'quarterly numbers\n');
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir, '--config', join(conf, 'agent.json')]);
    await agent.waitForLog('connected');
  }, 90_000);
  afterAll(async () => {
    await agent?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    await dir?.cleanup();
  });

  it('cp FILE NODE:/dir/ writes /dir/FILE on the agent (its transfer dir relative to its config file)', async () => {
    const r = await cli(['server', 'cp', join(local, 'report.txt'), `cp-host:${drop}/`, '--json', ...dd()]);
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(join(drop, 'report.txt'), 'utf8')).toBe('quarterly numbers\n');
  });

  it('refuses a directory that does not exist, and one reached through a symlink out of the transfer dir', async () => {
    const missing = await cli(['server', 'cp', join(local, 'report.txt'), `cp-host:${drop}/nope/`, ...dd()]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/ML_ERR_OPS_NOT_FOUND/);
    const escape = await cli(['server', 'cp', join(local, 'report.txt'), `cp-host:${drop}/escape/`, ...dd()]);
    expect(escape.code).toBe(8);
    expect(escape.stderr).toMatch(/ML_ERR_OPS_PATH_FORBIDDEN/);
    expect(existsSync(join(outside, 'report.txt'))).toBe(false);
  });

  it('cp NODE:/path/file DIR/ (or an existing DIR) writes DIR/file; a DIR/ that does not exist is a usage error', async () => {
    await writeFile(join(drop, 'from-agent.log'), 'agent side\n');
    const into = join(dir.path, 'downloads');
    await mkdir(into);
    const slash = await cli(['server', 'cp', `cp-host:${drop}/from-agent.log`, `${into}/`, ...dd()]);
    expect(slash.code, slash.stderr).toBe(0);
    expect(slash.stdout).toBe('');
    expect(await readFile(join(into, 'from-agent.log'), 'utf8')).toBe('agent side\n');

    const existing = join(dir.path, 'again');
    await mkdir(existing);
    const bare = await cli(['server', 'cp', `cp-host:${drop}/from-agent.log`, existing, ...dd()]);
    expect(bare.code, bare.stderr).toBe(0);
    expect(await readFile(join(existing, 'from-agent.log'), 'utf8')).toBe('agent side\n');

    const none = await cli(['server', 'cp', `cp-host:${drop}/from-agent.log`, join(dir.path, 'no-such-dir') + '/', ...dd()]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/^error ML_ERR_USAGE: .*no-such-dir\/ is not an existing directory/m);
    expect(existsSync(join(dir.path, 'no-such-dir'))).toBe(false);
  });

  /** Runs the CLI with stderr on a pseudo-terminal (util-linux script) and stdout into a file; returns what the terminal showed. */
  async function underPty(args: string[], stdoutFile: string): Promise<string> {
    const quoted = [process.execPath, CLI, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
    const { stdout } = await promisify(execFile)('script', ['-qfec', `${quoted} > '${stdoutFile}'`, '/dev/null'], { timeout: 60_000 });
    return stdout;
  }

  const hasScript = ['/usr/bin/script', '/bin/script'].some((p) => existsSync(p));
  // Skipped where util-linux's script(1) is missing: without a pseudo-terminal there is no TTY to test.
  it.skipIf(!hasScript)('shows bytes, rate and ETA on stderr when it is a terminal (hashing, sending, receiving), never on a pipe; stdout stays the result', async () => {
    const big = join(local, 'big.bin');
    await writeFile(big, randomBytes(8 * 1024 * 1024));
    const jsonOut = join(dir.path, 'push.json');
    const shown = await underPty(['server', 'cp', big, `cp-host:${drop}/`, '--json', ...dd()], jsonOut);
    expect(shown).toMatch(/hashing 8\.0 MiB \/ 8\.0 MiB {2}100%/);
    expect(shown).toMatch(/sending 8\.0 MiB \/ 8\.0 MiB {2}100%/);
    expect(shown).toMatch(/sending [^\r\n]* \d+\.\d (B|KiB|MiB|GiB)\/s/);
    expect(shown).toMatch(/\r/);
    // stdout (redirected to a file) is the one JSON result, with no progress in it.
    const result = await readFile(jsonOut, 'utf8');
    expect(result.trim().split('\n')).toHaveLength(1);
    expect(JSON.parse(result)).toMatchObject({ size: 8 * 1024 * 1024 });

    const pulled = await underPty(['server', 'cp', `cp-host:${drop}/big.bin`, join(dir.path, 'big-back.bin'), ...dd()], join(dir.path, 'pull.out'));
    expect(pulled).toMatch(/receiving 8\.0 MiB/);
    expect(await readFile(join(dir.path, 'pull.out'), 'utf8')).toBe('');

    // Not a terminal: no progress at all, only the summary line.
    const piped = await cli(['server', 'cp', big, `cp-host:${drop}/piped.bin`, ...dd()]);
    expect(piped.code, piped.stderr).toBe(0);
    // eslint-disable-next-line no-control-regex -- no terminal escapes at all on a pipe
    expect(piped.stderr).not.toMatch(/hashing|sending|\r|\x1b/);
    expect(piped.stderr).toMatch(/^8388608 bytes, sha256 [0-9a-f]{64}\n$/);
    expect(piped.stdout).toBe('');
  }, 90_000);
});
