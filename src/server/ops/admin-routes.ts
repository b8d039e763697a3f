import { endOperation, listAudit, listOperations, runBuiltin, setUpgrade, showUpgrade } from '../../admin-api/routes.js';
import type { AdminRoutes } from '../admin-routes.js';
import type { AgentSessions } from '../agent-sessions.js';
import type { AuditLog } from '../audit-log.js';
import type { Store } from '../store/store.js';
import { runBuiltinAction } from './builtin.js';
import type { RunningOperations } from './running.js';
import type { OpsStore } from './store.js';
import type { UpgradeDistributor } from './upgrades.js';

/**
 * The ops feature's routes of the operator API (docs/OPERATIONS.md, "Admin API"): the audit log, and
 * the agent bundle offered for self-upgrade. Streaming operations (action, exec, logs, cp) use the
 * WebSocket of src/admin-api/tunnel.ts (tunnel.ts here). Without a running server (`upgrades` null)
 * the audit log and the upgrade status are read from the store; offering a bundle needs the server.
 */
export function registerOpsAdminRoutes(routes: AdminRoutes, deps: { ops: OpsStore; audit: AuditLog; upgrades: UpgradeDistributor | null }): void {
  routes.handle(listAudit, ({ limit }) => deps.audit.list(limit));

  routes.handle(showUpgrade, async () => {
    const current = await deps.ops.currentBundle();
    return {
      current: current
        ? { buildId: current.buildId, sha256: current.sha256, version: current.version, size: current.size, percent: current.percent, createdAt: current.createdAt, keyId: current.keyId, allowDowngrade: current.allowDowngrade }
        : null,
      nodes: await deps.ops.listUpgradeStatus(),
    };
  });

  const upgrades = deps.upgrades;
  if (!upgrades) return;
  // Audited here, not by the admin server: the record names the build, known only once it is stored.
  routes.handle(
    setUpgrade,
    async ({ percent, manifest, allowDowngrade }, call) => {
      const auditId = await deps.audit.start({ actor: call.actor, operation: 'upgrade.set', nodeId: null, target: null, details: { percent, allowDowngrade } });
      try {
        const { bundle, notified } = await upgrades.set(call.body ?? Buffer.alloc(0), { percent, manifest: manifest ?? null, allowDowngrade });
        await deps.audit.finish(auditId, 'ok', { percent, buildId: bundle.buildId, version: bundle.version, size: bundle.size, keyId: bundle.keyId, allowDowngrade, notified });
        return { buildId: bundle.buildId, sha256: bundle.sha256, version: bundle.version, size: bundle.size, percent: bundle.percent, keyId: bundle.keyId ?? '', allowDowngrade: bundle.allowDowngrade, notified };
      } catch (err) {
        await deps.audit.finish(auditId, `error:${(err as { code?: string }).code ?? 'ML_ERR_SERVER_INTERNAL'}`);
        throw err;
      }
    },
    { audit: 'self' },
  );
}

/**
 * The routes that need the running server's agents: the running operations (list, end one) and the
 * read-only built-in actions as JSON (the console's ping and diagnostics).
 */
export function registerLiveOpsRoutes(routes: AdminRoutes, deps: { running: RunningOperations; store: Store; sessions: AgentSessions }): void {
  routes.handle(listOperations, () => deps.running.list());
  routes.handle(endOperation, ({ id }, call) => deps.running.end(id, call.actor), {
    audit: (answer) => ({ nodeId: answer.nodeId, target: `operation ${answer.id} (${answer.op}${answer.target ? ` ${answer.target}` : ''}, by ${answer.actor})` }),
  });
  routes.handle(runBuiltin, (input) => runBuiltinAction(deps, input), { audit: (answer) => ({ nodeId: answer.nodeId, target: answer.action }) });
}
