import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, tempDir, waitFor } from '../e2e/harness.js';
import { cliIn, deleteNamespaces, ensureTools, netnsSkipReason, sh, spawnIn, trySh, type Running } from '../helpers/netns.js';

/**
 * The data plane for real: three hosts in network namespaces (veths on a bridge in a fourth namespace
 * that runs the server), each running `meshlink agent run --wireguard` (wireguard-go: this kernel has no
 * WireGuard). Every address used lives on interfaces this test creates inside its own namespaces.
 */

/** Why the test cannot run here, or null. */
const SKIP_REASON: string | null = netnsSkipReason();

const suffix = randomBytes(2).toString('hex');
const SRV = `mls-${suffix}`;
const HOSTS = ['a', 'b', 'c'] as const;
type Host = (typeof HOSTS)[number];
const NS: Record<Host, string> = { a: `mla-${suffix}`, b: `mlb-${suffix}`, c: `mlc-${suffix}` };
const LAN = '10.231.77';
const SERVER_IP = `${LAN}.1`;
const HOST_IP: Record<Host, string> = { a: `${LAN}.2`, b: `${LAN}.3`, c: `${LAN}.4` };
const MESH_CIDR = '10.233.0.0/24';
const PORT = 18443;

const ping = (from: Host, to: string): boolean => trySh('ip', ['netns', 'exec', NS[from], 'ping', '-c', '1', '-W', '1', to]);
/**
 * One interface name per host: wireguard-go's control sockets live in /var/run/wireguard/NAME.sock,
 * which all namespaces of one machine share.
 */
const IFACE: Record<Host, string> = { a: `mlwg-a-${suffix}`, b: `mlwg-b-${suffix}`, c: `mlwg-c-${suffix}` };
const wgPeers = (h: Host): string[] => {
  try {
    return sh('ip', ['netns', 'exec', NS[h], 'wg', 'show', IFACE[h], 'peers']).split('\n').filter(Boolean);
  } catch {
    return [];
  }
};

let root: { path: string; cleanup(): Promise<void> } | undefined;
let server: Running | undefined;
const agents = new Map<Host, Running>();
const info = new Map<Host, { nodeId: string; meshIp: string; wgPublicKey: string }>();

