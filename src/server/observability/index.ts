import { showNode, type NodeDetails } from '../../admin-api/routes.js';
import type { AdminRoutes } from '../admin-routes.js';
import type { FeatureQuestions, OfflineFeature, ServerFeature, ServerFeatureContext } from '../feature.js';
import { createMetricsFeature, type MetricsFeatureOptions } from '../metrics.js';
import { listNodes, resolveNode } from '../nodes.js';
import type { Store } from '../store/store.js';
import { TokenBuckets } from '../../util/token-bucket.js';
import { AuditLog } from '../audit-log.js';
import type { PresenceView } from '../presence.js';
import { DEFAULT_RETENTION, ObservabilityStore, type RetentionLimits } from './store.js';

/**
 * Observability (issue 6): the Prometheus listener (metrics.ts) and the agents' uploads —
 * metrics.batch (latest value per series), logs.batch (warnings and above) and the `dropped` counts
 * both carry — kept with bounded retention (store.ts). audit.batch is stored in the
 * core's audit log; `nodes show` reads it from there.
 *
 * Each node may send at most `batchesPerMinute` batches of each kind (token bucket); more are
 * discarded and counted, so a misbehaving agent cannot make the server write without bound.
 */

export interface ObservabilityOptions extends MetricsFeatureOptions {
  retention?: Partial<RetentionLimits>;
  batchesPerMinute?: number;
  /** How often retention by age is applied (default 1 min). */
  pruneIntervalMs?: number;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

export function nodeDetails(store: Store, idOrHostname: string, live?: { presence: PresenceView }, limits = { warnings: 50, audit: 50 }, questions?: FeatureQuestions): NodeDetails {
  const node = resolveNode(store, idOrHostname);
  const listing = listNodes(store, live).find((n) => n.id === node.id);
  const obs = new ObservabilityStore(store);
  return {
    id: node.id,
    hostname: node.hostname,
    online: listing?.online ?? false,
    createdAt: new Date(node.createdAt).toISOString(),
    lastSeen: listing?.lastSeen ?? iso(node.lastSeen), // the listing flushed pending last-seen writes
    removedAt: iso(node.removedAt),
    agentVersion: node.agentVersion,
    certSerial: listing?.certSerial ?? null,
    certNotAfter: listing?.certNotAfter ?? null,
    metrics: obs.metricsOf(node.id).map((m) => ({ ...m, ts: new Date(m.ts).toISOString() })),
    warnings: obs.recentLogs(node.id, limits.warnings).map((l) => ({ ts: new Date(l.ts).toISOString(), level: l.level, msg: l.msg, fields: l.fields })),
    audit: AuditLog.of(store)
      .ofNode(node.id, limits.audit)
      .map((a) => ({ ts: new Date(a.ts).toISOString(), operation: a.operation, actor: a.actor, target: a.target, result: a.result, source: a.source })),
    dropped: obs.drops(node.id),
    ...meshPart(questions, node.id),
  };
}

/** The mesh feature's part of the details, when it runs (it answers meshNodeDetails). */
function meshPart(questions: FeatureQuestions | undefined, nodeId: string): Pick<NodeDetails, 'mesh'> {
  const mesh = questions?.ask('meshNodeDetails')?.(nodeId) ?? null;
  return mesh === null ? {} : { mesh };
}

export function createObservabilityFeature(options: ObservabilityOptions = {}): ServerFeature {
  const metrics = createMetricsFeature(options);
  return async (ctx: ServerFeatureContext) => {
    const log = ctx.logger.child({ component: 'observability' });
    const limits: RetentionLimits = { ...DEFAULT_RETENTION, ...options.retention };
    const obs = new ObservabilityStore(ctx.store);
    // Keys are node × kind (three kinds) of online nodes; offline nodes are forgotten below.
    const limiter = new TokenBuckets({ perMinute: options.batchesPerMinute ?? 30, maxEntries: 300_000 });
    const admit = (nodeId: string, kind: string): boolean => {
      if (limiter.take(`${nodeId}\0${kind}`)) return true;
      obs.addDrops(nodeId, `${kind}.rate_limited`, 1);
      return false;
    };
    const guard = (what: string, fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        log.error({ err }, `could not store ${what}`);
      }
    };

    ctx.sessions.onMessage('metrics.batch', (agent, batch) =>
      guard('metrics', () => {
        if (!admit(agent.nodeId, 'metrics')) return;
        obs.addDrops(agent.nodeId, 'metrics', batch.dropped ?? 0);
        obs.saveMetrics(agent.nodeId, batch.samples.map((s) => ({ name: s.name, labels: s.labels ?? {}, value: s.value, ts: s.ts })), limits);
      }),
    );
    ctx.sessions.onMessage('logs.batch', (agent, batch) =>
      guard('logs', () => {
        if (!admit(agent.nodeId, 'logs')) return;
        obs.addDrops(agent.nodeId, 'logs', batch.dropped ?? 0);
        // Only warnings and above are kept, whatever the agent sends; the newest records win.
        const kept = batch.records.filter((r) => r.level === 'warn' || r.level === 'error' || r.level === 'fatal').slice(-limits.logsPerNode);
        obs.saveLogs(agent.nodeId, kept.map((r) => ({ ts: r.ts, level: r.level, msg: r.msg, fields: (r.fields as Record<string, unknown> | undefined) ?? null })), limits);
      }),
    );
    ctx.sessions.onMessage('audit.batch', (agent, batch) => guard('audit drops', () => obs.addDrops(agent.nodeId, 'audit', batch.dropped ?? 0)));
    ctx.sessions.on('agent-close', (a) => {
      if (!ctx.sessions.isOnline(a.nodeId)) limiter.forget((key) => key.startsWith(`${a.nodeId}\0`));
    });

    const pruneTimer = setInterval(() => guard('retention', () => obs.prune(limits)), options.pruneIntervalMs ?? 60_000);
    pruneTimer.unref();

    registerObservabilityAdminRoutes(ctx.admin, ctx.store, ctx.presence, ctx.questions);

    const metricsHandle = await metrics(ctx);
    return {
      async close() {
        clearInterval(pruneTimer);
        await metricsHandle?.close?.();
      },
    };
  };
}

export const observabilityFeature: ServerFeature = createObservabilityFeature();

/** `server nodes show` (details, latest metrics, recent warnings and audit records); with no server, every node is offline. */
function registerObservabilityAdminRoutes(routes: AdminRoutes, store: Store, presence: PresenceView | null, questions: FeatureQuestions): void {
  routes.handle(showNode, ({ node }) => nodeDetails(store, node, presence ? { presence } : undefined, undefined, questions));
}

export const observabilityOffline: OfflineFeature = (ctx) => registerObservabilityAdminRoutes(ctx.admin, ctx.store, null, ctx.questions);
