import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeAgentStatus } from '../../src/agent/state/status-file.js';
import { spkiPinOf } from '../../src/contract/ca-pin.js';
import { startEnrollServer, type EnrollServer } from './helpers/enroll-server.js';
import { createTestCa, tempDirs } from './helpers/fixtures.js';
import { unprivilegedAgentCli } from '../helpers/unprivileged.js';

const CLI = resolve('dist/src/cli/main.js');

interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs the built CLI as a child process (async: the test server lives in this event loop); `cli` is
 * the command that starts it (another for the unprivileged bundle).
 */
function runCli(args: string[], env: Record<string, string> = {}, cli: readonly string[] = [process.execPath, CLI]): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const [command, ...cliArgs] = cli;
    const child = spawn(command!, [...cliArgs, ...args], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

describe('meshlink agent CLI (child processes of dist/src/cli/main.js)', () => {
  const dirs = tempDirs();
  let server: EnrollServer;
  let seq = 0;

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` before the tests`);
    server = await startEnrollServer();
  });
  afterAll(async () => {
    await server.close();
    dirs.cleanup();
  });

  function token(nodeId: string | null = null): string {
    const t = `cli-token-${++seq}-${'x'.repeat(16)}`;
    server.addToken(t, nodeId);
    return t;
  }

  it('enroll prints node id and expiry; status --json reports the identity and the connection', async () => {
    const stateDir = join(dirs.make(), 'agent');
    const t = token();
    const res = await runCli(['agent', 'enroll', '--server', server.url, '--token', t, '--ca-pin', server.caPin,
      '--state-dir', stateDir, '--hostname', 'cli-host.example', '--san', '10.0.0.9', '--log-level', 'info']);
    expect(res.code).toBe(0);
    const nodeId = /enrolled as node (\S+)/.exec(res.stdout)?.[1];
    expect(nodeId).toMatch(/^node-/);
    expect(res.stdout).toMatch(/valid until \d{4}-\d\d-\d\dT/);
    // stdout is the result only; the next step and the info logs (JSON lines) went to stderr; the token appears nowhere
    expect(res.stdout).not.toContain('next:');
    expect(res.stderr).toContain(`next: start the agent: meshlink agent run --state-dir ${stateDir}\n`);
    expect(res.stderr).toContain('systemctl enable --now meshlink-agent');
    expect(res.stdout).not.toContain('"level"');
    // The logs (JSON lines, written asynchronously: in any order with the advice) and the advice lines, nothing else.
    const advice = res.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{"level":'));
    expect(advice[0]).toMatch(/^next: start the agent/);
    expect(advice.every((l) => /^(next: |\s{6}|no release key pinned|release key\(s\) pinned)/.test(l))).toBe(true);
    expect(res.stderr).toContain('"msg":"enrolled"');
    expect(res.stdout + res.stderr).not.toContain(t);
    expect(server.requests.filter((r) => r.path === '/v1/enroll').some((r) => r.body.includes(t))).toBe(true);
    expect(statSync(join(stateDir, 'key.pem')).mode & 0o777).toBe(0o600);
    expect(statSync(stateDir).mode & 0o777).toBe(0o700);

    const status = await runCli(['agent', 'status', '--state-dir', stateDir, '--json']);
    expect(status.code).toBe(0);
    const lines = status.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const report = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(report).toMatchObject({
      enrolled: true,
      stateDir,
      nodeId,
      server: server.url,
      hostname: 'cli-host.example',
      sans: ['10.0.0.9'],
      certExpired: false,
      connection: { state: 'not running' },
    });
    expect(report.certSerial).toMatch(/^[0-9A-F]+$/);
    expect(Date.parse(String(report.certNotAfter))).toBeGreaterThan(Date.now());

    // a running agent's status.json (this test process stands in for it: its pid is alive)
    const since = new Date().toISOString();
    await writeAgentStatus(stateDir, { state: 'connected', since, pid: process.pid });
    const live = JSON.parse((await runCli(['agent', 'status', '--state-dir', stateDir, '--json'])).stdout) as { connection: unknown };
    expect(live.connection).toEqual({ state: 'connected', since, pid: process.pid });

    const human = await runCli(['agent', 'status', '--state-dir', stateDir]);
    expect(human.code).toBe(0);
    expect(human.stdout).toContain(`node id:      ${nodeId}`);
    expect(human.stdout).toContain(`connection:   connected since ${since}`);
  });

  it('wrong pin exits 4 with `error ML_ERR_CA_PIN_MISMATCH` naming the seen pin; nothing written', async () => {
    const parent = dirs.make();
    const stateDir = join(parent, 'agent');
    const wrong = spkiPinOf((await createTestCa()).certPem);
    const t = token();
    const res = await runCli(['agent', 'enroll', '--server', server.url, '--token', t, '--ca-pin', wrong, '--state-dir', stateDir, '--hostname', 'h.example']);
    expect(res.code).toBe(4);
    expect(res.stderr).toMatch(/^error ML_ERR_CA_PIN_MISMATCH: .*/);
    expect(res.stderr).toContain(server.caPin);
    expect(res.stdout + res.stderr).not.toContain(t);
    expect(readdirSync(parent)).toEqual([]);
  });

  it('--ca-pin takes several pins, comma-separated or repeated (a CA rotation in progress): any one matching enrolls', async () => {
    const other = spkiPinOf((await createTestCa()).certPem);
    const third = spkiPinOf((await createTestCa()).certPem);
    const comma = await runCli(['agent', 'enroll', '--server', server.url, '--token', token(), '--ca-pin', `${other},${server.caPin}`, '--state-dir', join(dirs.make(), 'a'), '--hostname', 'h.example', '--json']);
    expect(comma.code, comma.stderr).toBe(0);
    const repeated = await runCli(['agent', 'enroll', '--server', server.url, '--token', token(), '--ca-pin', other, '--ca-pin', `${third}, ${server.caPin}`, '--state-dir', join(dirs.make(), 'b'), '--hostname', 'h.example', '--json']);
    expect(repeated.code, repeated.stderr).toBe(0);
    const none = await runCli(['agent', 'enroll', '--server', server.url, '--token', token(), '--ca-pin', `${other},${third}`, '--state-dir', join(dirs.make(), 'c'), '--hostname', 'h.example']);
    expect(none.code).toBe(4);
    const malformed = await runCli(['agent', 'enroll', '--server', server.url, '--token', token(), '--ca-pin', `${server.caPin},sha256:nothex`, '--state-dir', join(dirs.make(), 'd'), '--hostname', 'h.example']);
    expect(malformed.code).toBe(2);
    expect(malformed.stderr).toMatch(/^error ML_ERR_PIN_FORMAT: /m);
  });

  it('already enrolled exits 5; --force re-enrolls; refused token exits 3 with the server code', async () => {
    const stateDir = dirs.make();
    const common = ['--server', server.url, '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', 'h.example'];
    expect((await runCli(['agent', 'enroll', '--token', token(), ...common])).code).toBe(0);
    const again = await runCli(['agent', 'enroll', '--token', token(), ...common]);
    expect(again.code).toBe(5);
    expect(again.stderr).toMatch(/^error ML_ERR_ALREADY_ENROLLED: /);
    expect((await runCli(['agent', 'enroll', '--token', token(), '--force', '--json', ...common])).code).toBe(0);
    const refused = await runCli(['agent', 'enroll', '--token', 'not-a-real-token', '--force', ...common]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toMatch(/^error ML_ERR_TOKEN_INVALID: .*HTTP 401/);
    expect(refused.stderr).not.toContain('not-a-real-token');
  });

  it('--json prints one object; the token may come from MESHLINK_ENROLL_TOKEN; MESHLINK_STATE_DIR is the default state dir', async () => {
    const stateDir = dirs.make();
    const t = token();
    const res = await runCli(['agent', 'enroll', '--server', server.url, '--ca-pin', server.caPin, '--hostname', 'env-host.example', '--json'],
      { MESHLINK_ENROLL_TOKEN: t, MESHLINK_STATE_DIR: stateDir });
    expect(res.code).toBe(0);
    const out = JSON.parse(res.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({ server: server.url, caPin: server.caPin, stateDir });
    expect(res.stderr).not.toContain('next:'); // --json: nothing extra, not even on stderr
    const status = JSON.parse((await runCli(['agent', 'status', '--json'], { MESHLINK_STATE_DIR: stateDir })).stdout) as Record<string, unknown>;
    expect(status.nodeId).toBe(out.nodeId);
    expect(status.certSerial).toBe(out.certSerial);
  });

  it('usage errors exit 2 with `error ML_ERR_USAGE` or the validation code', async () => {
    const stateDir = dirs.make();
    const noPin = await runCli(['agent', 'enroll', '--server', server.url, '--token', token(), '--state-dir', stateDir]);
    expect(noPin.code).toBe(2);
    expect(noPin.stderr).toMatch(/^error ML_ERR_USAGE: at least one --ca-pin/);
    const badPin = await runCli(['agent', 'enroll', '--server', server.url, '--token', token(), '--ca-pin', 'sha256:XYZ', '--state-dir', stateDir]);
    expect(badPin.code).toBe(2);
    expect(badPin.stderr).toMatch(/^error ML_ERR_PIN_FORMAT: /);
    const http = await runCli(['agent', 'enroll', '--server', 'http://127.0.0.1:1', '--token', token(), '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', 'h.example']);
    expect(http.code).toBe(2);
    expect(http.stderr).toMatch(/^error ML_ERR_CONFIG: .*server: must use https/);
    const unknown = await runCli(['agent', 'enroll', '--what']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^error ML_ERR_USAGE: /);
    expect((await runCli(['agent'])).code).toBe(2);
    expect((await runCli(['agent', 'frobnicate'])).code).toBe(2);
    expect((await runCli(['agent', 'enroll', '--help'])).code).toBe(0);
    expect(readdirSync(stateDir)).toEqual([]);
  });

  it('status on a state dir it cannot read exits 7 with ML_ERR_STATE_ACCESS (as uid 65534, wherever the checkout lives)', async (ctx) => {
    const cli = await unprivilegedAgentCli();
    if ('skip' in cli) return ctx.skip(cli.skip);
    try {
      const stateDir = dirs.make(); // mkdtemp: 0700, owned by root
      symlinkSync('generations/x', join(stateDir, 'current'));
      const res = await runCli(['agent', 'status', '--state-dir', stateDir], {}, [...cli.argv]);
      expect(res.code).toBe(7);
      expect(res.stderr).toMatch(/^error ML_ERR_STATE_ACCESS: /);
    } finally {
      cli.cleanup();
    }
  });

  it('a proxy URL that is not http:// exits 2 with ML_ERR_CONFIG naming its source, never its value', async () => {
    const stateDir = dirs.make();
    const enrollArgs = ['agent', 'enroll', '--server', server.url, '--token', token(), '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', 'h.example'];
    const flag = await runCli([...enrollArgs, '--proxy', 'socks5://u:secret-1@127.0.0.1:1080']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/^error ML_ERR_CONFIG: --proxy: only http:\/\/ proxies are supported/);
    const env = await runCli(enrollArgs, { ALL_PROXY: 'https://u:secret-2@127.0.0.1:3128' });
    expect(env.code).toBe(2);
    expect(env.stderr).toMatch(/^error ML_ERR_CONFIG: ALL_PROXY: only http:\/\/ proxies/);
    const run = await runCli(['agent', 'run', '--state-dir', stateDir, '--proxy', 'http://u:secret-3@h:1/path']);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/ML_ERR_CONFIG: --proxy: a proxy URL is http:\/\/\[user:password@\]host:port/);
    expect(flag.stderr + env.stderr + run.stderr + run.stdout).not.toMatch(/secret-/);
    expect(readdirSync(stateDir)).toEqual([]);
  });

  it('an unreachable server exits 6', async () => {
    const gone = await startEnrollServer();
    await gone.close();
    const res = await runCli(['agent', 'enroll', '--server', gone.url, '--token', token(), '--ca-pin', gone.caPin, '--state-dir', dirs.make(), '--hostname', 'h.example']);
    expect(res.code).toBe(6);
    expect(res.stderr).toMatch(/^error ML_ERR_SERVER_UNREACHABLE: /);
  });
});
