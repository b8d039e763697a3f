import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { CLI } from '../e2e/harness.js';

/**
 * Network namespaces for the data-plane tests (the WireGuard mesh, NAT traversal). Every address and
 * rule a test uses lives in namespaces it creates and deletes itself; nothing lands in the root
 * namespace.
 */

export const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;

export function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], timeout: 30_000, ...(input !== undefined ? { input } : {}) });
}

export function trySh(cmd: string, args: string[]): boolean {
  try {
    sh(cmd, args);
    return true;
  } catch {
    return false;
  }
}

/** Why a namespace test cannot run here, or null. Probes with a namespace of its own. */
export function netnsSkipReason(): string | null {
  if (!IS_ROOT) return 'not root';
  const probe = `mlprobe-${randomBytes(3).toString('hex')}`;
  if (!trySh('ip', ['netns', 'add', probe])) return 'network namespaces are not available';
  trySh('ip', ['netns', 'del', probe]);
  return null;
}

/** Installs Debian packages for the commands that are missing ([command, package] pairs). */
export function ensureTools(tools: ReadonlyArray<readonly [string, string]>): void {
  const missing = tools.filter(([bin]) => !trySh('sh', ['-c', `command -v ${bin}`]));
  if (missing.length === 0) return;
  sh('apt-get', ['update', '-qq']);
  sh('apt-get', ['install', '-y', '-qq', ...missing.map(([, pkg]) => pkg)]);
}

export interface Running {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

/** The meshlink CLI in a namespace, stdout and stderr kept together (the last 200 kB). */
export function spawnIn(ns: string, args: string[], env: NodeJS.ProcessEnv = {}): Running {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out = (out + c.toString('utf8')).slice(-200_000)));
  child.stderr!.on('data', (c: Buffer) => (out = (out + c.toString('utf8')).slice(-200_000)));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

export async function cliIn(ns: string, args: string[]): Promise<{ code: number | null; stdout: string }> {
  const p = spawnIn(ns, args);
  const code = await p.exited;
  return { code, stdout: p.output() };
}

function killNamespaceProcesses(ns: string): void {
  let pids: string[] = [];
  try {
    pids = sh('ip', ['netns', 'pids', ns]).split('\n').filter(Boolean);
  } catch {
    return;
  }
  for (const pid of pids) trySh('kill', ['-9', pid]);
}

/** Kills what still runs in the namespaces and deletes them (their interfaces go with them). */
export function deleteNamespaces(names: readonly string[]): void {
  for (const ns of names) {
    killNamespaceProcesses(ns);
    trySh('ip', ['netns', 'del', ns]);
  }
}

/**
 * The nftables rules of a NAT router: masquerade out of `wan` (port-preserving, or `random,fully-random`
 * for a NAT that maps every destination anew), forward only what the LAN started, and drop unsolicited
 * inbound packets as real routers do, so that hole punching cannot pass on a stale conntrack entry.
 */
export function natRouterRules(random: boolean): string {
  return `table inet nat {
  chain postrouting { type nat hook postrouting priority srcnat; oifname "wan" masquerade${random ? ' random,fully-random' : ''}; }
}
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new drop
  }
}
`;
}
