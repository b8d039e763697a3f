/**
 * The fleet benchmark's server process: the real startServer (store, CA, gateway, session host,
 * observability with its /metrics listener) plus one bench-only feature, an admin route that sends one
 * synthetic `event` to every connected agent (fan-out timing and lost-event accounting by seq; see
 * BENCHMARKS.md, "Fleet (issue 6)"). The mesh feature is not loaded: its events are per-node and its
 * peer set grows with N², so it would measure mesh computation, not transport fan-out.
 *
 *   node dist/bench/fleet/server-main.js DATA_DIR PORT METRICS_PORT HEARTBEAT_MS
 */
import { encode } from '@msgpack/msgpack';
import { parseServerConfig } from '../../src/server/config.js';
import type { ServerFeature } from '../../src/server/feature.js';
import { sendJson } from '../../src/server/http-json.js';
import { createObservabilityFeature } from '../../src/server/observability/index.js';
import { startServer } from '../../src/server/server.js';
import { createLogger } from '../../src/util/logger.js';

const [dataDir, port, metricsPort, heartbeatMs] = process.argv.slice(2);
const broadcast: ServerFeature = (ctx) => {
  ctx.admin.add('POST /v1/bench/broadcast', async (req, res) => {
    const seq = Number(new URL(req.url ?? '/', 'http://admin').searchParams.get('seq'));
    const t0 = performance.now();
    const envelope = encode({ seq, type: 'bench', ts: Date.now(), payload: null });
    const signature = new Uint8Array(64);
    let sent = 0;
    for (const set of ctx.sessions.agents.values()) {
      for (const a of set) {
        if (a.session.state !== 'open') continue;
        a.session.send('event', { envelope, signature, keyId: 'bench' });
        sent++;
      }
    }
    sendJson(res, 200, { sent, enqueueMs: performance.now() - t0 });
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
  features: [createObservabilityFeature({ listen: { host: '127.0.0.1', port: Number(metricsPort) } }), broadcast],
});
process.stdout.write(JSON.stringify({ ready: true, url: running.publicUrl, caPin: running.caPin, pid: process.pid }) + '\n');
process.on('SIGTERM', () => void running.close().then(() => process.exit(0)));
