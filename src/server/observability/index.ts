import { showNode, type NodeDetails } from '../../admin-api/routes.js';
import type { AdminRoutes } from '../admin-routes.js';
import type { FeatureQuestions, OfflineFeature, ServerFeature, ServerFeatureContext } from '../feature.js';
import { createMetricsFeature, type MetricsFeatureOptions } from '../metrics.js';
import { listNodes, resolveNode } from '../nodes.js';
import type { Store } from '../store/store.js';
import { TokenBuckets } from '../../util/token-bucket.js';
import { AuditLog } from '../audit-log.js';
import type { PresenceView } from '../presence.js';
import { NodeSerial } from '../../util/node-serial.js';
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

export async function nodeDetails(store: Store, idOrHostname: string, live?: { presence: PresenceView }, limits = { warnings: 50, audit: 50 }, questions?: FeatureQuestions): Promise<NodeDetails> {
  const node = await resolveNode(store, idOrHostname);
  const listing = (await listNodes(store, live)).find((n) => n.id === node.id);
  const obs = new ObservabilityStore(store);
  const metrics = await obs.metricsOf(node.id);
  const warnings = await obs.recentLogs(node.id, limits.warnings);
  const audit = await AuditLog.of(store).ofNode(node.id, limits.audit);
  const dropped = await obs.drops(node.id);
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
    metrics: metrics.map((m) => ({ ...m, ts: new Date(m.ts).toISOString() })),
    warnings: warnings.map((l) => ({ ts: new Date(l.ts).toISOString(), level: l.level, msg: l.msg, fields: l.fields })),
    audit: audit.map((a) => ({ ts: new Date(a.ts).toISOString(), operation: a.operation, actor: a.actor, target: a.target, result: a.result, source: a.source })),
    dropped,
    ...(await meshPart(questions, node.id)),
  };
}

/** The mesh feature's part of the details, when it runs (it answers meshNodeDetails). */
async function meshPart(questions: FeatureQuestions | undefined, nodeId: string): Promise<Pick<NodeDetails, 'mesh'>> {
  const mesh = (await questions?.ask('meshNodeDetails')?.(nodeId)) ?? null;
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
    // A batch is admitted or refused when it arrives (in message order); its writes, the refusal's
    // count included, then queue on the node's chain (serial.ts) behind its earlier ones.
    const serial = new NodeSerial();
    const write = (nodeId: string, what: string, fn: () => Promise<void>, refused?: () => void): void => {
      const queued = serial.run(nodeId, fn);
      if (queued === null) {
        refused?.();
        log.warn({ nodeId }, `${what} while the node’s earlier writes are still queued; not stored`);
      } else queued.catch((err: unknown) => log.error({ err }, `could not store ${what}`));
    };
    // Drop counts of messages that write nothing else (refused batches, audit.batch's `dropped`) add up
    // in memory until their one queued write runs: a flood of them costs one write, not one each.
    const unwritten = new Map<string, number>();
    const countDrops = (nodeId: string, kind: string, n: number): void => {
      if (n <= 0) return;
      const key = `${nodeId}\0${kind}`;
      const pending = unwritten.get(key);
      unwritten.set(key, (pending ?? 0) + n);
      if (pending !== undefined) return; // its write is queued and takes this count too
      write(nodeId, `${kind} drops`, () => {
        const total = unwritten.get(key) ?? 0;
        unwritten.delete(key);
        return obs.addDrops(nodeId, kind, total);
      }, () => unwritten.delete(key));
    };
    const admit = (nodeId: string, kind: string): boolean => {
      if (limiter.take(`${nodeId}\0${kind}`)) return true;
      countDrops(nodeId, `${kind}.rate_limited`, 1);
      return false;
    };

    ctx.sessions.onMessage('metrics.batch', (agent, batch) => {
      if (!admit(agent.nodeId, 'metrics')) return;
      const samples = batch.samples.map((s) => ({ name: s.name, labels: s.labels ?? {}, value: s.value, ts: s.ts }));
      write(agent.nodeId, 'metrics', async () => {
        await obs.addDrops(agent.nodeId, 'metrics', batch.dropped ?? 0);
        await obs.saveMetrics(agent.nodeId, samples, limits);
      });
    });
    ctx.sessions.onMessage('logs.batch', (agent, batch) => {
      if (!admit(agent.nodeId, 'logs')) return;
      // Only warnings and above are kept, whatever the agent sends; the newest records win.
      const kept = batch.records.filter((r) => r.level === 'warn' || r.level === 'error' || r.level === 'fatal').slice(-limits.logsPerNode);
      const now = Date.now();
      write(agent.nodeId, 'logs', async () => {
        await obs.addDrops(agent.nodeId, 'logs', batch.dropped ?? 0);
        await obs.saveLogs(agent.nodeId, kept.map((r) => ({ ts: r.ts, level: r.level, msg: r.msg, fields: (r.fields as Record<string, unknown> | undefined) ?? null })), limits, now);
      });
    });
    ctx.sessions.onMessage('audit.batch', (agent, batch) => {
      countDrops(agent.nodeId, 'audit', batch.dropped ?? 0);
    });
    ctx.sessions.on('agent-close', (a) => {
      if (!ctx.sessions.isOnline(a.nodeId)) limiter.forget((key) => key.startsWith(`${a.nodeId}\0`));
    });

    let pruning = false;
    const pruneTimer = setInterval(() => {
      // One prune at a time: on PostgreSQL a slow one must not pile up behind the timer.
      if (pruning) return;
      pruning = true;
      obs.prune(limits)
        .catch((err: unknown) => log.error({ err }, 'could not store retention'))
        .finally(() => (pruning = false));
    }, options.pruneIntervalMs ?? 60_000);
    pruneTimer.unref();

    registerObservabilityAdminRoutes(ctx.admin, ctx.store, ctx.presence, ctx.questions);

    const metricsHandle = await metrics(ctx);
    return {
      async close() {
        clearInterval(pruneTimer);
        // Writes already queued finish before the store closes.
        await serial.idle();
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
