import { Option, type Command } from 'commander';
import { z } from 'zod';
import { meshAgentFeature } from '../agent/mesh/index.js';
import { endpointSchema } from '../contract/mesh-events.js';
import { parseDuration } from '../util/duration.js';
import type { AgentRunExtension } from './agent-features.js';
import { registerReconciler } from '../agent/ops/index.js';

/**
 * `agent run` flags of the mesh: --wireguard (apply with wg/ip, else only render the wg-quick file),
 * --endpoint HOST:PORT (repeatable; default: this host's IPv4 addresses), --wg-port, --wg-interface,
 * --reconcile-interval.
 */
const meshFlags = z.object({
  wireguard: z.boolean().default(false),
  endpoint: z.array(endpointSchema).max(32).default([]),
  wgPort: z.coerce.number().int().min(1).max(65_535).default(51820),
  wgInterface: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'an interface name of at most 15 characters').default('meshlink0'),
  reconcileInterval: z.string().default('60s'),
});

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export const meshRunExtension: AgentRunExtension = {
  addOptions(cmd: Command) {
    cmd
      .option('--wireguard', 'apply the mesh to a WireGuard interface (root, wg and ip needed; wireguard-go when the kernel has no WireGuard)')
      .option('--endpoint <host:port>', 'endpoint peers use to reach this node (repeatable; default: this host’s IPv4 addresses)', collect)
      .addOption(new Option('--wg-port <port>', 'WireGuard listen port').default('51820'))
      .addOption(new Option('--wg-interface <name>', 'WireGuard interface name').default('meshlink0'))
      .addOption(new Option('--reconcile-interval <duration>', 'how often to reconcile with the server, e.g. 60s').default('60s'));
  },
  async attach(runner, { stateDir, logger, opts }) {
    const f = meshFlags.parse({
      wireguard: opts.wireguard === true,
      endpoint: (opts.endpoint as string[] | undefined) ?? [],
      wgPort: opts.wgPort,
      wgInterface: opts.wgInterface,
      reconcileInterval: opts.reconcileInterval,
    });
    const mesh = await meshAgentFeature(runner, {
      stateDir,
      logger,
      options: {
        wireguard: f.wireguard,
        interfaceName: f.wgInterface,
        listenPort: f.wgPort,
        reconcileIntervalMs: parseDuration(f.reconcileInterval),
        ...(f.endpoint.length > 0 ? { endpoints: f.endpoint } : {}),
      },
    });
    // The operator's `reconcile` action also reconciles the mesh now (its digest check, then the
    // data plane), instead of waiting for the next --reconcile-interval.
    registerReconciler(runner, async () => {
      const session = runner.session;
      if (!session) return { name: 'mesh', drift: ['not connected'] };
      const r = await mesh.reconcile(session);
      return { name: 'mesh', drift: r.drift.map((d) => `${d.field}${d.expected !== undefined || d.actual !== undefined ? ` (expected ${d.expected ?? '-'}, was ${d.actual ?? '-'})` : ''}`) };
    });
  },
};
