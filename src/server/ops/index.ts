import type { OfflineFeature, ServerFeature } from '../feature.js';
import { AuditLog } from '../audit-log.js';
import { AgentAuditIntake, type AgentAuditLimits } from './agent-audit.js';
import { opsStoreOf } from './store.js';
import { registerLiveOpsRoutes, registerOpsAdminRoutes } from './admin-routes.js';
import { RunningOperations } from './running.js';
import { NodeSerial } from '../../util/node-serial.js';
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

export const createOpsFeature = (options: OpsFeatureOptions = {}): ServerFeature => async (ctx) => {
  const log = ctx.logger.child({ component: 'ops' });
  const ops = opsStoreOf(ctx.store);
  const releaseKeys = ctx.config.releaseKeys.map(parseReleaseKey);
  const upgrades = await UpgradeDistributor.open({ store: ctx.store, ops, sessions: ctx.sessions, dataDir: ctx.config.dataDir, releaseKeys, logger: log });

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

  // What agents report is written in the order each node sent it: one chain per node (serial.ts)
  // for its upgrade statuses and audit records, which both write the audit log.
  const serial = new NodeSerial();
  ctx.sessions.onMessage('agent.upgrade.status', (agent, s) => {
    log[s.state === 'failed' ? 'warn' : 'info']({ nodeId: agent.nodeId, buildId: s.buildId, state: s.state, code: s.code, message: s.message }, 'agent upgrade status');
    const ts = Date.now();
    const queued = serial.run(agent.nodeId, async () => {
      await ops.setUpgradeStatus({ nodeId: agent.nodeId, buildId: s.buildId, state: s.state, code: s.code ?? null, message: s.message ?? null, ts });
      if (s.state === 'applied' || s.state === 'failed') {
        const details = s.code || s.message ? { ...(s.code ? { code: s.code } : {}), ...(s.message ? { message: s.message } : {}) } : null;
        await ctx.audit.record({ source: 'agent', actor: null, operation: 'agent.upgrade', nodeId: agent.nodeId, target: s.buildId, result: s.state, details });
      }
    });
    if (queued === null) log.warn({ nodeId: agent.nodeId, buildId: s.buildId, state: s.state }, 'upgrade status while the node’s earlier writes are still queued; not stored');
    else queued.catch((err: unknown) => log.error({ err, nodeId: agent.nodeId }, 'could not store the upgrade status'));
  });

  // What the agent itself reports having done (every action, exec and transfer, with its outcome).
  const agentAudit = new AgentAuditIntake(ctx.audit, log, options.agentAudit, serial);
  // The rate state outlives the session: reconnecting does not refill it (full buckets are evicted first).
  ctx.sessions.onMessage('audit.batch', (agent, batch) => {
    agentAudit.receive(agent.nodeId, batch).catch((err: unknown) => log.error({ err, nodeId: agent.nodeId }, 'could not store agent audit records'));
  });

  return {
    async close() {
      tunnels.close();
      // Writes already queued finish before the store closes.
      await serial.idle();
    },
  };
};

export const opsFeature: ServerFeature = createOpsFeature();

/** With no server running: the audit log and the upgrade status, read from the store. */
export const opsOffline: OfflineFeature = (ctx) => registerOpsAdminRoutes(ctx.admin, { ops: opsStoreOf(ctx.store), audit: AuditLog.of(ctx.store), upgrades: null });
