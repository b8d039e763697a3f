import type { AgentFeature, AgentFeatureContext } from '../feature.js';
import type { TunnelTarget } from './allowlist.js';
import { TunnelService } from './service.js';

export { parseTunnelAllowlist, parseTunnelTarget, type TunnelTarget } from './allowlist.js';

/**
 * Port-forward tunnels (docs/OPERATIONS.md, "Tunnels"): the agent's end of `meshlink server
 * tunnel`, one tunnel.open stream per TCP connection, to targets on its allowlist only.
 */

export interface TunnelOptions {
  /** host:port pairs the agent may connect to (default: none, so every tunnel is refused). */
  readonly allow: readonly TunnelTarget[];
}

/** What tunnels take from the feature context: the logger and the stream registration. */
export type TunnelFeatureContext = Pick<AgentFeatureContext, 'logger' | 'onStream'>;

export interface TunnelHandle {
  readonly service: TunnelService;
  close(): void;
}

export function attachTunnels(ctx: TunnelFeatureContext, options: TunnelOptions): TunnelHandle {
  const log = ctx.logger.child({ component: 'tunnel' });
  const service = new TunnelService(options.allow, log);
  const off = ctx.onStream('tunnel.open', (stream, session) => service.handle(stream, session));
  if (options.allow.length > 0) log.info({ allow: options.allow.map((t) => `${t.host}:${t.port}`) }, 'tunnels allowed');
  return {
    service,
    close() {
      off();
      service.close();
    },
  };
}

export function tunnelFeature(options: TunnelOptions): AgentFeature {
  return {
    name: 'tunnel',
    attach(_runner, ctx) {
      const t = attachTunnels(ctx, options);
      return () => t.close();
    },
  };
}
