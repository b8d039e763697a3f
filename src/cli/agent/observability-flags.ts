import type { Command } from 'commander';
import { z } from 'zod';
import type { ObservabilityFeatureOptions } from '../../agent/observability/index.js';
import { parseListenAddress } from '../../util/listen-address.js';
import { parseFeatureFlags } from './flags.js';

/**
 * `agent run` flags of observability (docs/OPERATIONS-METRICS.md): --metrics-listen HOST:PORT serves
 * the agent's Prometheus metrics on a local address; --metrics-upload-interval SECONDS (default 60)
 * is how often they are sent to the server.
 */
const observabilityFlags = z.object({
  metricsListen: z.string().max(300).optional(),
  metricsUploadInterval: z.coerce.number().int().min(1).max(86_400).default(60),
});

export function addObservabilityFlags(cmd: Command): void {
  cmd.option('--metrics-listen <host:port>', 'serve the agent’s Prometheus metrics on this local address (e.g. 127.0.0.1:9465)');
  cmd.option('--metrics-upload-interval <seconds>', 'how often the agent’s metrics are sent to the server (default 60)');
}

export function parseObservabilityFlags(opts: Record<string, unknown>): ObservabilityFeatureOptions {
  const f = parseFeatureFlags('observability', observabilityFlags, { metricsListen: opts.metricsListen, metricsUploadInterval: opts.metricsUploadInterval });
  let metricsListen = null;
  if (f.metricsListen) {
    metricsListen = Object.freeze(parseListenAddress(f.metricsListen, 'metrics listen address', 'ML_ERR_CONFIG'));
  }
  return Object.freeze({ metricsListen, metricsUploadIntervalMs: f.metricsUploadInterval * 1000 });
}
