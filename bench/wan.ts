/**
 * npm run bench:wan (issue 12) — interactive round trips behind a bulk transfer on an emulated WAN
 * (40 ms RTT, 100 Mbit/s), meshlink against node:http2 over the same link and against direct TCP
 * beside it. Root only (network namespaces); skipped with its reason otherwise.
 *
 * Topology: a sender namespace C and a receiver namespace S, each with a TUN device (10.77.0.1 and
 * 10.77.0.2), and a link namespace M between them that delays, paces and drops as
 * `tc qdisc … netem delay 20ms rate 100mbit limit 1000` would on each side (bench/lib/wan-link.ts:
 * this kernel has no sch_netem, so the link is emulated in user space; socat carries each TUN's
 * packets to it over UDP). TCP runs end to end through it.
 *
 * Per round, in an order that alternates:
 * 1. direct TCP: iperf3 from C to S for SECONDS s, and ICMP ping beside it from the third second on:
 *    what the link and the kernel's TCP do alone (an interactive message on its own TCP connection
 *    beside a bulk one waits behind the link's queue, nothing else);
 * 2. bench/mux-compare.ts's `loaded` part between C and S (receivers in S), for each of VARIANTS
 *    (default meshlink,http2) and, for meshlink, each of PIPE (default off,on: the sender's pipe
 *    limit off, or on with a 128 KiB floor, PROTOCOL.md §7): the 64 B echo idle, one stream's bulk
 *    alone for ALONE_MS, then the echo (and meshlink's session.ping()) while that stream pushes.
 * Targets (issue 12): the loaded echo's p50 at most idle + one RTT + 10 ms, with the bulk stream at
 * ≥ 90 Mbit/s. Throughputs are in Mbit/s (10^6 bits), from bytes over time, application payload.
 *
 * Options (env): ROUNDS (3), SECONDS (10), DELAY_MS (20, each way), RATE_MBIT (100), LIMIT (1000
 * packets held per direction), LOAD_MS (8000), ALONE_MS (5000), VARIANTS, PIPE.
 * The last line is one JSON object of medians over rounds.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { loadavg } from 'node:os';
import { median, percentile, round } from './lib/stats.js';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SECONDS = Number(process.env.SECONDS ?? 10);
const DELAY_MS = Number(process.env.DELAY_MS ?? 20);
const RATE_MBIT = Number(process.env.RATE_MBIT ?? 100);
const LIMIT = Number(process.env.LIMIT ?? 1000);
const LOAD_MS = Number(process.env.LOAD_MS ?? 8000);
const ALONE_MS = Number(process.env.ALONE_MS ?? 5000);
const VARIANTS = (process.env.VARIANTS ?? 'meshlink,http2').split(',');
const PIPE = (process.env.PIPE ?? 'off,on').split(',') as Array<'off' | 'on'>;
const PIPE_ON_FLOOR = '131072';

const tag = randomBytes(2).toString('hex');
const NS = { c: `mlwc-${tag}`, m: `mlwm-${tag}`, s: `mlws-${tag}` } as const;
const LINK = { c: '10.252.1.1', mc: '10.252.1.2', s: '10.252.2.1', ms: '10.252.2.2' } as const;
const TUN = { c: '10.77.0.1', s: '10.77.0.2' } as const;
const PORT = 7000;
const MIB = 1024 * 1024;
const mbit = (mibPerSec: number): number => (mibPerSec * MIB * 8) / 1e6;

const sh = (cmd: string, args: string[]): string => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
const has = (cmd: string): boolean => {
  try {
    sh('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
};

function skipReason(): string | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'not root (network namespaces, TUN devices)';
  const missing = ['ip', 'socat', 'iperf3', 'ping'].filter((c) => !has(c));
  if (missing.length > 0) return `missing ${missing.join(', ')} (Debian: iproute2 socat iperf3 iputils-ping)`;
  return null;
}

const children: ChildProcess[] = [];

function spawnIn(ns: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.push(child);
  return child;
}

function output(child: ChildProcess): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

function buildNetwork(): void {
  for (const ns of Object.values(NS)) {
    sh('ip', ['netns', 'add', ns]);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  }
  // Two veth pairs to the link namespace, with room for a full-sized packet plus socat's UDP header.
  for (const side of ['c', 's'] as const) {
    const [own, link] = side === 'c' ? [LINK.c, LINK.mc] : [LINK.s, LINK.ms];
    sh('ip', ['-n', NS[side], 'link', 'add', 'eth0', 'mtu', '9000', 'type', 'veth', 'peer', 'name', `to-${side}`, 'mtu', '9000']);
    sh('ip', ['-n', NS[side], 'link', 'set', `to-${side}`, 'netns', NS.m]);
    sh('ip', ['-n', NS[side], 'address', 'add', `${own}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', NS[side], 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', NS.m, 'address', 'add', `${link}/24`, 'dev', `to-${side}`]);
    sh('ip', ['-n', NS.m, 'link', 'set', `to-${side}`, 'up']);
  }
}

function deleteNetwork(): void {
  for (const ns of Object.values(NS)) {
    try {
      sh('ip', ['netns', 'del', ns]);
    } catch {
      // Not made, or already gone.
    }
  }
}

async function waitFor(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function startLink(): Promise<ChildProcess> {
  const script = fileURLToPath(new URL('./lib/wan-link.js', import.meta.url));
  const link = spawnIn(NS.m, process.execPath, [script, LINK.c, LINK.s, String(PORT), String(DELAY_MS), String(RATE_MBIT), String(LIMIT)], { LINK_A: LINK.mc, LINK_B: LINK.ms });
  link.stderr!.on('data', (c: Buffer) => process.stderr.write(`wan-link: ${c.toString()}`));
  await new Promise<void>((resolve, reject) => {
    link.once('exit', (code) => reject(new Error(`wan-link exited (${code})`)));
    link.stdout!.once('data', () => resolve());
  });
  for (const side of ['c', 's'] as const) {
    const [own, peer] = side === 'c' ? [LINK.c, LINK.mc] : [LINK.s, LINK.ms];
    // One IP packet per datagram each way; -b above the TUN's MTU so a read takes a whole packet.
    const socat = spawnIn(NS[side], 'socat', ['-b', '65536', `TUN:${TUN[side]}/24,tun-name=wan0,tun-type=tun,iff-no-pi,iff-up`, `UDP:${peer}:${PORT},bind=${own}:${PORT}`]);
    socat.stderr!.on('data', (c: Buffer) => process.stderr.write(`socat ${side}: ${c.toString()}`));
  }
  await waitFor('the TUN devices', () => {
    try {
      sh('ip', ['netns', 'exec', NS.c, 'ping', '-c', '1', '-W', '1', TUN.s]);
      return true;
    } catch {
      return false;
    }
  });
  return link;
}

async function ping(count: number, intervalS: number): Promise<number[]> {
  const { stdout } = await output(spawnIn(NS.c, 'ping', ['-n', '-c', String(count), '-i', String(intervalS), TUN.s]));
  return [...stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
}

interface Direct {
  mbps: number;
  pingLoadedP50: number;
  pingLoadedP99: number;
}

async function directTcp(): Promise<Direct> {
  const client = output(spawnIn(NS.c, 'iperf3', ['-c', TUN.s, '-t', String(SECONDS), '-J']));
  await new Promise((r) => setTimeout(r, 3000));
  const pings = await ping(Math.max(1, (SECONDS - 4) * 10), 0.1);
  const { code, stdout } = await client;
  if (code !== 0) throw new Error(`iperf3 failed (${code}): ${stdout.slice(-500)}`);
  const bps = (JSON.parse(stdout) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second;
  return { mbps: bps / 1e6, pingLoadedP50: percentile(pings, 50), pingLoadedP99: percentile(pings, 99) };
}

type MuxResult = Record<string, number | string | object>;

async function muxLoaded(variants: string[], pipe: 'off' | 'on'): Promise<MuxResult> {
  const script = fileURLToPath(new URL('./mux-compare.js', import.meta.url));
  const env: NodeJS.ProcessEnv = {
    BENCH_HOST: TUN.s,
    BENCH_LISTEN: TUN.s,
    PEER_NETNS: NS.s,
    PARTS: 'loaded',
    VARIANTS: variants.join(','),
    ROUNDS: '1',
    LOAD_MS: String(LOAD_MS),
    ALONE_MS: String(ALONE_MS),
    MESHLINK_PIPE_FLOOR: pipe === 'on' ? PIPE_ON_FLOOR : '0',
  };
  const { code, stdout, stderr } = await output(spawnIn(NS.c, process.execPath, [script], env));
  if (code !== 0) throw new Error(`mux-compare failed (${code}): ${stderr.slice(-1500)}`);
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as MuxResult;
}

async function main(): Promise<void> {
  const reason = skipReason();
  if (reason) {
    console.log(`bench:wan skipped: ${reason}`);
    console.log(JSON.stringify({ skipped: reason }));
    return;
  }
  const cleanup = (): void => {
    for (const c of children) c.kill('SIGKILL');
    deleteNetwork();
  };
  process.once('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  const load0 = loadavg()[0]!;
  try {
    buildNetwork();
    const link = await startLink();
    spawnIn(NS.s, 'iperf3', ['-s', '-B', TUN.s]);
    await waitFor('iperf3 -s', () => sh('ip', ['netns', 'exec', NS.s, 'ss', '-ltn']).includes(`${TUN.s}:5201`));
    const idle = await ping(30, 0.1);
    const rttIdle = percentile(idle, 50);
    process.stderr.write(`link up: ping idle p50 ${rttIdle} ms (2 × ${DELAY_MS} ms set)\n`);

    // The meshlink variants each once per pipe setting; http2 (and yamux) with the first setting's run.
    const runs = PIPE.map((p, i) => ({ pipe: p, variants: i === 0 ? VARIANTS : VARIANTS.filter((v) => v === 'meshlink') })).filter((r) => r.variants.length > 0);
    const results: Record<string, number[]> = {};
    const push = (k: string, v: unknown): void => {
      if (typeof v === 'number' && Number.isFinite(v)) (results[k] ??= []).push(v);
    };
    for (let r = 0; r < ROUNDS; r++) {
      const order = [...runs.map((x) => x as typeof x | 'direct'), 'direct' as const];
      const rotated = order.map((_, i) => order[(i + r) % order.length]!);
      for (const step of rotated) {
        if (step === 'direct') {
          const d = await directTcp();
          push('directMbps', d.mbps);
          push('directPingLoadedP50', d.pingLoadedP50);
          push('directPingLoadedP99', d.pingLoadedP99);
          continue;
        }
        const j = await muxLoaded(step.variants, step.pipe);
        for (const v of step.variants) {
          const key = v === 'meshlink' ? `meshlink-${step.pipe}` : v;
          const prefix = v === 'meshlink' ? 'meshlink' : v;
          const idleP50 = j[`${prefix}IdleP50Ms`] as number;
          const p50 = j[v === 'meshlink' ? 'loadedP50Ms' : `${prefix}LoadedP50Ms`] as number;
          push(`${key}IdleP50`, idleP50);
          push(`${key}P50`, p50);
          push(`${key}P99`, j[v === 'meshlink' ? 'loadedP99Ms' : `${prefix}LoadedP99Ms`]);
          push(`${key}Extra`, p50 - idleP50);
          push(`${key}LoadedMbps`, mbit(j[`${prefix}LoadedBulkMBps`] as number));
          if (v === 'meshlink') {
            push(`${key}AloneMbps`, mbit(j.meshlinkAloneBulkMBps as number));
            push(`${key}PingP50`, j.pingLoadedP50Ms);
            push(`${key}PingP99`, j.pingLoadedP99Ms);
          }
        }
      }
      process.stderr.write(`round ${r + 1}/${ROUNDS} done\n`);
    }
    link.kill('SIGUSR2');
    await new Promise((r) => setTimeout(r, 200));

    const m = (k: string, digits = 1): number => round(median(results[k] ?? []), digits);
    const budget = rttIdle + 10;
    console.log(`meshlink bench:wan — emulated link ${2 * DELAY_MS} ms RTT (ping idle p50 ${rttIdle} ms), ${RATE_MBIT} Mbit/s, ${LIMIT} packets held per direction; ${ROUNDS} rounds, medians; load average at start ${load0.toFixed(2)}`);
    console.log(`direct TCP (iperf3): ${m('directMbps')} Mbit/s; ICMP ping beside it p50 ${m('directPingLoadedP50')} / p99 ${m('directPingLoadedP99')} ms`);
    console.log('variant          echo idle p50  loaded p50 / p99 ms  loaded − idle  bulk Mbit/s loaded (alone)  session.ping() p50 / p99');
    const keys = [...PIPE.map((p) => `meshlink-${p}`), ...VARIANTS.filter((v) => v !== 'meshlink')].filter((k) => results[`${k}P50`]);
    const table: Record<string, object> = {};
    for (const k of keys) {
      const row = {
        idleP50Ms: m(`${k}IdleP50`),
        loadedP50Ms: m(`${k}P50`),
        loadedP99Ms: m(`${k}P99`),
        extraP50Ms: m(`${k}Extra`),
        loadedMbps: m(`${k}LoadedMbps`),
        ...(k.startsWith('meshlink') ? { aloneMbps: m(`${k}AloneMbps`), pingP50Ms: m(`${k}PingP50`), pingP99Ms: m(`${k}PingP99`) } : {}),
        latencyTargetMet: m(`${k}Extra`) <= budget,
        bulkTargetMet: m(`${k}LoadedMbps`) >= 90,
      };
      table[k] = row;
      const ping = 'pingP50Ms' in row ? `${row.pingP50Ms} / ${row.pingP99Ms}` : '';
      const alone = 'aloneMbps' in row ? ` (${row.aloneMbps})` : '';
      console.log(`${k.padEnd(15)}  ${String(row.idleP50Ms).padStart(13)}  ${`${row.loadedP50Ms} / ${row.loadedP99Ms}`.padStart(19)}  ${String(row.extraP50Ms).padStart(13)}  ${`${row.loadedMbps}${alone}`.padStart(26)}  ${ping.padStart(24)}`);
    }
    console.log(`targets: loaded − idle ≤ ${round(budget, 1)} ms (one RTT + 10 ms), bulk ≥ 90 Mbit/s while loaded`);
    console.log(
      JSON.stringify({
        rounds: ROUNDS,
        rttIdleMs: rttIdle,
        rateMbit: RATE_MBIT,
        limitPackets: LIMIT,
        direct: { mbps: m('directMbps'), pingLoadedP50Ms: m('directPingLoadedP50'), pingLoadedP99Ms: m('directPingLoadedP99') },
        ...table,
      }),
    );
  } finally {
    cleanup();
  }
}

await main();
