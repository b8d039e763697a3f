/**
 * The fleet benchmark's server process: the real startServer (store, CA, gateway, session host,
 * observability with its /metrics listener, and the mesh feature) plus one bench-only admin route that
 * publishes one signed mesh event (`action_request`) to every node through MeshService.publishAll:
 * persisted per node under its own seq, delivered live to connected agents and by replay to the others
 * when they reconnect, exactly as policy or key events are (see BENCHMARKS.md, "Fleet (issue 6)").
 * The mesh policy is `{"rules": []}` (no node peers with another): a full mesh of N nodes would be
 * N² PSKs, which measures mesh size, not the transport.
 *
 *   node dist/bench/fleet/server-main.js DATA_DIR PORT METRICS_PORT HEARTBEAT_MS
 */
import { parseServerConfig } from '../../src/server/config.js';
import type { ServerFeature } from '../../src/server/feature.js';
import { createMeshFeature } from '../../src/server/mesh/index.js';
import type { MeshService } from '../../src/server/mesh/service.js';
import { createObservabilityFeature } from '../../src/server/observability/index.js';
import { startServer } from '../../src/server/server.js';
import { benchBroadcast } from './broadcast-route.js';
import { createLogger } from '../../src/util/logger.js';

const [dataDir, port, metricsPort, heartbeatMs] = process.argv.slice(2);
let mesh: MeshService | null = null;
const broadcast: ServerFeature = (ctx) => {
  ctx.admin.handle(benchBroadcast, async ({ n }) => {
    const t0 = performance.now();
    const nodes = await mesh!.publishAll('action_request', { action: 'bench', args: { n: String(n) } });
    return { nodes, publishMs: performance.now() - t0 };
  });
};

const hb = Number(heartbeatMs ?? 15_000);
const config = parseServerConfig({
  dataDir,
  listen: { host: '127.0.0.1', port: Number(port) },
  caKeyType: 'rsa2048',
  heartbeatIntervalMs: hb,
  offlineAfterMs: hb * 3,
  enrollFailuresPerMinute: 100_000,
  logLevel: 'warn',
});
// FLEET_SERVER_LOG_LEVEL=debug shows e.g. why TLS handshakes fail (main.ts: FLEET_SERVER_LOG=file).
const logger = createLogger({ name: 'fleet-server', level: process.env.FLEET_SERVER_LOG_LEVEL ?? 'warn' });
const running = await startServer(config, {
  logger,
  passphrase: '',
  features: [
    createObservabilityFeature({ listen: { host: '127.0.0.1', port: Number(metricsPort) } }),
    createMeshFeature({ onStarted: (m) => (mesh = m) }),
    broadcast,
  ],
});
if (mesh!.policy === null) await mesh!.setPolicy({ rules: [] });
process.stdout.write(JSON.stringify({ ready: true, url: running.publicUrl, caPin: running.caPin, pid: process.pid }) + '\n');
process.on('SIGTERM', () => void running.close().then(() => process.exit(0)));
