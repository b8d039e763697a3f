import type { OfflineFeature, ServerFeature } from '../feature.js';
import { AuditLog } from '../audit-log.js';
import { AgentAuditIntake, type AgentAuditLimits } from './agent-audit.js';
import { opsStoreOf } from './store.js';
import { registerLiveOpsRoutes, registerOpsAdminRoutes } from './admin-routes.js';
import { RunningOperations } from './running.js';
import { createOperations } from './operations.js';
import { createTunnelServer } from './tunnel.js';
import { OPS_STREAM_PATH } from '../../admin-api/tunnel.js';
import { parseReleaseKey } from '../../contract/release.js';
import { BUNDLE_PATH_PREFIX, serveAgentBundle, UpgradeDistributor } from './upgrades.js';

/**
 * Operations over multiplexed streams (docs/OPERATIONS.md): remote actions, exec, log tail, file
 * transfer on agent streams, driven through the admin socket; agent upgrades. What agents report
 * having done goes to the core's audit log.
 */
export interface OpsFeatureOptions {
  /** Limits on what agents report in audit.batch (agent-audit.ts). */
  agentAudit?: AgentAuditLimits;
}

export const createOpsFeature = (options: OpsFeatureOptions = {}): ServerFeature => (ctx) => {
  const log = ctx.logger.child({ component: 'ops' });
  const ops = opsStoreOf(ctx.store);
  const releaseKeys = ctx.config.releaseKeys.map(parseReleaseKey);
  const upgrades = new UpgradeDistributor({ store: ctx.store, ops, sessions: ctx.sessions, dataDir: ctx.config.dataDir, releaseKeys, logger: log });

  const running = new RunningOperations();
  const tunnels = createTunnelServer(log, createOperations({ store: ctx.store, audit: ctx.audit, sessions: ctx.sessions, logger: log, running }));
  ctx.admin.addUpgrade(OPS_STREAM_PATH, (req, socket, head) => tunnels.handleUpgrade(req, socket, head));
  registerOpsAdminRoutes(ctx.admin, { ops, audit: ctx.audit, upgrades });
  registerLiveOpsRoutes(ctx.admin, { running, store: ctx.store, sessions: ctx.sessions });
  // Agent self-upgrade downloads, on the agent-facing gateway: only for a valid client certificate.
  ctx.publicRoutes.add({ method: 'GET', prefix: BUNDLE_PATH_PREFIX, clientCertificate: true }, (req, res, rest) => serveAgentBundle(ctx.store, req, res, rest));

  ctx.sessions.addWelcomeFields((hello, info) => {
    const offer = upgrades.offerFor(info.nodeId, hello);
    return offer ? { upgrade: offer } : {};
  });

  ctx.sessions.onMessage('agent.upgrade.status', (agent, s) => {
    ops.setUpgradeStatus({ nodeId: agent.nodeId, buildId: s.buildId, state: s.state, code: s.code ?? null, message: s.message ?? null, ts: Date.now() });
    if (s.state === 'applied' || s.state === 'failed') {
      const details = s.code || s.message ? { ...(s.code ? { code: s.code } : {}), ...(s.message ? { message: s.message } : {}) } : null;
      ctx.audit.record({ source: 'agent', actor: null, operation: 'agent.upgrade', nodeId: agent.nodeId, target: s.buildId, result: s.state, details });
    }
    log[s.state === 'failed' ? 'warn' : 'info']({ nodeId: agent.nodeId, buildId: s.buildId, state: s.state, code: s.code, message: s.message }, 'agent upgrade status');
  });

  // What the agent itself reports having done (every action, exec and transfer, with its outcome).
  const agentAudit = new AgentAuditIntake(ctx.audit, log, options.agentAudit);
  // The rate state outlives the session: reconnecting does not refill it (full buckets are evicted first).
  ctx.sessions.onMessage('audit.batch', (agent, batch) => void agentAudit.receive(agent.nodeId, batch));

  return { close: () => tunnels.close() };
};

export const opsFeature: ServerFeature = createOpsFeature();

/** With no server running: the audit log and the upgrade status, read from the store. */
export const opsOffline: OfflineFeature = (ctx) => registerOpsAdminRoutes(ctx.admin, { ops: opsStoreOf(ctx.store), audit: AuditLog.of(ctx.store), upgrades: null });
