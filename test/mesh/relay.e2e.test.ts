import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir, waitFor } from '../e2e/harness.js';
import { deleteNamespaces, ensureTools, natRouterRules, netnsSkipReason, sh, trySh } from '../helpers/netns.js';

/**
 * Real WireGuard through the UDP relay: two hosts, each behind a router that masquerades with
 * `random,fully-random` (a new public port per destination) and drops unsolicited inbound packets, so
 * there is no direct path between them. The relay (dist/src/server/mesh/relay.js, in a child process)
 * runs in the "public" namespace with an allocation for the pair made with the routers' addresses,
 * the IPs a server would observe. Each host's WireGuard (wireguard-go: this kernel has none) has the
 * relay port the allocation gave it as its peer's endpoint.
 */

const SKIP_REASON = netnsSkipReason();
const suffix = randomBytes(2).toString('hex');
const PUB = `mlrp-${suffix}`;
const SIDES = ['a', 'b'] as const;
type Side = (typeof SIDES)[number];
const ROUTER: Record<Side, string> = { a: `mlrra-${suffix}`, b: `mlrrb-${suffix}` };
const HOST: Record<Side, string> = { a: `mlrha-${suffix}`, b: `mlrhb-${suffix}` };
/** wireguard-go's control sockets (/var/run/wireguard/NAME.sock) are shared by all namespaces: one name each. */
const IFACE: Record<Side, string> = { a: `mlrl-a-${suffix}`, b: `mlrl-b-${suffix}` };
const RELAY_IP = '198.51.100.1';
const ROUTER_IP: Record<Side, string> = { a: '198.51.100.2', b: '198.51.100.3' };
const LAN: Record<Side, string> = { a: '10.242.1', b: '10.242.2' };
const MESH_IP: Record<Side, string> = { a: '10.234.0.1', b: '10.234.0.2' };
const RELAY_MODULE = resolve('dist/src/server/mesh/relay.js');
const LOGGER_MODULE = resolve('dist/src/util/logger.js');

