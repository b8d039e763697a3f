/**
 * npm run bench:relay (second part) — real WireGuard through the mesh relay against the direct path,
 * between network namespaces (root only; skipped with its reason otherwise).
 *
 * Topology: a "public" namespace with a bridge and the relay (`UdpRelay`, src/server/mesh/relay.ts,
 * in a child process there, as the server runs it: both members' WireGuard keys given, so MAC1 is
 * checked on every handshake); two hosts A and B on the bridge, each running wireguard-go (this
 * kernel may have no WireGuard module; the server's agents use the same fallback) with one peer, the
 * other host. No NAT: the point is what the relay costs on the same link, not traversal.
 *
 * Per round, in an order that alternates: A's and B's peer endpoints are set to each other's address
 * (direct) or to their ports of the relay allocation (relayed), then
 * 1. throughput: iperf3 TCP from A to B's mesh address for SECONDS s (iperf3's own receiver figure);
 * 2. latency: PINGS pings A → B's mesh address, 10 ms apart, p50 and p99 of the reported times;
 * 3. the relay process's CPU time (user + system) over the relayed iperf3 run, per Gbit relayed
 *    (the relay's byte counters, both directions: TCP's ACKs cross it too).
 * The relay's bandwidth cap is set far above the link here (the flag's default is 100 Mbit/s per
 * direction): this measures forwarding, not the token bucket.
 *
 * Options (env): ROUNDS (3), SECONDS (5), PINGS (200). Last line: one JSON object of the medians.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { median, percentile, round } from './lib/stats.js';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SECONDS = Number(process.env.SECONDS ?? 5);
const PINGS = Number(process.env.PINGS ?? 200);

const tag = randomBytes(2).toString('hex');
const PUB = `mlbp-${tag}`;
const HOSTS = { a: `mlbha-${tag}`, b: `mlbhb-${tag}` } as const;
type Side = keyof typeof HOSTS;
const IFACE: Record<Side, string> = { a: `mlbw-a-${tag}`, b: `mlbw-b-${tag}` };
const RELAY_IP = '198.51.104.1';
const HOST_IP: Record<Side, string> = { a: '198.51.104.2', b: '198.51.104.3' };
const MESH_IP: Record<Side, string> = { a: '10.236.0.1', b: '10.236.0.2' };
const other = (s: Side): Side => (s === 'a' ? 'b' : 'a');

const sh = (cmd: string, args: string[], input?: string): string => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], timeout: 60_000, ...(input !== undefined ? { input } : {}) });
const has = (cmd: string): boolean => {
  try {
    sh('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
};

function skipReason(): string | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'not root (network namespaces)';
  const missing = ['ip', 'wg', 'wireguard-go', 'iperf3', 'ping'].filter((c) => !has(c));
  return missing.length > 0 ? `missing ${missing.join(', ')} (Debian: iproute2 wireguard-tools wireguard-go iperf3 iputils-ping)` : null;
}

const children: ChildProcess[] = [];

function buildNetwork(): void {
  sh('ip', ['netns', 'add', PUB]);
  sh('ip', ['-n', PUB, 'link', 'set', 'lo', 'up']);
  sh('ip', ['-n', PUB, 'link', 'add', 'br0', 'type', 'bridge']);
  sh('ip', ['-n', PUB, 'address', 'add', `${RELAY_IP}/24`, 'dev', 'br0']);
  sh('ip', ['-n', PUB, 'link', 'set', 'br0', 'up']);
  for (const side of ['a', 'b'] as const) {
    const ns = HOSTS[side];
    sh('ip', ['netns', 'add', ns]);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    sh('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `pub-${side}`]);
    sh('ip', ['-n', ns, 'link', 'set', `pub-${side}`, 'netns', PUB]);
    sh('ip', ['-n', PUB, 'link', 'set', `pub-${side}`, 'master', 'br0']);
    sh('ip', ['-n', PUB, 'link', 'set', `pub-${side}`, 'up']);
    sh('ip', ['-n', ns, 'address', 'add', `${HOST_IP[side]}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  }
}

function teardown(): void {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const ns of [HOSTS.a, HOSTS.b, PUB]) {
    try {
      for (const pid of sh('ip', ['netns', 'pids', ns]).split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL');
    } catch {
      /* gone */
    }
    try {
      sh('ip', ['netns', 'del', ns]);
    } catch {
      /* gone */
    }
  }
}

