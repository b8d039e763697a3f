import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, enrollAgent, freePort, spawnCli, startServerProc, tempDir, type Proc, type ServerProc } from './harness.js';

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
});
