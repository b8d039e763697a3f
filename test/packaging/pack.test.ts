import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * What `npm pack` ships installs and runs: the tarball holds the built CLI, the docs, the units and
 * the LICENSE, and no benchmark or test; installed into an empty prefix (dependencies resolved from
 * the registry's metadata, their tarballs from npm's cache where `npm ci` put them), `meshlink
 * --version` and `meshlink demo` run from it. The pack skips its prepack build, because `npm test`
 * has just built dist/.
 */
const root = resolve(import.meta.dirname, '..', '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string; version: string; license: string };
// Asynchronous: a synchronous spawn would block the test worker (and its reports) for minutes.
function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    execFile(cmd, args, { cwd, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, npm_config_fund: 'false', npm_config_audit: 'false' } }, (err, stdout, stderr) => {
      resolvePromise({ status: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

describe('the npm package', () => {
  let dir: string;
  let tarball: string;
  let files: string[];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ml-pack-'));
    const packed = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], root, 120_000);
    expect(packed.status, packed.stderr).toBe(0);
    const info = (JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>)[0]!;
    tarball = join(dir, info.filename);
    files = info.files.map((f) => f.path);
  }, 150_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('ships the CLI, docs, units and LICENSE, and no benchmarks or tests', () => {
    expect(files).toEqual(expect.arrayContaining(['package.json', 'README.md', 'LICENSE', 'dist/src/cli/main.js', 'docs/ADMIN-API.md', 'packaging/systemd/meshlink-agent.service']));
    expect(files.filter((f) => f.startsWith('dist/bench/') || f.startsWith('test/') || f.startsWith('bench/') || f.startsWith('src/'))).toEqual([]);
    expect(pkg.license).toBe('Apache-2.0');
    expect(readFileSync(join(root, 'LICENSE'), 'utf8')).toMatch(/Apache License\s+Version 2\.0, January 2004/);
  });

  it('installs into an empty prefix, and meshlink --version and meshlink demo run from it', async () => {
    const prefix = join(dir, 'prefix');
    // better-sqlite3 builds against Node's headers, as in `npm ci`.
    const installed = await run('npm', ['install', '--prefer-offline', '--no-save', '--prefix', prefix, tarball], dir, 1_000_000);
    expect(installed.status, `${installed.stdout}\n${installed.stderr}`).toBe(0);
    const bin = join(prefix, 'node_modules', '.bin', 'meshlink');
    expect(existsSync(bin)).toBe(true);
    const version = await run(bin, ['--version'], dir, 30_000);
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout).toContain(pkg.version);
    const demo = await run(bin, ['demo'], dir, 240_000);
    expect(demo.status, demo.stderr).toBe(0);
    expect(demo.stdout).toMatch(/the agent is connected over one outbound mTLS WebSocket/);
    expect(demo.stdout).toMatch(/online/);
  }, 1_300_000);
});
