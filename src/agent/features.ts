import type { AgentFeature } from './feature.js';
import { meshFeature, type MeshAgentFeatureOptions } from './mesh/index.js';
import { observabilityFeature, type ObservabilityFeatureOptions } from './observability/index.js';
import { opsFeature, type OpsOptions } from './ops/index.js';
import { tunnelFeature, type TunnelOptions } from './tunnel/index.js';

/** The options of every feature of `agent run`, parsed and frozen by the CLI (src/cli/agent/). */
export interface AgentFeaturesOptions {
  readonly mesh: MeshAgentFeatureOptions;
  readonly observability: ObservabilityFeatureOptions;
  readonly ops: OpsOptions;
  readonly tunnel: TunnelOptions;
}

/**
 * The features of `agent run`, in attach order (they close in reverse). Observability attaches
 * after the mesh and before operations, as the run command always did: its warning capture then
 * sees what operations log. Tunnels attach last: they depend on nothing the others set up.
 */
export function agentFeatures(options: AgentFeaturesOptions): readonly AgentFeature[] {
  return [meshFeature(options.mesh), observabilityFeature(options.observability), opsFeature(options.ops), tunnelFeature(options.tunnel)];
}
