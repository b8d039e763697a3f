import type { AgentRunner } from '../connection.js';
import type { AgentFeature } from '../feature.js';
import type { Logger } from '../../util/logger.js';
import { MeshAgent, type MeshAgentOptions } from './mesh-agent.js';
import { WireGuardApplier } from './wg-apply.js';

export { MeshAgent } from './mesh-agent.js';
export { readMeshStatus } from './state-file.js';
export { probeNat, type NatMapping, type NatProbeResult } from './nat-probe.js';

export interface MeshAgentFeatureOptions extends Omit<MeshAgentOptions, 'stateDir' | 'logger' | 'applier'> {
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
  const mesh = await MeshAgent.create({ ...options, stateDir: ctx.stateDir, logger: ctx.logger, applier });
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
