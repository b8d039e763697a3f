import { withFailureReport } from './failure.js';
import type { Command } from 'commander';
import { z } from 'zod';
import { showNode, type NodeDetails } from '../admin-api/routes.js';
import { withOperator } from './operator.js';
import { printable } from './table.js';

/**
 * Observability CLI: `server nodes show NODE [--json]` (details, latest metrics, recent warnings and
 * audit records; `server start --metrics-listen` is defined with the other start flags in server.ts). Exit codes are those of `meshlink server` (docs/SERVER.md): 3 node not found or ambiguous,
 * 5 data dir not initialized, 2 usage.
 */

const showOptions = z.object({ dataDir: z.string().optional(), json: z.boolean().default(false) });


export function registerObservabilityCommands(server: Command): void {
  const nodes = server.commands.find((c) => c.name() === 'nodes');
  if (!nodes) return;
  nodes
    .command('show')
    .description('one node: details, latest reported metrics, recent warnings and audit records')
    .argument('<idOrHostname>', 'node id, or a hostname that names exactly one live node')
    .option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR or the documented default)')
    .option('--json', 'print one JSON object')
    .action(
      withFailureReport(async (idOrHostname: string, raw: unknown) => {
        const opts = showOptions.parse(raw);
        const details = await withOperator(opts.dataDir, (op) => op.call(showNode, { node: idOrHostname }));
        process.stdout.write(opts.json ? JSON.stringify(details) + '\n' : render(details));
      }),
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
  if (d.mesh) {
    const m = d.mesh;
    lines.push(
      `mesh ip       ${m.meshIp}`,
      `nat           ${m.nat === null ? '- (no probe reported)' : `${m.nat.mapping}, public ${m.nat.reflexive ?? '-'}`}`,
      `control from  ${m.observedAddress ?? '-'} (the TCP address; never a WireGuard endpoint)`,
      '',
      `mesh peers (${m.peers.length}): host, path, endpoint, link as the node reports it, last handshake`,
    );
    for (const p of m.peers.slice(0, 200)) lines.push(`  ${(p.hostname ?? p.nodeId).padEnd(20)} ${(p.path ?? '-').padEnd(6)} ${(p.endpoint ?? '-').padEnd(24)} ${(p.link ?? '-').padEnd(7)} ${p.lastHandshake ?? '-'}`);
    if (m.peers.length > 200) lines.push(`  … ${m.peers.length - 200} more (--json for all)`);
  }
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
  // Hostnames, versions, warnings and metric labels come from the agent: escaped for the terminal.
  return lines.map(printable).join('\n') + '\n';
}
