import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../../bench/lib/free-port.js';
import { AdminClient } from '../../src/admin-api/client.js';
import * as api from '../../src/admin-api/routes.js';

/** Real processes of the real CLI, for end-to-end tests. */
export const CLI = resolve('dist/src/cli/main.js');
const run = promisify(execFile);

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

export async function tempDir(prefix: string): Promise<{ path: string; cleanup(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  // A server on this dir as its data dir keeps its key file beside it (`<dir>.key`, src/server/key-file.ts).
  return { path, cleanup: async () => { await rm(path, { recursive: true, force: true }); await rm(`${path}.key`, { force: true }); } };
}

/** A free loopback port (for a server that must come back on the same port after a restart). */
export { freePort };

export interface Proc {
  child: ChildProcess;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  exited: Promise<number | null>;
  /** Resolves with the first JSON log line whose msg matches. */
  waitForLog(msg: string | RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const waiters: Array<() => void> = [];
  const onData = (c: Buffer): void => {
    out += c.toString('utf8');
    for (const w of waiters.splice(0)) w();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | null>((r) => child.once('exit', (code, signal) => r(code ?? (signal ? -1 : null))));
  const findLog = (msg: string | RegExp): Record<string, unknown> | null => {
    for (const line of out.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        const obj = JSON.parse(line) as Record<string, unknown>;
        const m = String(obj.msg ?? '');
        if (typeof msg === 'string' ? m === msg : msg.test(m)) return obj;
      } catch {
        /* partial line */
      }
    }
    return null;
  };
  return {
    child,
    output: () => out,
    exited,
    waitForLog(msg, timeoutMs = 30_000) {
      return new Promise((resolveLog, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for log "${msg}"; output:\n${out.slice(-4000)}`)), timeoutMs);
        const check = (): void => {
          const found = findLog(msg);
          if (found) {
            clearTimeout(timer);
            resolveLog(found);
            return;
          }
          if (child.exitCode !== null) {
            clearTimeout(timer);
            reject(new Error(`process exited (${child.exitCode}) before log "${msg}"; output:\n${out.slice(-4000)}`));
            return;
          }
          waiters.push(check);
        };
        check();
      });
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

export interface ServerProc extends Proc {
  url: string;
  caPin: string;
  dataDir: string;
}

export async function startServerProc(dataDir: string, port: number, extra: string[] = []): Promise<ServerProc> {
  const proc = spawnCli(['server', 'start', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--ca-key', 'rsa2048', ...extra]);
  const ready = await proc.waitForLog('server ready', 60_000);
  return { ...proc, url: String(ready.publicUrl), caPin: String(ready.caPin), dataDir };
}

export interface NodeRow {
  id: string;
  hostname: string;
  online: boolean;
  certSerial: string | null;
  agentVersion: string | null;
}

/** Lists nodes through the running server's admin socket (cheaper than a CLI process per poll). */
export function listNodes(dataDir: string): Promise<NodeRow[]> {
  return new AdminClient(join(dataDir, 'admin.sock')).call(api.listNodes, {});
}

export async function waitFor<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 30_000, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export async function createToken(dataDir: string, extra: string[] = []): Promise<{ token: string; caPin: string; enrollCommand: string }> {
  const r = await cli(['server', 'token', 'create', '--data-dir', dataDir, '--json', ...extra]);
  if (r.code !== 0) throw new Error(`token create failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as { token: string; caPin: string; enrollCommand: string };
}

export async function enrollAgent(server: ServerProc, stateDir: string, hostname: string): Promise<{ nodeId: string; token: string }> {
  const t = await createToken(server.dataDir);
  const r = await cli(['agent', 'enroll', '--server', server.url, '--token', t.token, '--ca-pin', server.caPin, '--state-dir', stateDir, '--hostname', hostname, '--json']);
  if (r.code !== 0) throw new Error(`enroll failed (${r.code}): ${r.stderr}`);
  return { nodeId: (JSON.parse(r.stdout) as { nodeId: string }).nodeId, token: t.token };
}