function buildNetwork(): void {
  sh('ip', ['netns', 'add', PUB]);
  sh('ip', ['-n', PUB, 'link', 'set', 'lo', 'up']);
  sh('ip', ['-n', PUB, 'link', 'add', 'br0', 'type', 'bridge']);
  sh('ip', ['-n', PUB, 'address', 'add', `${RELAY_IP}/24`, 'dev', 'br0']);
  sh('ip', ['-n', PUB, 'link', 'set', 'br0', 'up']);
  for (const side of SIDES) {
    const router = ROUTER[side];
    const host = HOST[side];
    sh('ip', ['netns', 'add', router]);
    sh('ip', ['netns', 'add', host]);
    for (const ns of [router, host]) sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    sh('ip', ['-n', router, 'link', 'add', 'wan', 'type', 'veth', 'peer', 'name', `pub-${side}`]);
    sh('ip', ['-n', router, 'link', 'set', `pub-${side}`, 'netns', PUB]);
    sh('ip', ['-n', PUB, 'link', 'set', `pub-${side}`, 'master', 'br0']);
    sh('ip', ['-n', PUB, 'link', 'set', `pub-${side}`, 'up']);
    sh('ip', ['-n', router, 'address', 'add', `${ROUTER_IP[side]}/24`, 'dev', 'wan']);
    sh('ip', ['-n', router, 'link', 'set', 'wan', 'up']);
    sh('ip', ['-n', router, 'link', 'add', 'lan', 'type', 'veth', 'peer', 'name', 'eth0']);
    sh('ip', ['-n', router, 'link', 'set', 'eth0', 'netns', host]);
    sh('ip', ['-n', router, 'address', 'add', `${LAN[side]}.1/24`, 'dev', 'lan']);
    sh('ip', ['-n', router, 'link', 'set', 'lan', 'up']);
    sh('ip', ['-n', host, 'address', 'add', `${LAN[side]}.2/24`, 'dev', 'eth0']);
    sh('ip', ['-n', host, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', host, 'route', 'add', 'default', 'via', `${LAN[side]}.1`]);
    sh('ip', ['netns', 'exec', router, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    sh('ip', ['netns', 'exec', router, 'nft', '-f', '-'], natRouterRules(true));
  }
}

/** The relay in the public namespace: one JSON line per command on stdin ("stats", "release"). */
const RELAY_SCRIPT = `
import { createInterface } from 'node:readline';
const { UdpRelay } = await import(process.env.RELAY_MODULE);
const { createLogger } = await import(process.env.LOGGER_MODULE);
const relay = new UdpRelay({ host: process.env.RELAY_IP, logger: createLogger({ name: 'relay', level: 'silent' }) });
const a = JSON.parse(process.env.MEMBER_A), b = JSON.parse(process.env.MEMBER_B);
const out = (v) => process.stdout.write(JSON.stringify(v) + '\\n');
out({ allocation: await relay.allocate({ a, b }) });
for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'stats') out({ counters: relay.counters, allocation: relay.get(a.nodeId, b.nodeId) });
  if (line === 'release') out({ released: relay.release(a.nodeId, b.nodeId) });
}
await relay.close();
`;

interface RelayAnswer {
  allocation?: { a: { port: number; latched: { address: string; port: number } | null }; b: { port: number; latched: { address: string; port: number } | null } } | null;
  counters?: { relayedBytes: number; relayedPackets: number; dropped: Record<string, number> };
  released?: boolean;
}

let relay: ChildProcess | undefined;
let answers: RelayAnswer[] = [];
const wgGo: ChildProcess[] = [];
let root: { path: string; cleanup(): Promise<void> } | undefined;

async function ask(command: string): Promise<RelayAnswer> {
  const n = answers.length;
  relay!.stdin!.write(`${command}\n`);
  await waitFor(`the relay's answer to ${command}`, async () => answers.length > n, 10_000);
  return answers[n]!;
}

const ping = (side: Side, count = 1): boolean => trySh('ip', ['netns', 'exec', HOST[side], 'ping', '-c', String(count), '-W', '1', MESH_IP[side === 'a' ? 'b' : 'a']]);

async function startWireGuard(side: Side, peerPublicKey: string, endpoint: string, keyFile: string): Promise<void> {
  const child = spawn('ip', ['netns', 'exec', HOST[side], 'wireguard-go', '-f', IFACE[side]], { stdio: 'ignore', env: { ...process.env, WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: 'error' } });
  wgGo.push(child);
  await waitFor(`${IFACE[side]} to exist`, async () => trySh('ip', ['-n', HOST[side], 'link', 'show', IFACE[side]]), 15_000);
  sh('ip', ['netns', 'exec', HOST[side], 'wg', 'set', IFACE[side], 'private-key', keyFile, 'listen-port', '51820', 'peer', peerPublicKey, 'allowed-ips', `${MESH_IP[side === 'a' ? 'b' : 'a']}/32`, 'endpoint', endpoint, 'persistent-keepalive', '5']);
  sh('ip', ['-n', HOST[side], 'address', 'add', `${MESH_IP[side]}/24`, 'dev', IFACE[side]]);
  sh('ip', ['-n', HOST[side], 'link', 'set', IFACE[side], 'up']);
}

async function teardown(): Promise<void> {
  relay?.kill('SIGTERM');
  for (const c of wgGo) c.kill('SIGTERM');
  deleteNamespaces([HOST.a, HOST.b, ROUTER.a, ROUTER.b, PUB]);
  await root?.cleanup();
}

describe.skipIf(SKIP_REASON !== null)(`WireGuard through the UDP relay between two hard NATs${SKIP_REASON ? ` (skipped: ${SKIP_REASON})` : ''}`, () => {
  beforeAll(async () => {
    try {
      ensureTools([
        ['nft', 'nftables'],
        ['wg', 'wireguard-tools'],
        ['wireguard-go', 'wireguard-go'],
      ]);
      buildNetwork();
      root = await tempDir('ml-relay-netns-');
      relay = spawn('ip', ['netns', 'exec', PUB, process.execPath, '--input-type=module', '-e', RELAY_SCRIPT], {
        stdio: ['pipe', 'pipe', 'inherit'],
        env: {
          ...process.env,
          RELAY_MODULE: `file://${RELAY_MODULE}`,
          LOGGER_MODULE: `file://${LOGGER_MODULE}`,
          RELAY_IP,
          MEMBER_A: JSON.stringify({ nodeId: 'node-a', ips: [ROUTER_IP.a] }),
          MEMBER_B: JSON.stringify({ nodeId: 'node-b', ips: [ROUTER_IP.b] }),
        },
      });
      createInterface({ input: relay.stdout! }).on('line', (line) => answers.push(JSON.parse(line) as RelayAnswer));
      await waitFor('the allocation', async () => answers.length > 0, 15_000);
      const allocation = answers[0]!.allocation!;
      answers = [];
      const keys = Object.fromEntries(
        SIDES.map((side) => {
          const privateKey = sh('wg', ['genkey']).trim();
          return [side, { privateKey, publicKey: sh('wg', ['pubkey'], `${privateKey}\n`).trim() }];
        }),
      ) as Record<Side, { privateKey: string; publicKey: string }>;
      for (const side of SIDES) {
        const keyFile = join(root.path, `${side}.key`);
        await writeFile(keyFile, `${keys[side].privateKey}\n`, { mode: 0o600 });
        await startWireGuard(side, keys[side === 'a' ? 'b' : 'a'].publicKey, `${RELAY_IP}:${allocation[side].port}`, keyFile);
      }
    } catch (err) {
      await teardown();
      throw err;
    }
  }, 120_000);

  afterAll(teardown, 30_000);

  it('pings between mesh addresses through the relay, which latched each router’s public source and counts the bytes', async () => {
    // The first handshakes: the relay latches each side when its initiation arrives; retries until both have.
    await waitFor('a ping from a to b through the relay', async () => ping('a'), 60_000);
    const first = await ask('stats');
    for (const side of SIDES) {
      const latched = first.allocation![side].latched!;
      // The router's address with the port its fully-random masquerade picked: the source the relay saw.
      expect(latched.address).toBe(ROUTER_IP[side]);
      expect(latched.port).toBeGreaterThan(0);
    }
    // 5 pings each way are at least 20 forwarded packets (request and reply, both ways); keepalives add some.
    expect(ping('a', 5)).toBe(true);
    expect(ping('b', 5)).toBe(true);
    const after = await ask('stats');
    expect(after.counters!.relayedPackets).toBeGreaterThanOrEqual(first.counters!.relayedPackets + 20);
    expect(after.counters!.relayedBytes).toBeGreaterThan(first.counters!.relayedBytes);
  }, 90_000);

  it('forwards nothing once the allocation is released', async () => {
    expect((await ask('release')).released).toBe(true);
    // Its ports are closed: nothing can reach the other side any more.
    expect(ping('a', 3)).toBe(false);
    expect((await ask('stats')).allocation).toBeNull();
  }, 60_000);
});
