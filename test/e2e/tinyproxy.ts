import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { freePort, waitFor } from './harness.js';

/**
 * A real CONNECT proxy for the proxy tests: tinyproxy (Debian package `tinyproxy`, installed by
 * .ci/run), with its own config in the test's temp dir, listening on 127.0.0.1:<free port>, logging
 * every connection and request line to a file there, run in the foreground (-d) as a child process.
 */

/** Why the tests cannot run here, or null when tinyproxy is installed. */
export const TINYPROXY_MISSING: string | null = (() => {
  const r = spawnSync('tinyproxy', ['-v'], { encoding: 'utf8', timeout: 5_000 });
  return r.error === undefined && r.status === 0 ? null : 'tinyproxy is not installed (apt-get install tinyproxy)';
})();

export interface TinyproxyOptions {
  /** Ports CONNECT may reach (tinyproxy ConnectPort); default any. */
  connectPorts?: number[];
  /** Basic authentication the proxy requires (tinyproxy BasicAuth). */
  basicAuth?: { user: string; password: string };
  /** Listen on this port (to start a proxy an agent already waits for); default a free one. */
  port?: number;
}

export interface Tinyproxy {
  readonly port: number;
  /** http://127.0.0.1:PORT, without credentials. */
  readonly url: string;
  readonly logPath: string;
  /** The CONNECT targets in its log so far, e.g. ['127.0.0.1:8443']. */
  connects(): Promise<string[]>;
  stop(): Promise<void>;
}

export async function startTinyproxy(dir: string, options: TinyproxyOptions = {}): Promise<Tinyproxy> {
  const port = options.port ?? (await freePort());
  const logPath = join(dir, `tinyproxy-${port}.log`);
  const configPath = join(dir, `tinyproxy-${port}.conf`);
  const lines = [
    `Port ${port}`,
    'Listen 127.0.0.1',
    'Timeout 60',
    `LogFile "${logPath}"`,
    // Connect level logs each connection and its request line ("Request (file descriptor 5): CONNECT host:port HTTP/1.1").
    'LogLevel Connect',
    'MaxClients 50',
    'Allow 127.0.0.1',
    ...(options.connectPorts ?? []).map((p) => `ConnectPort ${p}`),
    ...(options.basicAuth ? [`BasicAuth ${options.basicAuth.user} ${options.basicAuth.password}`] : []),
  ];
  await writeFile(configPath, `${lines.join('\n')}\n`);
  // Run as root, tinyproxy keeps the current user (it warns that it should not); as another user it
  // must still be able to write its log, so the dir is opened up (it is the test's own temp dir).
  await chmod(dir, 0o777);
  const child: ChildProcess = spawn('tinyproxy', ['-d', '-c', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await waitFor(
    `tinyproxy listening on 127.0.0.1:${port}`,
    async () => {
      if (child.exitCode !== null) throw new Error(`tinyproxy exited ${child.exitCode}: ${output}`);
      return accepts(port);
    },
    15_000,
    50,
  );
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    logPath,
    async connects() {
      const log = await readFile(logPath, 'utf8').catch(() => '');
      return [...log.matchAll(/Request \(file descriptor \d+\): CONNECT (\S+) HTTP/g)].map((m) => m[1]!);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