/** The relay child in the public namespace: prints its allocation, then answers "stats" lines. */
async function relayChild(): Promise<void> {
  const { UdpRelay } = await import('../src/server/mesh/relay.js');
  const { createLogger } = await import('../src/util/logger.js');
  const relay = new UdpRelay({ host: RELAY_IP, logger: createLogger({ name: 'bench-relay', level: 'silent' }), bytesPerSecond: 1e11, burstBytes: 1e9, idleMs: 3_600_000 });
  const a = JSON.parse(process.env.MEMBER_A!) as { nodeId: string; ips: string[]; publicKey: string };
  const b = JSON.parse(process.env.MEMBER_B!) as { nodeId: string; ips: string[]; publicKey: string };
  const alloc = await relay.allocate({ a, b });
  process.stdout.write(`${JSON.stringify({ ports: { a: alloc.a.port, b: alloc.b.port } })}\n`);
  for await (const line of createInterface({ input: process.stdin })) {
    if (line !== 'stats') continue;
    const cpu = process.cpuUsage();
    const c = relay.counters;
    process.stdout.write(`${JSON.stringify({ cpuMicros: cpu.user + cpu.system, bytes: c.relayedBytes, dropped: c.dropped })}\n`);
  }
}

interface RelayStats {
  cpuMicros: number;
  bytes: number;
  dropped: Record<string, number>;
}

