import { MeshlinkError } from '../../errors.js';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../../util/logger.js';
import { KEEPALIVE_S } from './wg-config.js';
import type { PeerInfo } from '../../contract/mesh-events.js';

/**
 * Applies the mesh state to a real WireGuard interface with `ip` and `wg`: creates the interface once
 * (kernel WireGuard, or wireguard-go in userspace when the kernel has none), assigns the mesh address,
 * and from then on changes peers one by one with `wg set` against what `wg show dump` reports, so the
 * interface is never restarted and live tunnels are not disturbed. Secrets reach `wg` through a 0600
 * file in a fresh 0700 directory that is removed right after (never on the command line; `wg` cannot
 * read them from /dev/stdin when stdin is a socket, as it is under Node).
 */

export class WireGuardError extends MeshlinkError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ML_ERR_WIREGUARD', message, options);
  }
}

export type CommandRunner = (cmd: string, args: string[]) => Promise<string>;

export const runCommand: CommandRunner = (cmd, args) =>
  new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: 10_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new WireGuardError(`${cmd} ${args.slice(0, 4).join(' ')} failed: ${String(stderr).trim() || err.message}`, { cause: err }));
      else resolve(stdout);
    });
    child.stdin?.on('error', () => {});
    child.stdin?.end();
  });

export interface ActualPeer {
  publicKey: string;
  psk: string | null;
  endpoint: string | null;
  allowedIps: string[];
  /** latest-handshake in ms since the epoch; null: none. */
  handshakeAt: number | null;
  rxBytes: number;
  txBytes: number;
}

/** Parses `wg show IF dump`: the interface line, then one tab-separated line per peer. */
export function parseWgDump(text: string): { publicKey: string | null; listenPort: number | null; peers: ActualPeer[] } {
  const lines = text.split('\n').filter((l) => l.length > 0);
  const head = lines[0]?.split('\t') ?? [];
  const peers = lines.slice(1).map((l) => {
    const f = l.split('\t');
    return {
      publicKey: f[0] ?? '',
      psk: f[1] && f[1] !== '(none)' ? f[1] : null,
      endpoint: f[2] && f[2] !== '(none)' ? f[2] : null,
      allowedIps: f[3] && f[3] !== '(none)' ? f[3].split(',') : [],
      handshakeAt: counter(f[4]) > 0 ? counter(f[4]) * 1000 : null,
      rxBytes: counter(f[5]),
      txBytes: counter(f[6]),
    };
  });
  return { publicKey: head[1] && head[1] !== '(none)' ? head[1] : null, listenPort: head[2] ? Number(head[2]) : null, peers };
}

