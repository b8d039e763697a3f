import { execFile } from 'node:child_process';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cli, freePort, startServerProc, tempDir, type ServerProc } from './harness.js';

const run = promisify(execFile);

/**
 * `server token create` prints `MESHLINK_ENROLL_TOKEN=… meshlink agent enroll …` (the token out of
 * argv), and that very line, pasted into a shell, enrolls; `agent enroll` then says what to do next
 * on stderr, and nothing but the result on stdout. Real server, real CLI, a real sh.
 */
describe('the enroll command token create prints (real processes, through sh)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let bin: string;

  beforeAll(async () => {
    dir = await tempDir('ml-enroll-cmd-');
    server = await startServerProc(join(dir.path, 'srv'), await freePort());
    // `meshlink` on PATH is this checkout's CLI, as the installed package's bin would be.
    bin = join(dir.path, 'bin');
    await run('mkdir', ['-p', bin]);
    await writeFile(join(bin, 'meshlink'), `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`);
    await chmod(join(bin, 'meshlink'), 0o755);
  }, 90_000);
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await dir?.cleanup();
  });

  /** Runs `line` plus extra arguments in sh, as an operator pasting it would. */
  async function paste(line: string, extra: string): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run('sh', ['-c', `${line} ${extra}`], { env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` }, timeout: 60_000 });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    }
  }

  it('prints the token as an environment assignment, and the pasted line enrolls; the next step goes to stderr', async () => {
    const created = await cli(['server', 'token', 'create', '--data-dir', server.dataDir]);
    expect(created.code, created.stderr).toBe(0);
    const line = created.stdout.trim();
    expect(line).toMatch(new RegExp(`^MESHLINK_ENROLL_TOKEN=[A-Za-z0-9_-]{22} meshlink agent enroll --server ${server.url.replace(/\./g, '\\.')} --ca-pin ${server.caPin}$`));
    const token = /^MESHLINK_ENROLL_TOKEN=(\S+)/.exec(line)![1]!;
    expect(line.split(' ').slice(1)).not.toContain(token);

    const stateDir = join(dir.path, 'agent-human');
    const human = await paste(line, `--state-dir ${stateDir} --hostname pasted-host`);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/^enrolled as node \S+\ncertificate \S+ valid until \S+\nstate dir \S+\n$/);
    expect(human.stderr).toContain(`next: start the agent: meshlink agent run --state-dir ${stateDir}`);
    expect(human.stderr).toContain('systemctl enable --now meshlink-agent');
    expect(human.stdout + human.stderr).not.toContain(token);
  }, 60_000);

  it('with --json, stdout is exactly one JSON document and nothing else is printed; a re-enrollment token’s line carries --force', async () => {
    const first = JSON.parse((await cli(['server', 'token', 'create', '--data-dir', server.dataDir, '--json'])).stdout) as { enrollCommand: string };
    const stateDir = join(dir.path, 'agent-json');
    const enrolled = await paste(first.enrollCommand, `--state-dir ${stateDir} --hostname json-host --json`);
    expect(enrolled.code, enrolled.stderr).toBe(0);
    const result = JSON.parse(enrolled.stdout) as { nodeId: string };
    expect(enrolled.stdout.trim().split('\n')).toHaveLength(1);
    expect(enrolled.stderr).toBe('');

    const again = JSON.parse((await cli(['server', 'token', 'create', '--data-dir', server.dataDir, '--node', result.nodeId, '--json'])).stdout) as { enrollCommand: string };
    expect(again.enrollCommand).toMatch(/^MESHLINK_ENROLL_TOKEN=\S+ meshlink agent enroll .* --force$/);
    const re = await paste(again.enrollCommand, `--state-dir ${stateDir} --hostname json-host --json`);
    expect(re.code, re.stderr).toBe(0);
    expect((JSON.parse(re.stdout) as { nodeId: string }).nodeId).toBe(result.nodeId);
  }, 60_000);
});
