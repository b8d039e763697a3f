import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cli, enrollAgent, freePort, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from '../e2e/harness.js';
import { roundTrip, tcpServer } from './helpers.js';

const run = promisify(execFile);
const CURL = '/usr/bin/curl';
// The ssh test runs an sshd of its own; it needs root to create sshd's /run/sshd when it is missing.
const SSHD = ['/usr/sbin/sshd', '/usr/bin/sshd'].find((p) => existsSync(p) && (existsSync('/run/sshd') || process.getuid?.() === 0));

/** `server tunnel` as a real process, once it printed its JSON line. */
async function startTunnel(args: string[]): Promise<{ proc: Proc; port: number }> {
  const proc = spawnCli(['server', 'tunnel', ...args, '--json']);
  const line = await waitFor('tunnel listening', async () => proc.output().split('\n').find((l) => l.startsWith('{"listen"')), 30_000, 50);
  return { proc, port: (JSON.parse(line) as { port: number }).port };
}

/** `server tunnel --stdio` with `input` on its stdin (left open with `keepOpen`, as ssh does). */
function stdioTunnel(args: string[], input: Buffer | string, keepOpen = false): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const child: ChildProcess = spawn(process.execPath, [CLI, 'server', 'tunnel', ...args, '--stdio'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('exit', (code) => resolve({ code, stdout: Buffer.concat(out), stderr }));
    if (keepOpen) child.stdin!.write(input);
    else child.stdin!.end(input);
    child.once('exit', () => child.stdin!.destroy());
  });
}

/**
 * Tunnels through real processes: a server, an agent (`agent run --allow-tunnel`), `server tunnel`
 * listening locally and with --stdio; curl fetches 100 MB from an HTTP server on the agent's side.
 */
