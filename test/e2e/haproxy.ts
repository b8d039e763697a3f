import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { freePort, waitFor } from './harness.js';

/**
 * A real haproxy (Debian package `haproxy`, installed by .ci/run) in TCP mode in front of a server,
 * sending the PROXY protocol v2 header (`send-proxy-v2`), with its config in the test's temp dir, run
 * in the foreground (-db) as a child process. Its connections to the server leave from `source`, a
 * loopback address of its own, so that the server can tell them from the client's.
 */

/** Why the tests cannot run here, or null when haproxy is installed. */
export const HAPROXY_MISSING: string | null = (() => {
  const r = spawnSync('haproxy', ['-v'], { encoding: 'utf8', timeout: 5_000 });
  return r.error === undefined && r.status === 0 ? null : 'haproxy is not installed (apt-get install haproxy)';
})();

export interface HaproxyOptions {
  /** The server behind it, host:port. */
  backend: string;
  /** The address haproxy's connections to the backend leave from (haproxy `source`). */
  source: string;
}

export interface Haproxy {
  readonly port: number;
  output(): string;
  stop(): Promise<void>;
}

export async function startHaproxy(dir: string, options: HaproxyOptions): Promise<Haproxy> {
  const port = await freePort();
  const configPath = join(dir, `haproxy-${port}.cfg`);
  const lines = [
    'global',
    '  maxconn 256',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 1h',
    '  timeout server 1h',
    'frontend meshlink',
    `  bind 127.0.0.1:${port}`,
    '  default_backend servers',
    'backend servers',
    // Health checks that send a header too: haproxy sends LOCAL for them, which the server must accept.
    `  server s1 ${options.backend} send-proxy-v2 source ${options.source} check inter 1s check-send-proxy`,
  ];
  await writeFile(configPath, `${lines.join('\n')}\n`);
  const child: ChildProcess = spawn('haproxy', ['-db', '-f', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await waitFor(
    `haproxy listening on ${port}`,
    () =>
      new Promise<boolean>((resolve) => {
        if (child.exitCode !== null) throw new Error(`haproxy exited (${child.exitCode}): ${output}`);
        const s = connect(port, '127.0.0.1', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      }),
    20_000,
    100,
  );
  return {
    port,
    output: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