function buildNetwork(): void {
  sh('ip', ['netns', 'add', SRV]);
  sh('ip', ['-n', SRV, 'link', 'set', 'lo', 'up']);
  sh('ip', ['-n', SRV, 'link', 'add', 'br0', 'type', 'bridge']);
  sh('ip', ['-n', SRV, 'address', 'add', `${SERVER_IP}/24`, 'dev', 'br0']);
  sh('ip', ['-n', SRV, 'link', 'set', 'br0', 'up']);
  for (const h of HOSTS) {
    const ns = NS[h];
    sh('ip', ['netns', 'add', ns]);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // Create the pair inside the host's namespace, then move the bridge end: nothing lands in the root namespace.
    sh('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `br-${h}`]);
    sh('ip', ['-n', ns, 'link', 'set', `br-${h}`, 'netns', SRV]);
    sh('ip', ['-n', ns, 'address', 'add', `${HOST_IP[h]}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', SRV, 'link', 'set', `br-${h}`, 'master', 'br0']);
    sh('ip', ['-n', SRV, 'link', 'set', `br-${h}`, 'up']);
  }
}

async function teardown(): Promise<void> {
  for (const a of agents.values()) if (a.child.exitCode === null) a.child.kill('SIGTERM');
  await Promise.race([Promise.all([...agents.values()].map((a) => a.exited)), new Promise((r) => setTimeout(r, 6_000))]);
  if (server && server.child.exitCode === null) {
    server.child.kill('SIGTERM');
    await Promise.race([server.exited, new Promise((r) => setTimeout(r, 6_000))]);
  }
  deleteNamespaces([...Object.values(NS), SRV]);
  await root?.cleanup();
}

describe.skipIf(SKIP_REASON !== null)(`WireGuard mesh across three network namespaces${SKIP_REASON ? ` (skipped: ${SKIP_REASON})` : ''}`, () => {
  beforeAll(async () => {
    try {
      // Debian's packages when missing (the issue asks the setup to install them).
      ensureTools([
        ['wg', 'wireguard-tools'],
        ['wireguard-go', 'wireguard-go'],
        ['ping', 'iputils-ping'],
      ]);
      buildNetwork();
      root = await tempDir('ml-mesh-netns-');
      const dataDir = join(root.path, 'server');
      server = spawnIn(SRV, ['server', 'start', '--data-dir', dataDir, '--listen', `${SERVER_IP}:${PORT}`, '--san', SERVER_IP, '--ca-key', 'rsa2048'], { MESHLINK_MESH_CIDR: MESH_CIDR });
      await waitFor('server ready', async () => /"server ready"/.test(server!.output()) || (server!.child.exitCode !== null ? Promise.reject(new Error(server!.output())) : false), 60_000);
      const ready = JSON.parse(server.output().split('\n').find((l) => l.includes('"server ready"'))!) as { publicUrl: string; caPin: string };
      for (const h of HOSTS) {
        const stateDir = join(root.path, h);
        const t = await cli(['server', 'token', 'create', '--data-dir', dataDir, '--json', '--tag', h]);
        expect(t.code, t.stderr).toBe(0);
        const token = JSON.parse(t.stdout).token as string;
        const e = await cliIn(NS[h], ['agent', 'enroll', '--server', ready.publicUrl, '--token', token, '--ca-pin', ready.caPin, '--state-dir', stateDir, '--hostname', `host-${h}`, '--json']);
        expect(e.code, e.stdout).toBe(0);
        agents.set(h, spawnIn(NS[h], ['agent', 'run', '--state-dir', stateDir, '--wireguard', '--wg-interface', IFACE[h], '--endpoint', `${HOST_IP[h]}:51820`, '--reconcile-interval', '5s']));
      }
      // Wait until each node has its address, key and both peers on its interface.
      await waitFor(
        'full mesh on the interfaces',
        async () => {
          const r = await cli(['server', 'nodes', 'list', '--data-dir', dataDir, '--json']);
          const list = JSON.parse(r.stdout) as Array<{ id: string; hostname: string; meshIp: string; wgPublicKey: string | null }>;
          for (const n of list) if (n.wgPublicKey) info.set(n.hostname.replace('host-', '') as Host, { nodeId: n.id, meshIp: n.meshIp, wgPublicKey: n.wgPublicKey });
          return info.size === 3 && HOSTS.every((h) => wgPeers(h).length === 2);
        },
        60_000,
        500,
      );
    } catch (err) {
      const logs = [...agents.entries()].map(([h, a]) => `--- agent ${h}\n${a.output().slice(-3000)}`).join('\n');
      await teardown();
      throw new Error(`${(err as Error).message}\n--- server\n${server?.output().slice(-3000)}\n${logs}`);
    }
  }, 180_000);

  afterAll(async () => {
    await teardown();
  }, 60_000);

  it('A pings B and C over their mesh addresses (addresses from the configured range)', async () => {
    for (const h of HOSTS) expect(info.get(h)!.meshIp).toMatch(/^10\.233\.0\.\d+$/);
    await waitFor('A reaches B', async () => ping('a', info.get('b')!.meshIp), 20_000, 200);
    await waitFor('A reaches C', async () => ping('a', info.get('c')!.meshIp), 20_000, 200);
    // The interface carries the PSK the server generated for the pair, on both sides.
    const pskAB = sh('ip', ['netns', 'exec', NS.a, 'wg', 'show', IFACE.a, 'preshared-keys']).split('\n').find((l) => l.startsWith(info.get('b')!.wgPublicKey))!.split('\t')[1];
    const pskBA = sh('ip', ['netns', 'exec', NS.b, 'wg', 'show', IFACE.b, 'preshared-keys']).split('\n').find((l) => l.startsWith(info.get('a')!.wgPublicKey))!.split('\t')[1];
    expect(pskAB).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    expect(pskAB).toBe(pskBA);
  });

  it('after a policy separating A from C, A cannot reach C while A and B still can', async () => {
    const file = join(root!.path, 'policy.json');
    await writeFile(file, JSON.stringify({ rules: [{ from: 'a', to: 'b' }, { from: 'b', to: 'c' }] }));
    const set = await cli(['server', 'policy', 'set', file, '--data-dir', join(root!.path, 'server')]);
    expect(set.code, set.stdout).toBe(0);
    await waitFor('A drops C', async () => !wgPeers('a').includes(info.get('c')!.wgPublicKey) && !wgPeers('c').includes(info.get('a')!.wgPublicKey), 15_000, 200);
    expect(wgPeers('b')).toHaveLength(2);
    expect(ping('a', info.get('c')!.meshIp)).toBe(false);
    expect(ping('c', info.get('a')!.meshIp)).toBe(false);
    expect(ping('a', info.get('b')!.meshIp)).toBe(true);
    expect(ping('b', info.get('c')!.meshIp)).toBe(true);
  });

  it('after C is removed, its peers drop it within seconds', async () => {
    const started = Date.now();
    const r = await cli(['server', 'nodes', 'remove', 'host-c', '--data-dir', join(root!.path, 'server')]);
    expect(r.code, r.stderr).toBe(0);
    // The time is reported, not asserted: on a loaded machine CLI start-up alone can take seconds. What is
    // asserted is the mechanism: B drops C on the peer_removed event, without a restart or a reconnect.
    await waitFor('B drops C', async () => !wgPeers('b').includes(info.get('c')!.wgPublicKey), 30_000, 100);
    console.log(`netns: B dropped removed C ${Date.now() - started} ms after 'nodes remove' was started (incl. CLI start-up)`);
    expect(ping('b', info.get('c')!.meshIp)).toBe(false);
    expect(ping('b', info.get('a')!.meshIp)).toBe(true);
    expect(await agents.get('c')!.exited).toBe(78);
  });
});
