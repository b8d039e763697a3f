import { execFile, spawn } from 'node:child_process';
import { AdminClient } from '../../src/admin-api/client.js';
import { showUpgrade } from '../../src/admin-api/routes.js';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, createToken, freePort, startServerProc, tempDir, waitFor, type ServerProc } from '../e2e/harness.js';

const sha = (b: string | Buffer): string => createHash('sha256').update(b).digest('hex');
const run = promisify(execFile);

/** A process of the agent bundle (not the npm CLI): `node <bundle> agent run …`. */
function spawnBundle(bundle: string, args: string[]) {
  const child = spawn(process.execPath, [bundle, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code, signal) => r(code ?? (signal ? -1 : null))));
  return { child, exited, output: () => out };
}

/** The real CLI with stdin. */
function cliWithInput(args: string[], input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((r) => {
    const child = spawn(process.execPath, [resolve('dist/src/cli/main.js'), ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('exit', (code) => r({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

/**
 * Operations through the real CLI against a real server process and an agent that runs from the
 * esbuild single-file bundle, ending with signed self-upgrades of that bundle: one whose new build
 * exits at start (rolled back by the agent itself), one that works (installed, restart on exit 75),
 * and the refusals of `upgrade set`.
 */
describe('ops through the real CLI and the agent bundle', () => {
  let srvDir: { path: string; cleanup(): Promise<void> };
  let work: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let nodeId: string;
  let stateDir: string;
  let area: string;
  let bundle: string;
  let v1: Buffer;
  let v2: Buffer;
  let broken: string;
  let releaseKey: string;
  let agent: ReturnType<typeof spawnBundle>;
  const dd = (): string[] => ['--data-dir', server.dataDir];
  const keyFile = (): string => join(work.path, 'release.key');
  const agentArgs = (): string[] => ['agent', 'run', '--state-dir', stateDir, '--allow-exec', '--transfer-dir', area, '--log-level', 'info'];

  beforeAll(async () => {
    srvDir = await tempDir('ml-ops-e2e-srv-');
    work = await tempDir('ml-ops-e2e-');
    stateDir = join(work.path, 'state');
    area = join(work.path, 'area');
    await mkdir(area);
    // Builds of the same sources, told apart by a banner marker and a baked version.
    bundle = join(work.path, 'meshlink-agent.mjs');
    const v2Path = join(work.path, 'next.mjs');
    const brokenSrc = join(work.path, 'broken-src.mjs');
    await run(process.execPath, ['scripts/bundle-agent.mjs', '--out', bundle, '--marker', 'one']);
    await run(process.execPath, ['scripts/bundle-agent.mjs', '--out', v2Path, '--marker', 'two', '--version', '0.2.0']);
    await run(process.execPath, ['scripts/bundle-agent.mjs', '--out', brokenSrc, '--marker', 'broken', '--version', '0.1.5']);
    [v1, v2] = await Promise.all([readFile(bundle), readFile(v2Path)]);
    // A real, signed bundle that exits at start: its first statement after the header ends the process.
    const lines = (await readFile(brokenSrc, 'utf8')).split('\n');
    broken = join(work.path, 'broken.mjs');
    await writeFile(broken, [...lines.slice(0, 2), 'process.exit(3);', ...lines.slice(2)].join('\n'));
    // The operator's release key, made and used through the CLI.
    const keygen = await cli(['release', 'keygen', '--out', keyFile(), '--json']);
    expect(keygen.code).toBe(0);
    releaseKey = (JSON.parse(keygen.stdout) as { publicKey: string }).publicKey;
    for (const b of [v2Path, broken]) expect((await cli(['release', 'sign', b, '--key', keyFile()])).code).toBe(0);
    server = await startServerProc(srvDir.path, await freePort(), ['--release-key', releaseKey]);
    // Enrolled with the release key pinned (the agent keeps it in its state dir).
    const t = await createToken(server.dataDir);
    const enrolled = await cli(['agent', 'enroll', '--server', server.url, '--token', t.token, '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', 'ops-e2e-host', '--release-key', releaseKey, '--json']);
    expect(enrolled.code).toBe(0);
    nodeId = (JSON.parse(enrolled.stdout) as { nodeId: string }).nodeId;
    agent = spawnBundle(bundle, agentArgs());
    await waitFor('agent connected', async () => agent.output().includes('"msg":"connected"'), 30_000);
  }, 180_000);

  afterAll(async () => {
    agent?.child.kill('SIGKILL');
    await server?.stop('SIGKILL');
    await srvDir?.cleanup();
    await work?.cleanup();
  });

  it('the bundle’s --version names its build: the SHA-256 of the file, as its agent reports it', async () => {
    const { stdout } = await run(process.execPath, [bundle, '--version']);
    expect(stdout.trim()).toMatch(new RegExp(`^meshlink \\S+ \\(build ${sha(v1)}, node v\\d+\\.\\d+\\.\\d+\\)$`));
  });

  it('action: ping by hostname, diagnostics as JSON', async () => {
    const ping = await cli(['server', 'action', 'ops-e2e-host', 'ping', ...dd()]);
    expect(ping).toMatchObject({ code: 0, stdout: 'pong\n' });
    const diag = await cli(['server', 'action', nodeId, 'diagnostics', '--json', ...dd()]);
    expect(diag.code).toBe(0);
    const r = JSON.parse(diag.stdout) as { exitCode: number; output: string };
    expect(JSON.parse(r.output)).toMatchObject({ versions: { agent: '0.1.0', buildId: sha(v1) }, connection: { state: 'connected' } });
    // reconcile: the agent's own checks plus the mesh reconciler `agent run` registers.
    const rec = await cli(['server', 'action', nodeId, 'reconcile', '--json', ...dd()]);
    const report = JSON.parse((JSON.parse(rec.stdout) as { output: string }).output) as { ok: boolean; checks: Array<{ name: string; ok: boolean; detail: string }> };
    expect(report.checks.map((c) => c.name)).toEqual(['identity', 'server', 'mesh']);
    expect(report.checks.find((c) => c.name === 'mesh')).toMatchObject({ ok: true, detail: 'in sync' });
    const missing = await cli(['server', 'action', 'no-such-host', 'ping', ...dd()]);
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/^error ML_ERR_NODE_NOT_FOUND/);
  });

  it('exec: stdin in, stdout and stderr out, the CLI exits with the command’s exit code', async () => {
    const r = await cliWithInput(['server', 'exec', 'ops-e2e-host', ...dd(), '--', 'sh', '-c', 'tr a-z A-Z; echo warn >&2; exit 5'], 'hello\n');
    expect(r).toMatchObject({ code: 5, stdout: 'HELLO\n', stderr: 'warn\n' });
  });

  it('cp both ways, and logs', async () => {
    const data = randomBytes(2 * 1024 * 1024);
    await writeFile(join(work.path, 'local.bin'), data);
    const up = await cli(['server', 'cp', join(work.path, 'local.bin'), `ops-e2e-host:${join(area, 'remote.bin')}`, '--json', ...dd()]);
    expect(up.code).toBe(0);
    expect(JSON.parse(up.stdout)).toMatchObject({ size: data.length, sha256: sha(data) });
    const down = await cli(['server', 'cp', `ops-e2e-host:${join(area, 'remote.bin')}`, join(work.path, 'back.bin'), ...dd()]);
    expect(down.code).toBe(0);
    expect(sha(await readFile(join(work.path, 'back.bin')))).toBe(sha(data));
    const refused = await cli(['server', 'cp', join(work.path, 'local.bin'), `ops-e2e-host:/etc/meshlink-test`, ...dd()]);
    expect(refused.code).toBe(8);
    expect(refused.stderr).toMatch(/ML_ERR_OPS_PATH_FORBIDDEN/);
    const logs = await cli(['server', 'logs', 'ops-e2e-host', '--lines', '3', ...dd()]);
    expect(logs.code).toBe(0);
    expect(logs.stdout.trim().split('\n')).toHaveLength(3);
  });

  it('logs --follow streams until interrupted; then the agent has no follower left', async () => {
    const follow = spawn(process.execPath, [resolve('dist/src/cli/main.js'), 'server', 'logs', 'ops-e2e-host', '--follow', '--lines', '1', ...dd()], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    follow.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((r) => follow.once('exit', r));
    const followers = async (): Promise<number> => {
      const d = await cli(['server', 'action', nodeId, 'diagnostics', '--json', ...dd()]);
      return (JSON.parse((JSON.parse(d.stdout) as { output: string }).output) as { ops: { logFollowers: number } }).ops.logFollowers;
    };
    // Each action makes the agent log an 'operation finished' line, which the follower then prints.
    await waitFor('follower attached', async () => (await followers()) === 1, 30_000);
    await cli(['server', 'action', nodeId, 'ping', ...dd()]);
    await waitFor('followed lines', async () => out.includes('"target":"ping"'), 30_000);
    follow.kill('SIGINT');
    expect(await exited).toBe(0);
    await waitFor('follower gone', async () => (await followers()) === 0, 30_000);
  });

  it('audit lists each operation with the OS user as actor', async () => {
    const r = await cli(['server', 'audit', '--json', ...dd()]);
    const list = JSON.parse(r.stdout) as Array<{ source: string; actor: string; operation: string; target: string | null; result: string; nodeId: string }>;
    const ops = list.filter((a) => a.source === 'admin').map((a) => `${a.operation}:${a.target ?? ''}:${a.result}`);
    expect(ops).toEqual(expect.arrayContaining(['action:ping:exit:0', 'exec:sh:exit:5', 'push:' + join(area, 'remote.bin') + ':ok', 'pull:' + join(area, 'remote.bin') + ':ok']));
    expect(list.find((a) => a.source === 'admin' && a.operation === 'exec')!.actor).toMatch(/\(uid \d+\)$/);
    const human = await cli(['server', 'audit', ...dd()]);
    expect(human.stdout.split('\n')[0]).toMatch(/^TIME\s+SOURCE\s+ACTOR\s+OPERATION/);
  });

  it('release keygen writes the private key 0600 and the public key next to it', async () => {
    expect((await stat(keyFile())).mode & 0o777).toBe(0o600);
    expect((await readFile(`${keyFile()}.pub`, 'utf8')).trim()).toBe(releaseKey);
  });

  it('upgrade set refuses a file that is not a bundle and a bundle without a signature, each with its code', async () => {
    await writeFile(join(work.path, 'six.txt'), 'hello\n');
    const text = await cli(['server', 'upgrade', 'set', join(work.path, 'six.txt'), ...dd()]);
    expect(text.code).toBe(2);
    expect(text.stderr).toMatch(/^error ML_ERR_UPGRADE_NOT_BUNDLE/);
    const unsigned = await cli(['server', 'upgrade', 'set', bundle, ...dd()]);
    expect(unsigned.code).toBe(8);
    expect(unsigned.stderr).toMatch(/^error ML_ERR_UPGRADE_UNSIGNED/);
    const status = await new AdminClient(join(server.dataDir, 'admin.sock')).call(showUpgrade, {});
    expect(status.current).toBeNull();
  });

  it('a signed build that exits at start fails its trial: the agent keeps its own build by itself, reports ML_ERR_UPGRADE_HEALTH and does not retry', async () => {
    const set = await cli(['server', 'upgrade', 'set', broken, '--json', ...dd()]);
    expect(set.code).toBe(0);
    const brokenId = sha(await readFile(broken));
    expect(JSON.parse(set.stdout)).toMatchObject({ buildId: brokenId, version: '0.1.5', notified: 1 });
    expect(await agent.exited).toBe(75);
    expect(agent.output()).toMatch(/the new build exited \(code 3\) before it connected/);
    expect(sha(await readFile(bundle))).toBe(sha(v1));
    // What systemd does on 75: start the same command again; it is the old build, and it reports.
    agent = spawnBundle(bundle, agentArgs());
    const admin = new AdminClient(join(server.dataDir, 'admin.sock'));
    await waitFor('failure reported', async () => (await admin.call(showUpgrade, {})).nodes.find((n) => n.nodeId === nodeId && n.buildId === brokenId && n.state === 'failed'), 30_000);
    expect((await admin.call(showUpgrade, {})).nodes.find((n) => n.nodeId === nodeId)).toMatchObject({ code: 'ML_ERR_UPGRADE_HEALTH' });
    // Still offered in every welcome, but not tried again: the agent stays up on its build.
    const diag = await cli(['server', 'action', nodeId, 'diagnostics', '--json', ...dd()]);
    expect(JSON.parse((JSON.parse(diag.stdout) as { output: string }).output)).toMatchObject({ versions: { buildId: sha(v1) } });
    expect(agent.child.exitCode).toBeNull();
    const human = await cli(['server', 'upgrade', 'status', ...dd()]);
    expect(human.stdout).toContain('ML_ERR_UPGRADE_HEALTH');
  });

  it('upgrade set: a signed newer build connects on trial, replaces the bundle (previous kept), exits 75; restarted, it runs the new build, reports applied and does not loop', async () => {
    const set = await cli(['server', 'upgrade', 'set', join(work.path, 'next.mjs'), '--json', ...dd()]);
    expect(set.code).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({ buildId: sha(v2), version: '0.2.0', notified: 1 });
    expect(await agent.exited).toBe(75);
    expect(sha(await readFile(bundle))).toBe(sha(v2));
    expect(sha(await readFile(`${bundle}.previous`))).toBe(sha(v1));
    agent = spawnBundle(bundle, agentArgs());
    await waitFor('agent reconnected', async () => agent.output().includes('"msg":"connected"'), 30_000);
    const diag = await cli(['server', 'action', nodeId, 'diagnostics', '--json', ...dd()]);
    expect(JSON.parse((JSON.parse(diag.stdout) as { output: string }).output)).toMatchObject({ versions: { agent: '0.2.0', buildId: sha(v2) } });
    const admin = new AdminClient(join(server.dataDir, 'admin.sock'));
    await waitFor('applied reported', async () => (await admin.call(showUpgrade, {})).nodes.find((n) => n.nodeId === nodeId && n.buildId === sha(v2) && n.state === 'applied'), 30_000);
    expect(agent.child.exitCode).toBeNull();
  });

  it('upgrade set refuses a downgrade unless forced', async () => {
    expect((await cli(['release', 'sign', bundle.replace(/meshlink-agent\.mjs$/, 'meshlink-agent.mjs.previous'), '--key', keyFile()])).code).toBe(0);
    const down = await cli(['server', 'upgrade', 'set', `${bundle}.previous`, '--percent', '0', ...dd()]);
    expect(down.code).toBe(8);
    expect(down.stderr).toMatch(/^error ML_ERR_UPGRADE_DOWNGRADE/);
    const forced = await cli(['server', 'upgrade', 'set', `${bundle}.previous`, '--percent', '0', '--allow-downgrade', '--json', ...dd()]);
    expect(forced.code).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ version: '0.1.0', allowDowngrade: true });
  });
});
