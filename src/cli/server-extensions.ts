import type { Command } from 'commander';
import { registerObservabilityCommands } from './server-observability.js';

/** Subcommands of `meshlink server` that features add (mesh policy, operations, ...). */
export function registerServerExtensions(server: Command): void {
  registerObservabilityCommands(server);
}
