import { Option, type Command } from 'commander';
import { z } from 'zod';
import type { MeshAgentFeatureOptions } from '../../agent/mesh/index.js';
import { endpointSchema } from '../../contract/mesh-events.js';
import { parseDuration } from '../../util/duration.js';
import { collect, parseFeatureFlags } from './flags.js';
import { parseListenAddress } from '../../util/listen-address.js';

/**
 * `agent run` flags of the mesh: --wireguard (apply with wg/ip, else only render the wg-quick file),
 * --endpoint HOST:PORT (repeatable; default: this host's IPv4 addresses), --wg-port, --wg-interface,
 * --reconcile-interval, --stun HOST:PORT / --no-stun (the NAT probe at start).
 */
const meshFlags = z.object({
  wireguard: z.boolean().default(false),
  endpoint: z.array(endpointSchema).max(32).default([]),
  wgPort: z.coerce.number().int().min(1).max(65_535).default(51820),
  wgInterface: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'an interface name of at most 15 characters').default('meshlink0'),
  /** false: --no-stun; a string: --stun HOST:PORT; true: the enrolled server's host, port 3478. */
  stun: z.union([z.boolean(), z.string()]).default(true),
  reconcileInterval: z
    .string()
    .default('60s')
    .transform((text, ctx) => {
      try {
        return parseDuration(text);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    }),
});

export function addMeshFlags(cmd: Command): void {
  cmd
    .option('--wireguard', 'apply the mesh to a WireGuard interface (root, wg and ip needed; wireguard-go when the kernel has no WireGuard)')
    .option('--endpoint <host:port>', 'endpoint peers use to reach this node (repeatable; default: this host’s IPv4 addresses)', collect)
    .addOption(new Option('--wg-port <port>', 'WireGuard listen port').default('51820'))
    .addOption(new Option('--wg-interface <name>', 'WireGuard interface name').default('meshlink0'))
    .option('--stun <host:port>', 'STUN responder to probe at start for the public endpoint and NAT class (default: the enrolled server host, port 3478)')
    .option('--no-stun', 'no NAT probe: peers are told this node is reachable at its --endpoint addresses')
    .addOption(new Option('--reconcile-interval <duration>', 'how often to reconcile with the server, e.g. 60s').default('60s'));
}

export function parseMeshFlags(opts: Record<string, unknown>): MeshAgentFeatureOptions {
  const f = parseFeatureFlags('mesh', meshFlags, {
    wireguard: opts.wireguard === true,
    endpoint: opts.endpoint ?? [],
    wgPort: opts.wgPort,
    wgInterface: opts.wgInterface,
    reconcileInterval: opts.reconcileInterval,
    stun: opts.stun ?? true,
  });
  const stun = f.stun === false ? null : f.stun === true ? 'enrolled-server' : parseListenAddress(f.stun, '--stun', 'ML_ERR_USAGE');
  return Object.freeze({
    wireguard: f.wireguard,
    interfaceName: f.wgInterface,
    listenPort: f.wgPort,
    reconcileIntervalMs: f.reconcileInterval,
    stun,
    ...(f.endpoint.length > 0 ? { endpoints: f.endpoint } : {}),
  });
}
