import type { Command } from 'commander';
import { z } from 'zod';
import { parseTunnelAllowlist, type TunnelOptions } from '../../agent/tunnel/index.js';
import { collect, parseFeatureFlags } from './flags.js';

/**
 * `meshlink agent run` flag of tunnels (docs/OPERATIONS.md, "Tunnels"):
 *   --allow-tunnel <host:port,...>   targets `server tunnel` may reach through this agent
 *                                    (comma-separated, repeatable; none by default)
 */

const tunnelFlags = z.object({ allowTunnel: z.array(z.string()).max(256).default([]) });

export function addTunnelFlags(cmd: Command): void {
  cmd.option('--allow-tunnel <targets>', 'host:port targets tunnels may connect to, comma-separated (repeatable; none by default)', collect);
}

export function parseTunnelFlags(opts: Record<string, unknown>): TunnelOptions {
  const f = parseFeatureFlags('tunnel', tunnelFlags, { allowTunnel: opts.allowTunnel });
  return Object.freeze({ allow: parseTunnelAllowlist(f.allowTunnel) });
}
