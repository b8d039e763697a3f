import type { Session } from '../protocol/session.js';
import type { Logger } from '../util/logger.js';
import type { AgentConnectionState, AgentRunner, AgentRunnerEvents } from './connection.js';
import type { AgentLogReader } from './state/log-file.js';
import { AgentUploader, type AgentUploads, type UploaderLimits } from './uploader.js';

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

/** Where features run: paths, logger and the agent's own log file from the run command. */
export interface AgentFeatureBase {
  readonly stateDir: string;
  readonly logger: Logger;
  /** The agent's own log file (state/log-file.ts), read by the ops feature's log tail; absent or null: none. */
  readonly logFile?: AgentLogReader | null;
  /** Bounds of the upload channel (uploader.ts); tests shorten its interval. */
  readonly uploadLimits?: Partial<UploaderLimits>;
}

/**
 * What a feature gets besides the runner: the runner's registration methods, bound, a send that
 * reports backpressure, the connection status, the agent's log file and the one upload channel to
 * the server. A feature takes the part of this it uses (each names its own Pick), and reaches into
 * the runner only for what the context does not carry.
 */
export interface AgentFeatureContext {
  readonly stateDir: string;
  readonly logger: Logger;
  /** The agent's own log file, or null when it keeps none (not started by `agent run`, read-only state dir). */
  readonly logFile: AgentLogReader | null;
  /** Hands records to the server (metrics, warn+ log lines, audit records); the core sends them. */
  readonly uploads: AgentUploads;
  readonly onMessage: AgentRunner['onMessage'];
  readonly onStream: AgentRunner['onStream'];
  readonly addHelloFields: AgentRunner['addHelloFields'];
  readonly addReconciler: AgentRunner['addReconciler'];
  /** Runs `handler` on every new connection, after welcome; returns its removal. */
  onConnected(handler: (...args: AgentRunnerEvents['connected']) => void): () => void;
  /** False when not connected or the control queue is above its high-water mark (AgentRunner.send). */
  readonly send: AgentRunner['send'];
  /** The connection state and the current session (null while not connected). */
  status(): { state: AgentConnectionState; session: Session | null };
}

/** A feature context and the agent core behind it that outlives the features (the upload channel). */
export interface FeatureCore {
  readonly context: AgentFeatureContext;
  /** Stops the upload channel; after the features are closed. Idempotent. */
  close(): void;
}

/**
 * The context features attach with. It owns the runner's one upload channel, bounded whatever the
 * server does, and flushes it on every connection: in the next turn of the event loop, so that the
 * features' own messages on connecting (the mesh's state.request) go out before what waited offline.
 */
export function openFeatureContext(runner: AgentRunner, base: AgentFeatureBase): FeatureCore {
  const uploader = new AgentUploader(() => runner.session, base.uploadLimits);
  let closed = false;
  const flush = (): void => {
    setImmediate(() => {
      if (!closed) uploader.flush();
    });
  };
  runner.on('connected', flush);
  const context: AgentFeatureContext = Object.freeze({
    stateDir: base.stateDir,
    logger: base.logger,
    logFile: base.logFile ?? null,
    uploads: Object.freeze({
      addMetrics: uploader.addMetrics.bind(uploader),
      addLog: uploader.addLog.bind(uploader),
      recordAudit: uploader.recordAudit.bind(uploader),
    }),
    onMessage: runner.onMessage.bind(runner),
    onStream: runner.onStream.bind(runner),
    addHelloFields: runner.addHelloFields.bind(runner),
    addReconciler: runner.addReconciler.bind(runner),
    onConnected: (handler: (...args: AgentRunnerEvents['connected']) => void) => {
      runner.on('connected', handler);
      return () => void runner.off('connected', handler);
    },
    send: runner.send.bind(runner),
    status: () => ({ state: runner.state, session: runner.session }),
  });
  return {
    context,
    close() {
      closed = true;
      runner.off('connected', flush);
      uploader.close();
    },
  };
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
 * order) and the error is rethrown, so a failed start leaves nothing running. The upload channel
 * closes after the last feature.
 */
export async function attachFeatures(runner: AgentRunner, features: readonly AgentFeature[], base: AgentFeatureBase): Promise<AttachedFeatures> {
  const core = openFeatureContext(runner, base);
  const ctx = core.context;
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
      core.close();
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