async function main(): Promise<void> {
  const reason = skipReason();
  if (reason !== null) {
    console.log(`relay through WireGuard: skipped (${reason})`);
    console.log(JSON.stringify({ skipped: reason }));
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ml-bench-relay-wg-'));
  try {
    buildNetwork();
    const keys = Object.fromEntries((['a', 'b'] as const).map((s) => {
      const privateKey = sh('wg', ['genkey']).trim();
      return [s, { privateKey, publicKey: sh('wg', ['pubkey'], `${privateKey}\n`).trim() }];
    })) as Record<Side, { privateKey: string; publicKey: string }>;
    const relay = spawn('ip', ['netns', 'exec', PUB, process.execPath, fileURLToPath(import.meta.url), 'relay-child'], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: {
        ...process.env,
        MEMBER_A: JSON.stringify({ nodeId: 'a', ips: [HOST_IP.a], publicKey: keys.a.publicKey }),
        MEMBER_B: JSON.stringify({ nodeId: 'b', ips: [HOST_IP.b], publicKey: keys.b.publicKey }),
      },
    });
    children.push(relay);
    const lines: string[] = [];
    let wake: (() => void) | null = null;
    createInterface({ input: relay.stdout! }).on('line', (l) => {
      lines.push(l);
      wake?.();
    });
    const nextLine = async (): Promise<string> => {
      const deadline = Date.now() + 30_000;
      while (lines.length === 0) {
        if (Date.now() > deadline || relay.exitCode !== null) throw new Error('the relay child did not answer');
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 1_000).unref();
        });
      }
      return lines.shift()!;
    };
    const ports = (JSON.parse(await nextLine()) as { ports: Record<Side, number> }).ports;
    const stats = async (): Promise<RelayStats> => {
      relay.stdin!.write('stats\n');
      return JSON.parse(await nextLine()) as RelayStats;
    };

    for (const side of ['a', 'b'] as const) {
      const ns = HOSTS[side];
      const wgGo = spawn('ip', ['netns', 'exec', ns, 'wireguard-go', '-f', IFACE[side]], { stdio: 'ignore', env: { ...process.env, WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: 'error' } });
      children.push(wgGo);
      for (let i = 0; i < 100 && !ok(() => sh('ip', ['-n', ns, 'link', 'show', IFACE[side]])); i++) await sleep(50);
      const keyFile = join(dir, `${side}.key`);
      writeFileSync(keyFile, `${keys[side].privateKey}\n`, { mode: 0o600 });
      sh('ip', ['netns', 'exec', ns, 'wg', 'set', IFACE[side], 'private-key', keyFile, 'listen-port', '51820', 'peer', keys[other(side)].publicKey, 'allowed-ips', `${MESH_IP[other(side)]}/32`, 'endpoint', `${HOST_IP[other(side)]}:51820`, 'persistent-keepalive', '25']);
      sh('ip', ['-n', ns, 'address', 'add', `${MESH_IP[side]}/24`, 'dev', IFACE[side]]);
      sh('ip', ['-n', ns, 'link', 'set', IFACE[side], 'up']);
    }
    const iperfServer = spawn('ip', ['netns', 'exec', HOSTS.b, 'iperf3', '-s', '-B', MESH_IP.b], { stdio: 'ignore' });
    children.push(iperfServer);
    await sleep(500);

    const setPath = (path: 'direct' | 'relay'): void => {
      for (const side of ['a', 'b'] as const) {
        const endpoint = path === 'direct' ? `${HOST_IP[other(side)]}:51820` : `${RELAY_IP}:${ports[side]}`;
        sh('ip', ['netns', 'exec', HOSTS[side], 'wg', 'set', IFACE[side], 'peer', keys[other(side)].publicKey, 'endpoint', endpoint]);
      }
    };
    const pingOnce = (): boolean => ok(() => sh('ip', ['netns', 'exec', HOSTS.a, 'ping', '-c', '1', '-W', '1', MESH_IP.b]));

    const results: Record<'direct' | 'relay', { mbps: number[]; p50: number[]; p99: number[] }> = { direct: { mbps: [], p50: [], p99: [] }, relay: { mbps: [], p50: [], p99: [] } };
    const cpuPerGbit: number[] = [];
    const load: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const order: Array<'direct' | 'relay'> = r % 2 === 0 ? ['direct', 'relay'] : ['relay', 'direct'];
      for (const path of order) {
        setPath(path);
        // Both ends send a packet (the relay latches each member on its first handshake, then forwards).
        for (let i = 0; i < 60 && !pingOnce(); i++) await sleep(250);
        load.push(loadavg()[0]!);
        const before = await stats();
        const json = JSON.parse(sh('ip', ['netns', 'exec', HOSTS.a, 'iperf3', '-c', MESH_IP.b, '-t', String(SECONDS), '-J'])) as { end: { sum_received: { bits_per_second: number } } };
        const after = await stats();
        const mbps = json.end.sum_received.bits_per_second / 1e6;
        results[path].mbps.push(mbps);
        if (path === 'relay') {
          const gbit = ((after.bytes - before.bytes) * 8) / 1e9;
          if (gbit > 0) cpuPerGbit.push((after.cpuMicros - before.cpuMicros) / 1e6 / gbit);
        }
        const out = sh('ip', ['netns', 'exec', HOSTS.a, 'ping', '-c', String(PINGS), '-i', '0.01', '-W', '1', MESH_IP.b]);
        const times = [...out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
        results[path].p50.push(median(times));
        results[path].p99.push(percentile(times, 99));
        console.log(`round ${r + 1}/${ROUNDS} ${path}: ${round(mbps, 1)} Mbit/s, ping p50 ${round(median(times), 3)} ms p99 ${round(percentile(times, 99), 3)} ms (${times.length}/${PINGS} answered)`);
      }
    }
    const last = await stats();
    const summary = {
      rounds: ROUNDS,
      seconds: SECONDS,
      directMbps: round(median(results.direct.mbps), 1),
      relayMbps: round(median(results.relay.mbps), 1),
      relayVsDirect: round(median(results.relay.mbps.map((m, i) => m / results.direct.mbps[i]!)), 2),
      directPingP50Ms: round(median(results.direct.p50), 3),
      relayPingP50Ms: round(median(results.relay.p50), 3),
      addedP50Ms: round(median(results.relay.p50) - median(results.direct.p50), 3),
      directPingP99Ms: round(median(results.direct.p99), 3),
      relayPingP99Ms: round(median(results.relay.p99), 3),
      relayCpuSecondsPerGbit: round(median(cpuPerGbit), 3),
      relayDropped: last.dropped,
      loadavg: round(median(load), 2),
    };
    console.log(JSON.stringify(summary));
  } finally {
    teardown();
    rmSync(dir, { recursive: true, force: true });
  }
}

function ok(fn: () => unknown): boolean {
  try {
    fn();
    return true;
  } catch {
    return false;
  }
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

if (process.argv[2] === 'relay-child') await relayChild();
else await main();