/** A non-negative integer field of `wg show dump`; 0 when absent or not a number. */
function counter(field: string | undefined): number {
  const n = Number(field);
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

export interface DriftItem {
  field: string;
  expected?: string;
  actual?: string;
}

export interface ApplierOptions {
  interfaceName: string;
  listenPort: number;
  logger: Logger;
  run?: CommandRunner;
  /** Test hook: force userspace even when kernel WireGuard would work. */
  userspace?: boolean;
}

export class WireGuardApplier {
  readonly #o: ApplierOptions;
  readonly #run: CommandRunner;
  #userspace: ChildProcess | null = null;
  #address: string | null = null;
  #privateKey: string | null = null;

  constructor(options: ApplierOptions) {
    this.#o = options;
    this.#run = options.run ?? runCommand;
  }

  get interfaceName(): string {
    return this.#o.interfaceName;
  }

  /** Whether this machine can apply at all: root and a working `wg`. */
  static async available(run: CommandRunner = runCommand): Promise<{ ok: boolean; reason: string }> {
    if (typeof process.getuid === 'function' && process.getuid() !== 0) return { ok: false, reason: 'not running as root' };
    try {
      await run('wg', ['--version']);
      await run('ip', ['-V']);
    } catch {
      return { ok: false, reason: '`wg` or `ip` is not installed' };
    }
    return { ok: true, reason: 'ok' };
  }

  /** Runs `wg` with secrets[i] in a private file whose path replaces the i-th `{secret}` argument. */
  async #wgWithSecrets(args: string[], secrets: string[]): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), 'meshlink-wg-'));
    try {
      const paths: string[] = [];
      for (const [i, secret] of secrets.entries()) {
        const path = join(dir, `s${i}`);
        await writeFile(path, `${secret}\n`, { mode: 0o600 });
        paths.push(path);
      }
      let j = 0;
      await this.#run('wg', args.map((a) => (a === '{secret}' ? paths[j++]! : a)));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async #exists(): Promise<boolean> {
    try {
      await this.#run('ip', ['link', 'show', 'dev', this.#o.interfaceName]);
      return true;
    } catch {
      return false;
    }
  }

  /** Creates the interface if it is missing; sets key, port, address and the mesh route. Idempotent. */
  async ensureInterface(meshIp: string, cidr: string, privateKey: string): Promise<void> {
    const dev = this.#o.interfaceName;
    if (!(await this.#exists())) await this.#create();
    if (privateKey !== this.#privateKey) {
      await this.#wgWithSecrets(['set', dev, 'private-key', '{secret}', 'listen-port', String(this.#o.listenPort)], [privateKey]);
      this.#privateKey = privateKey;
    }
    if (meshIp !== this.#address) {
      await this.#run('ip', ['address', 'flush', 'dev', dev]);
      await this.#run('ip', ['address', 'add', `${meshIp}/32`, 'dev', dev]);
      this.#address = meshIp;
    }
    await this.#run('ip', ['link', 'set', 'dev', dev, 'up']);
    // Everything in the mesh range goes to the interface; WireGuard's AllowedIPs then decide per peer
    // (a packet to a mesh address that is no permitted peer is dropped: "Required key not available").
    await this.#run('ip', ['route', 'replace', cidr, 'dev', dev]);
  }

  async #create(): Promise<void> {
    const dev = this.#o.interfaceName;
    if (!this.#o.userspace) {
      try {
        await this.#run('ip', ['link', 'add', 'dev', dev, 'type', 'wireguard']);
        this.#o.logger.info({ interface: dev }, 'created kernel WireGuard interface');
        return;
      } catch (err) {
        this.#o.logger.info({ interface: dev, reason: (err as Error).message }, 'no kernel WireGuard; starting wireguard-go');
      }
    }
    const child = spawn('wireguard-go', ['-f', dev], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: 'error' } });
    let stderr = '';
    const collect = (c: Buffer): void => {
      if (stderr.length < 4096) stderr += c.toString('utf8');
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const spawned = new Promise<void>((resolve, reject) => {
      child.once('error', (err) => reject(new WireGuardError(`cannot start wireguard-go: ${err.message}`, { cause: err })));
      child.once('spawn', () => resolve());
    });
    await spawned;
    this.#userspace = child;
    child.once('exit', (code, signal) => {
      if (this.#userspace === child) {
        this.#userspace = null;
        this.#address = null;
        this.#privateKey = null;
        this.#o.logger.warn({ code, signal, stderr: stderr.slice(0, 500) }, 'wireguard-go exited');
      }
    });
    for (let i = 0; i < 100; i++) {
      if (await this.#exists()) {
        this.#o.logger.info({ interface: dev, pid: child.pid }, 'created userspace WireGuard interface (wireguard-go)');
        return;
      }
      if (child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new WireGuardError(`wireguard-go did not create ${dev}: ${stderr.trim() || 'no output'}`);
  }

  async actualPeers(): Promise<ActualPeer[]> {
    return parseWgDump(await this.#run('wg', ['show', this.#o.interfaceName, 'dump'])).peers;
  }

  /**
   * Makes the interface's peers exactly `peers`, touching only what differs. Returns what differed
   * (the data-plane drift it corrected).
   */
  async syncPeers(peers: readonly PeerInfo[]): Promise<DriftItem[]> {
    const dev = this.#o.interfaceName;
    const actual = new Map((await this.actualPeers()).map((p) => [p.publicKey, p]));
    const drift: DriftItem[] = [];
    const wanted = new Set(peers.map((p) => p.publicKey));
    for (const [key] of actual) {
      if (wanted.has(key)) continue;
      await this.#run('wg', ['set', dev, 'peer', key, 'remove']);
      drift.push({ field: `wg.peer.${key}`, actual: 'present', expected: 'absent' });
    }
    for (const p of peers) {
      const a = actual.get(p.publicKey);
      const allowed = `${p.meshIp}/32`;
      const endpoint = p.endpoints[0] ?? null;
      const endpointDiffers = endpoint !== null && a?.endpoint !== endpoint;
      if (a && a.psk === p.psk && a.allowedIps.length === 1 && a.allowedIps[0] === allowed && !endpointDiffers) continue;
      const args = ['set', dev, 'peer', p.publicKey, 'preshared-key', '{secret}', 'allowed-ips', allowed, 'persistent-keepalive', String(KEEPALIVE_S)];
      if (endpoint) args.push('endpoint', endpoint);
      await this.#wgWithSecrets(args, [p.psk]);
      if (!a) drift.push({ field: `wg.peer.${p.publicKey}`, expected: 'present', actual: 'absent' });
      else drift.push({ field: `wg.peer.${p.publicKey}`, expected: `${allowed} ${endpoint ?? ''}`.trim(), actual: `${a.allowedIps.join(',')} ${a.endpoint ?? ''}`.trim() });
    }
    return drift;
  }

  /** Stops a wireguard-go we started (its interface goes with it); a kernel interface is left up. */
  async close(): Promise<void> {
    const child = this.#userspace;
    this.#userspace = null;
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3_000))]);
    }
  }
}
