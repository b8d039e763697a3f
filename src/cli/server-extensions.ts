import type { Command } from 'commander';
import { registerConsoleCommands } from './server-console.js';
import { registerMeshCommands } from './server-mesh.js';
import { registerObservabilityCommands } from './server-observability.js';
import { registerOpsCommands } from './server-ops.js';
import { registerRunningOpsCommands } from './server-ops-running.js';
import { registerTokenCommands } from './server-tokens.js';
import { registerTunnelCommand } from './server-tunnel.js';

/** Subcommands of `meshlink server` that features add (mesh policy, operations, ...). */
export function registerServerExtensions(server: Command): void {
  registerTokenCommands(server);
  registerMeshCommands(server);
  registerObservabilityCommands(server);
  registerOpsCommands(server);
  registerRunningOpsCommands(server);
  registerTunnelCommand(server);
  registerConsoleCommands(server);
}
