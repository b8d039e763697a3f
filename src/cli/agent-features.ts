import type { Command } from 'commander';
import type { AgentRunner } from '../agent/connection.js';
import type { Logger } from '../util/logger.js';
import { meshRunExtension } from './agent-mesh.js';
import { opsRunExtension } from './agent-ops.js';
import { observabilityRunExtension } from '../agent/observability/index.js';

/**
 * Extensions of `meshlink agent run`: each adds its flags to the command and attaches its handlers
 * to the runner before it connects (mesh, operations, ...).
 */
export interface AgentRunExtension {
  addOptions(cmd: Command): void;
  attach(runner: AgentRunner, ctx: { stateDir: string; logger: Logger; opts: Record<string, unknown> }): void | Promise<void>;
}

export const AGENT_RUN_EXTENSIONS: readonly AgentRunExtension[] = [meshRunExtension, observabilityRunExtension, opsRunExtension];
