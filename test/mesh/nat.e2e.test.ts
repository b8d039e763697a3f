import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir, waitFor } from '../e2e/harness.js';
import { cliIn, deleteNamespaces, ensureTools, natRouterRules, netnsSkipReason, sh, spawnIn, type Running } from '../helpers/netns.js';

/**
 * Endpoint discovery behind real NATs: a "public" namespace runs `meshlink server start` with its STUN
 * responder; two routers masquerade a LAN each onto it with nftables, one port-preserving ("easy"), one
 * with `random,fully-random` ("hard"), and both drop unsolicited inbound packets (`ct state new drop`)
 * as home routers do. A host behind each runs `meshlink agent nat-probe` from the WireGuard port.
 */

const SKIP_REASON = netnsSkipReason();

const suffix = randomBytes(2).toString('hex');
const PUB = `mlnp-${suffix}`;
const ROUTER = { easy: `mlnre-${suffix}`, hard: `mlnrh-${suffix}` } as const;
const HOST = { easy: `mlnhe-${suffix}`, hard: `mlnhh-${suffix}` } as const;
type Side = keyof typeof ROUTER;
const PUBLIC_NET = '198.51.100';
const SERVER_IP = `${PUBLIC_NET}.1`;
const ROUTER_IP: Record<Side, string> = { easy: `${PUBLIC_NET}.2`, hard: `${PUBLIC_NET}.3` };
const LAN: Record<Side, string> = { easy: '10.241.1', hard: '10.241.2' };
const STUN_PORT = 3478;
const WG_PORT = 51820;

function buildNetwork(): void {
  sh('ip', ['netns', 'add', PUB]);
  sh('ip', ['-n', PUB, 'link', 'set', 'lo', 'up']);
  sh('ip', ['-n', PUB, 'link', 'add', 'br0', 'type', 'bridge']);
  sh('ip', ['-n', PUB, 'address', 'add', `${SERVER_IP}/24`, 'dev', 'br0']);
  sh('ip', ['-n', PUB, 'link', 'set', 'br0', 'up']);
  for (const side of ['easy', 'hard'] as const) {
    const router = ROUTER[side];
    const host = HOST[side];
    sh('ip', ['netns', 'add', router]);
    sh('ip', ['netns', 'add', host]);
    for (const ns of [router, host]) sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // The router's WAN on the public bridge; every pair is made inside a namespace of the test.
    sh('ip', ['-n', router, 'link', 'add', 'wan', 'type', 'veth', 'peer', 'name', `pub-${side}`]);
    sh('ip', ['-n', router, 'link', 'set', `pub-${side}`, 'netns', PUB]);
    sh('ip', ['-n', PUB, 'link', 'set', `pub-${side}`, 'master', 'br0']);
    sh('ip', ['-n', PUB, 'link', 'set', `pub-${side}`, 'up']);
    sh('ip', ['-n', router, 'address', 'add', `${ROUTER_IP[side]}/24`, 'dev', 'wan']);
    sh('ip', ['-n', router, 'link', 'set', 'wan', 'up']);
    // The LAN between router and host.
    sh('ip', ['-n', router, 'link', 'add', 'lan', 'type', 'veth', 'peer', 'name', 'eth0']);
    sh('ip', ['-n', router, 'link', 'set', 'eth0', 'netns', host]);
    sh('ip', ['-n', router, 'address', 'add', `${LAN[side]}.1/24`, 'dev', 'lan']);
    sh('ip', ['-n', router, 'link', 'set', 'lan', 'up']);
    sh('ip', ['-n', host, 'address', 'add', `${LAN[side]}.2/24`, 'dev', 'eth0']);
    sh('ip', ['-n', host, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', host, 'route', 'add', 'default', 'via', `${LAN[side]}.1`]);
    sh('ip', ['netns', 'exec', router, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    sh('ip', ['netns', 'exec', router, 'nft', '-f', '-'], natRouterRules(side === 'hard'));
  }
}

let root: { path: string; cleanup(): Promise<void> } | undefined;
let server: Running | undefined;

async function teardown(): Promise<void> {
  if (server && server.child.exitCode === null) {
    server.child.kill('SIGTERM');
    await Promise.race([server.exited, new Promise((r) => setTimeout(r, 6_000))]);
  }
  deleteNamespaces([HOST.easy, HOST.hard, ROUTER.easy, ROUTER.hard, PUB]);
  await root?.cleanup();
}

interface Probe {
  localPort: number;
  reflexive: { address: string; port: number };
  alternateReflexive: { address: string; port: number } | null;
  mapping: string;
}

async function probe(ns: string): Promise<Probe> {
  const r = await cliIn(ns, ['agent', 'nat-probe', '--stun', `${SERVER_IP}:${STUN_PORT}`, '--local-port', String(WG_PORT), '--json']);
  expect(r.code, r.stdout).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Probe;
}

describe.skipIf(SKIP_REASON !== null)(`NAT endpoint discovery through nftables routers${SKIP_REASON ? ` (skipped: ${SKIP_REASON})` : ''}`, () => {
  beforeAll(async () => {
    try {
      ensureTools([['nft', 'nftables']]);
      buildNetwork();
      root = await tempDir('ml-nat-netns-');
      server = spawnIn(PUB, ['server', 'start', '--data-dir', join(root.path, 'server'), '--listen', `${SERVER_IP}:18443`, '--san', SERVER_IP, '--ca-key', 'rsa2048', '--stun-listen', `${SERVER_IP}:${STUN_PORT}`]);
      await waitFor('server ready', async () => /"server ready"/.test(server!.output()) || (server!.child.exitCode !== null ? Promise.reject(new Error(server!.output())) : false), 60_000);
      expect(server.output()).toMatch(/STUN responder listening/);
    } catch (err) {
      const out = server?.output().slice(-3000);
      await teardown();
      throw new Error(`${(err as Error).message}\n--- server\n${out}`);
    }
  }, 120_000);

  afterAll(async () => {
    await teardown();
  }, 60_000);

  it('behind a port-preserving NAT: the router address, the WireGuard port, one mapping for both STUN ports', async () => {
    const result = await probe(HOST.easy);
    expect(result.localPort).toBe(WG_PORT);
    expect(result.reflexive).toEqual({ address: ROUTER_IP.easy, port: WG_PORT });
    expect(result.alternateReflexive).toEqual(result.reflexive);
    expect(result.mapping).toBe('endpoint-independent');
  });

  it('behind a fully random NAT: the router address, a new port per destination: endpoint-dependent', async () => {
    const result = await probe(HOST.hard);
    expect(result.reflexive.address).toBe(ROUTER_IP.hard);
    expect(result.alternateReflexive?.address).toBe(ROUTER_IP.hard);
    expect(result.alternateReflexive?.port).not.toBe(result.reflexive.port);
    expect(result.mapping).toBe('endpoint-dependent');
  });

  it('on the public network itself: no NAT', async () => {
    const result = await probe(PUB);
    expect(result.reflexive).toEqual({ address: SERVER_IP, port: WG_PORT });
    expect(result.mapping).toBe('none');
  });
});