describe('server tunnel through the real CLI', () => {
  let srvDir: { path: string; cleanup(): Promise<void> };
  let work: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let agent: Proc;
  let nodeId: string;
  let http: HttpServer;
  let httpPort: number;
  let echo: Awaited<ReturnType<typeof tcpServer>>;
  let bigSha: string;
  let sshPort: number;
  const BIG = 100 * 1024 * 1024;
  const dd = (): string[] => ['--data-dir', server.dataDir];

  beforeAll(async () => {
    srvDir = await tempDir('ml-tunnel-e2e-srv-');
    work = await tempDir('ml-tunnel-e2e-');
    const big = join(work.path, 'big.bin');
    // 100 MB of random bytes (written in 1 MiB blocks: no 100 MB buffer in the test process).
    const hash = createHash('sha256');
    for (let i = 0; i < BIG / (1024 * 1024); i++) {
      const block = randomBytes(1024 * 1024);
      hash.update(block);
      await writeFile(big, block, { flag: i === 0 ? 'w' : 'a' });
    }
    bigSha = hash.digest('hex');
    http = createHttpServer((req, res) => {
      if (req.url === '/big') {
        res.writeHead(200, { 'content-length': BIG, 'content-type': 'application/octet-stream' });
        createReadStream(big).pipe(res);
      } else res.end('hello from the node\n');
    });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', () => r()));
    httpPort = (http.address() as AddressInfo).port;
    echo = await tcpServer((s) => {
      s.on('data', (d: Buffer) => s.write(d));
      s.on('end', () => s.end('bye\n'));
      s.on('error', () => {});
    });
    server = await startServerProc(srvDir.path, await freePort());
    sshPort = await freePort(); // allowed for the ssh test (an sshd of its own, if this machine has one)
    const stateDir = join(work.path, 'state');
    ({ nodeId } = await enrollAgent(server, stateDir, 'tunnel-e2e-host'));
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir, '--allow-tunnel', `127.0.0.1:${httpPort},127.0.0.1:${echo.port}`, '--allow-tunnel', `127.0.0.1:${sshPort}`]);
    await agent.waitForLog('connected', 30_000);
  }, 180_000);

  afterAll(async () => {
    await agent?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    await new Promise((r) => (http ? http.close(r) : r(undefined)));
    await echo?.close();
    await srvDir?.cleanup();
    await work?.cleanup();
  });

  it('curl fetches 100 MB through `server tunnel`, byte-exact; the connection is audited with its bytes', async () => {
    const t = await startTunnel([`${nodeId}:${httpPort}`, ...dd()]);
    try {
      expect(t.proc.output()).toContain(`"target":"127.0.0.1:${httpPort}"`);
      const out = join(work.path, 'fetched.bin');
      await run(CURL, ['-sS', '--fail', '--max-time', '120', '-o', out, `http://127.0.0.1:${t.port}/big`], { timeout: 150_000 });
      expect((await stat(out)).size).toBe(BIG);
      const got = createHash('sha256').update(await readFile(out)).digest('hex');
      expect(got).toBe(bigSha);
    } finally {
      expect(await t.proc.stop('SIGINT')).toBe(0);
    }
    const audit = await waitFor('tunnel audited', async () => {
      const r = await cli(['server', 'audit', '--json', ...dd()]);
      const list = JSON.parse(r.stdout) as Array<{ operation: string; target: string; result: string; nodeId: string; actor: string; details: Record<string, number> | null }>;
      return list.find((a) => a.operation === 'tunnel' && a.target === `127.0.0.1:${httpPort}` && a.result === 'ok');
    });
    expect(audit.nodeId).toBe(nodeId);
    expect(audit.actor).toMatch(/\(uid \d+\)$/);
    expect(audit.details!.fromTarget).toBeGreaterThan(BIG);
    expect(audit.details!.toTarget).toBeGreaterThan(0);
    expect(typeof audit.details!.durationMs).toBe('number');
  }, 200_000);

  it('50 concurrent connections, each byte-exact, with half-close (the client shuts its write side and still reads the reply)', async () => {
    const t = await startTunnel([`${nodeId}:${echo.port}`, '--listen', '127.0.0.1:0', ...dd()]);
    try {
      const payloads = Array.from({ length: 50 }, (_, i) => randomBytes(100_000 + i));
      const replies = await Promise.all(payloads.map((p) => roundTrip(t.port, p)));
      replies.forEach((r, i) => expect(r.equals(Buffer.concat([payloads[i]!, Buffer.from('bye\n')])), `connection ${i}`).toBe(true));
    } finally {
      expect(await t.proc.stop('SIGTERM')).toBe(0);
    }
  }, 120_000);

  it('a target outside the allowlist is refused with ML_ERR_TUNNEL_NOT_ALLOWED (stdio: exit 8; listening: the connection is reset)', async () => {
    const r = await stdioTunnel([`${nodeId}:9`, ...dd()], 'x');
    expect(r.code).toBe(8);
    expect(r.stderr).toContain('ML_ERR_TUNNEL_NOT_ALLOWED');
    // A refused stdio tunnel exits even while its stdin stays open (ssh keeps the pipe).
    const other = await stdioTunnel([`${nodeId}:${echo.port}`, '--host', '10.0.0.1', ...dd()], 'x', true);
    expect(other.code).toBe(8);
    expect(other.stderr).toContain('ML_ERR_TUNNEL_NOT_ALLOWED');

    const t = await startTunnel([`${nodeId}:9`, ...dd()]);
    try {
      const err = await roundTrip(t.port, 'x').then(() => 'no error', (e: NodeJS.ErrnoException) => e.code);
      expect(err).toBe('ECONNRESET');
      await waitFor('error printed', async () => t.proc.output().includes('error ML_ERR_TUNNEL_NOT_ALLOWED'), 10_000, 50);
    } finally {
      await t.proc.stop('SIGINT');
    }
  }, 60_000);

  it('--stdio carries one connection over stdin/stdout, netcat-style, half-close included', async () => {
    const r = await stdioTunnel([`${nodeId}:${echo.port}`, ...dd()], 'ping over stdio\n');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe('ping over stdio\nbye\n');
  }, 60_000);

  it('usage errors exit 2; no server exits 11', async () => {
    expect((await cli(['server', 'tunnel', 'nodeonly', ...dd()])).code).toBe(2);
    expect((await cli(['server', 'tunnel', `${nodeId}:70000`, ...dd()])).code).toBe(2);
    expect((await cli(['server', 'tunnel', `${nodeId}:22`, '--stdio', '--listen', '127.0.0.1:0', ...dd()])).code).toBe(2);
    // No server on that data dir: exit 11 at once, listening or not.
    expect((await cli(['server', 'tunnel', `${nodeId}:22`, '--data-dir', work.path])).code).toBe(11);
    expect((await stdioTunnel([`${nodeId}:22`, '--data-dir', work.path], 'x')).code).toBe(11);
  });

  // An sshd of our own on loopback (keys made here), reached only through the tunnel.
  it.skipIf(!SSHD)(`ssh -o ProxyCommand='meshlink server tunnel NODE:PORT --stdio'${SSHD ? '' : ' (skipped: no sshd on this machine, or not root to create /run/sshd; CI installs openssh-server)'}`, async () => {
    const dir = join(work.path, 'ssh');
    await run('mkdir', ['-m', '700', dir]);
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host')]);
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'client')]);
    await writeFile(join(dir, 'authorized_keys'), await readFile(join(dir, 'client.pub')), { mode: 0o600 });
    const config = [`Port ${sshPort}`, 'ListenAddress 127.0.0.1', `HostKey ${join(dir, 'host')}`, `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`, `PidFile ${join(dir, 'pid')}`, 'UsePAM no', 'StrictModes no', 'PasswordAuthentication no'];
    await writeFile(join(dir, 'sshd_config'), config.join('\n') + '\n');
    // sshd insists on its privilege-separation directory (the distribution's service unit creates it).
    if (!existsSync('/run/sshd')) mkdirSync('/run/sshd', { mode: 0o755 });
    let sshdLog = '';
    const sshd = spawn(SSHD!, ['-D', '-e', '-f', join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] });
    sshd.stderr!.on('data', (c: Buffer) => (sshdLog += c.toString()));
    sshd.once('exit', (code) => (sshdLog += `\n(sshd exited with ${code})`));
    try {
      const proxy = `${process.execPath} ${CLI} server tunnel ${nodeId}:${sshPort} --stdio --data-dir ${server.dataDir}`;
      const user = (await run('id', ['-un'])).stdout.trim();
      const { stdout } = await waitFor('ssh through the tunnel', async () =>
        run('ssh', ['-F', '/dev/null', '-i', join(dir, 'client'), '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', `ProxyCommand=${proxy}`, `${user}@tunnelled`, 'echo', 'over-the-tunnel'], { timeout: 30_000 }),
        60_000,
        500,
      ).catch((err: Error) => {
        throw new Error(`${err.message}\nsshd said: ${sshdLog.slice(-2000)}`);
      });
      expect(stdout.trim()).toBe('over-the-tunnel');
    } finally {
      sshd.kill('SIGTERM');
    }
  }, 120_000);
});
