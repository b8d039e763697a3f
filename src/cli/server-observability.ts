import { withServerOrStore } from './server-access.js';
import { reportFailure } from './failure.js';
import type { Command } from 'commander';
import { z } from 'zod';
import { adminRequest } from '../server/admin.js';
import { configureMetricsListen, parseMetricsListen } from '../server/metrics.js';
import { nodeDetails, type NodeDetails } from '../server/observability/index.js';

/**
 * Observability CLI: `server start --metrics-listen HOST:PORT` (Prometheus on a separate local
 * listener) and `server nodes show NODE [--json]` (details, latest metrics, recent warnings and audit
 * records). Exit codes are those of `meshlink server` (docs/SERVER.md): 3 node not found or ambiguous,
 * 5 data dir not initialized, 2 usage.
 */

const showOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });


export function registerObservabilityCommands(server: Command): void {
  const start = server.commands.find((c) => c.name() === 'start');
  if (start) {
    start.option('--metrics-listen <host:port>', 'serve Prometheus metrics (GET /metrics) on this local address, e.g. 127.0.0.1:9464 (default: MESHLINK_METRICS_LISTEN, else off)');
    start.hook('preAction', (cmd) => {
      const value = (cmd.opts() as { metricsListen?: string }).metricsListen;
      if (value) configureMetricsListen(parseMetricsListen(value));
    });
  }

  const nodes = server.commands.find((c) => c.name() === 'nodes');
  if (!nodes) return;
  nodes
    .command('show')
    .description('one node: details, latest reported metrics, recent warnings and audit records')
    .argument('<idOrHostname>', 'node id, or a hostname that names exactly one live node')
    .option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR or the documented default)')
    .option('--json', 'print one JSON object')
    .action(async (idOrHostname: string, raw: unknown) => {
      try {
        const opts = showOptions.parse(raw);
        const details = await fetchDetails(opts.dataDir, idOrHostname);
        process.stdout.write(opts.json ? JSON.stringify(details) + '\n' : render(details));
      } catch (err) {
        reportFailure(err);
      }
    });
}

function fetchDetails(dataDirFlag: string | undefined, node: string): Promise<NodeDetails> {
  return withServerOrStore(
    dataDirFlag,
    (socket) => adminRequest<NodeDetails>(socket, 'GET', `/v1/nodes/show?node=${encodeURIComponent(node)}`),
    (store) => nodeDetails(store, node),
  );
}

function render(d: NodeDetails): string {
  const lines = [
    `id            ${d.id}`,
    `hostname      ${d.hostname}`,
    `online        ${d.online ? 'yes' : 'no'}`,
    `enrolled      ${d.createdAt}`,
    `last seen     ${d.lastSeen ?? '-'}`,
    ...(d.removedAt ? [`removed       ${d.removedAt}`] : []),
    `agent         ${d.agentVersion ?? '-'}`,
    `certificate   ${d.certSerial ?? '-'} (expires ${d.certNotAfter ?? '-'})`,
  ];
  const drops = Object.entries(d.dropped).filter(([, n]) => n > 0);
  if (drops.length > 0) lines.push(`dropped       ${drops.map(([k, n]) => `${k} ${n}`).join(', ')}`);
  lines.push('', `metrics (${d.metrics.length} series, latest report)`);
  for (const m of d.metrics.slice(0, 40)) {
    const labels = Object.entries(m.labels).map(([k, v]) => `${k}="${v}"`).join(',');
    lines.push(`  ${m.name}${labels ? `{${labels}}` : ''} ${m.value}`);
  }
  if (d.metrics.length > 40) lines.push(`  … ${d.metrics.length - 40} more (--json for all)`);
  lines.push('', `recent warnings (${d.warnings.length})`);
  for (const w of d.warnings) lines.push(`  ${w.ts} ${w.level.padEnd(5)} ${w.msg}`);
  lines.push('', `recent audit records (${d.audit.length})`);
  for (const a of d.audit) lines.push(`  ${a.ts} ${a.operation} ${a.target ?? ''} → ${a.result}${a.actor ? ` by ${a.actor}` : ''}`);
  return lines.join('\n') + '\n';
}
