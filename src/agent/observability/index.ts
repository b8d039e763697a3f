import type { Server } from 'node:http';
import type { ListenAddress } from '../../util/listen-address.js';
import type { Logger } from '../../util/logger.js';
import { serveMetrics } from '../../util/metrics-listener.js';
import type { AgentRunner } from '../connection.js';
import type { AgentFeature, AgentFeatureContext } from '../feature.js';
import { AgentMetrics } from '../metrics.js';
import type { LogRecord } from '../uploader.js';

/**
 * `agent run` observability: the agent's Prometheus metrics on a local port when asked
 * (`--metrics-listen 127.0.0.1:9465`), and the upload of its metrics (every
 * `--metrics-upload-interval`, default 60 s) and of its warn+ log lines to the server, through agent
 * core's upload channel (../uploader.ts, the `uploads` of the feature context), which the ops feature's
 * audit records share.
 */

const SECRET_KEY = /token|csr|key|passphrase|secret|password|cert/i;
const MAX_MSG = 4096;
const MAX_FIELDS_JSON = 4096;

/**
 * Copies the logger's warn/error/fatal lines into the uploader. Fields are reduced to primitives
 * under keys that cannot name secrets (the logger redacts its own output; this copy must too).
 */
export function captureWarnings(logger: Logger, sink: (r: LogRecord) => void): () => void {
  const levels = ['warn', 'error', 'fatal'] as const;
  const originals = levels.map((l) => logger[l]);
  for (const level of levels) {
    const original = logger[level];
    (logger as unknown as Record<string, unknown>)[level] = function (this: Logger, ...args: unknown[]) {
      try {
        sink(toRecord(level, args));
      } catch {
        /* never let capture break logging */
      }
      return (original as (...a: unknown[]) => void).apply(logger, args);
    };
  }
  return () => levels.forEach((l, i) => ((logger as unknown as Record<string, unknown>)[l] = originals[i]));
}

function toRecord(level: 'warn' | 'error' | 'fatal', args: unknown[]): LogRecord {
  let fields: Record<string, unknown> | undefined;
  let msg = '';
  if (typeof args[0] === 'string') msg = args[0];
  else {
    if (args[0] && typeof args[0] === 'object') fields = safeFields(args[0] as Record<string, unknown>);
    if (typeof args[1] === 'string') msg = args[1];
  }
  const record: LogRecord = { ts: Date.now(), level, msg: msg.slice(0, MAX_MSG) };
  if (fields && Object.keys(fields).length > 0 && JSON.stringify(fields).length <= MAX_FIELDS_JSON) record.fields = fields;
  return record;
}

function safeFields(obj: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj).slice(0, 32)) {
    if (SECRET_KEY.test(k)) continue;
    if (v instanceof Error) out[k] = { message: v.message.slice(0, 512), ...((v as { code?: unknown }).code ? { code: String((v as { code?: unknown }).code) } : {}) };
    else if (v && typeof v === 'object' && k === 'err') {
      const e = v as { code?: unknown; message?: unknown };
      out[k] = { ...(typeof e.code === 'string' ? { code: e.code } : {}), ...(typeof e.message === 'string' ? { message: e.message.slice(0, 512) } : {}) };
    } else if (typeof v === 'string') out[k] = v.slice(0, 512);
    else if (typeof v === 'number' || typeof v === 'boolean' || v === null) out[k] = v;
  }
  return out;
}

export interface AgentObservability {
  metrics: AgentMetrics;
  server: Server | null;
  close(): Promise<void>;
}

/** What observability takes from the feature context: the logger (warnings to copy), the upload channel, connections. */
export type ObservabilityContext = Pick<AgentFeatureContext, 'logger' | 'uploads' | 'onConnected'>;

/**
 * Wires metrics and warning capture to a runner and the upload channel (also used by tests
 * in-process). The runner itself is for AgentMetrics (core), which reads its state and events.
 */
export async function attachObservability(
  runner: AgentRunner,
  ctx: ObservabilityContext,
  opts: { metricsListen?: ListenAddress | null; metricsUploadIntervalMs?: number } = {},
): Promise<AgentObservability> {
  const { logger, uploads } = ctx;
  const metrics = new AgentMetrics(runner);
  const restore = captureWarnings(logger, (r) => uploads.addLog(r));
  const sample = (): void => {
    metrics.samples().then(
      (s) => uploads.addMetrics(s),
      () => {},
    );
  };
  const interval = setInterval(sample, opts.metricsUploadIntervalMs ?? 60_000);
  interval.unref();
  // A first sample as soon as the first connection is up, not a full interval later.
  const offFirst = ctx.onConnected(() => {
    offFirst();
    sample();
  });
  let server: Server | null = null;
  if (opts.metricsListen) {
    server = await serveMetrics(metrics.registry, opts.metricsListen);
    server.unref();
    const { host, port } = opts.metricsListen;
    logger.info({ address: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}` }, 'agent metrics listening');
  }
  return {
    metrics,
    server,
    async close() {
      clearInterval(interval);
      offFirst();
      metrics.close();
      restore();
      if (server) await new Promise<void>((r) => server!.close(() => r()));
    },
  };
}

export interface ObservabilityFeatureOptions {
  /** Where to serve the agent's /metrics (--metrics-listen); null: not served. */
  metricsListen: ListenAddress | null;
  /** How often metrics are sampled into metrics.batch (--metrics-upload-interval). */
  metricsUploadIntervalMs: number;
}

/** The observability feature of `agent run`, with options the CLI has already validated. */
export function observabilityFeature(options: ObservabilityFeatureOptions): AgentFeature {
  return {
    name: 'observability',
    async attach(runner, ctx) {
      const handle = await attachObservability(runner, ctx, options);
      return () => handle.close();
    },
  };
}
