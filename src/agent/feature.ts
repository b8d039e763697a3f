import type { Logger } from '../util/logger.js';
import type { AgentRunner } from './connection.js';

/**
 * An agent feature (mesh, observability, operations, ...) attaches to a runner before it connects:
 * it registers its message and stream handlers and hello fields, and returns how to undo that.
 * Features get typed options that the CLI has already parsed and frozen (src/cli/agent/); they
 * never read flags themselves.
 *
 * attachFeatures attaches them in order and closes them in reverse order, so a feature can rely
 * on the ones attached before it for as long as it lives (like nested resources).
 */

/** Undoes an attach: stops timers and child processes, drops listeners. Called once. */
export type AgentFeatureClose = () => void | Promise<void>;

export interface AgentFeatureContext {
  readonly stateDir: string;
  readonly logger: Logger;
}

export interface AgentFeature {
  /** For logs: which feature failed to attach or close. */
  readonly name: string;
  attach(runner: AgentRunner, ctx: AgentFeatureContext): AgentFeatureClose | Promise<AgentFeatureClose>;
}

export interface AttachedFeatures {
  /** Closes every attached feature, last attached first; idempotent; never rejects. */
  close(): Promise<void>;
}

/**
 * Attaches `features` in order. If one throws, the ones already attached are closed (in reverse
 * order) and the error is rethrown, so a failed start leaves nothing running.
 */
export async function attachFeatures(runner: AgentRunner, features: readonly AgentFeature[], ctx: AgentFeatureContext): Promise<AttachedFeatures> {
  const attached: Array<{ name: string; close: AgentFeatureClose }> = [];
  let closing: Promise<void> | null = null;
  const closeAll = (): Promise<void> =>
    (closing ??= (async () => {
      for (const f of attached.reverse()) {
        try {
          await f.close();
        } catch (err) {
          // One feature failing to close must not keep the others running.
          ctx.logger.warn({ feature: f.name, err: { message: (err as Error)?.message ?? String(err) } }, 'agent feature failed to close');
        }
      }
      attached.length = 0;
    })());
  for (const feature of features) {
    try {
      attached.push({ name: feature.name, close: await feature.attach(runner, ctx) });
    } catch (err) {
      await closeAll();
      throw err;
    }
  }
  return { close: closeAll };
}
