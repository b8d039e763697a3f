import type { AgentRunner } from '../connection.js';
import type { AgentFeature } from '../feature.js';
import type { Logger } from '../../util/logger.js';
import { MeshAgent, type MeshAgentOptions } from './mesh-agent.js';
import { WireGuardApplier } from './wg-apply.js';
import { loadIdentity } from '../identity.js';

export { MeshAgent } from './mesh-agent.js';
export { readMeshStatus } from './state-file.js';
export { probeNat, type NatMapping, type NatProbeResult } from './nat-probe.js';

export interface MeshAgentFeatureOptions extends Omit<MeshAgentOptions, 'stateDir' | 'logger' | 'applier' | 'stun'> {
  /**
   * The STUN responder to probe at start: HOST:PORT, `enrolled-server` (the enrolled server's host,
   * port 3478: `agent run`'s default), or null/absent: no probe (hello carries no NAT report).
   */
  stun?: { host: string; port: number } | 'enrolled-server' | null;
  /** Apply the configuration to a real interface (needs root and `wg`; otherwise render only). */
  wireguard?: boolean;
  interfaceName?: string;
}

export const DEFAULT_INTERFACE = 'meshlink0';

/** What the mesh uses of the runner: its registrations, connections and the current session; nothing of ops or uploads. */
export type MeshRunner = Pick<AgentRunner, 'addHelloFields' | 'onMessage' | 'on' | 'addReconciler' | 'session'>;

/**
 * Attaches the mesh to an agent runner: hello fields, the `event` handler, reconciliation on every
 * connection, and a reconciler for the operator's `reconcile` action (its digest check, then the
 * data plane, at once instead of at the next --reconcile-interval). Returns the MeshAgent; the
 * caller closes it (its close() stops the reconcile timer and a wireguard-go it started).
 */
export async function meshAgentFeature(runner: MeshRunner, ctx: { stateDir: string; logger: Logger; options?: MeshAgentFeatureOptions }): Promise<MeshAgent> {
  const options = ctx.options ?? {};
  let applier: WireGuardApplier | null = null;
  if (options.wireguard) {
    const can = await WireGuardApplier.available();
    if (can.ok) applier = new WireGuardApplier({ interfaceName: options.interfaceName ?? DEFAULT_INTERFACE, listenPort: options.listenPort ?? 51820, logger: ctx.logger });
    else ctx.logger.warn({ reason: can.reason }, '--wireguard requested but cannot be applied here; rendering the configuration only');
  }
  const stun = options.stun === 'enrolled-server' ? await enrolledServerStun(ctx.stateDir) : (options.stun ?? null);
  const mesh = await MeshAgent.create({ ...options, stun, stateDir: ctx.stateDir, logger: ctx.logger, applier });
  // Before the first connection: its hello carries the result, and no state (so no WireGuard
  // interface holding the listen port) is applied before it (docs/MESH.md, "NAT traversal").
  await mesh.probeNat();
  runner.addHelloFields(() => mesh.helloFields());
  runner.onMessage('event', (payload, session) => void mesh.receive(payload, session));
  runner.on('connected', (session, welcome) => mesh.connected(session, welcome));
  runner.addReconciler(async () => {
    const session = runner.session;
    if (!session) return { name: 'mesh', drift: ['not connected'] };
    const r = await mesh.reconcile(session);
    return { name: 'mesh', drift: r.drift.map((d) => `${d.field}${d.expected !== undefined || d.actual !== undefined ? ` (expected ${d.expected ?? '-'}, was ${d.actual ?? '-'})` : ''}`) };
  });
  return mesh;
}

/** The enrolled server's host with the default STUN port (RFC 8489 §9: 3478). */
export async function enrolledServerStun(stateDir: string): Promise<{ host: string; port: number }> {
  const identity = await loadIdentity(stateDir);
  return { host: new URL(identity.server).hostname.replace(/^\[|\]$/g, ''), port: DEFAULT_STUN_PORT };
}

export const DEFAULT_STUN_PORT = 3478;

/** The mesh feature of `agent run`, with options the CLI has already validated. */
export function meshFeature(options: MeshAgentFeatureOptions): AgentFeature {
  return {
    name: 'mesh',
    async attach(runner, ctx) {
      const mesh = await meshAgentFeature(runner, { stateDir: ctx.stateDir, logger: ctx.logger, options });
      return () => mesh.close();
    },
  };
}
