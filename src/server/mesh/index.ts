import { MeshlinkError, ERRORS } from '../../errors.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { EVENT_PAYLOAD_SCHEMAS } from '../../contract/mesh-events.js';
import type { ServerFeature, ServerFeatureContext } from '../feature.js';
import { readJson, sendJson } from '../http-json.js';
import { resolveNode } from '../nodes.js';
import { createTaggedToken, tagNode } from './operator.js';
import { POLICY_MAX_BYTES, policyId } from './policy.js';
import { MeshService, type MeshOptions } from './service.js';
import { MeshStore } from './store.js';

export { MeshService } from './service.js';

/**
 * The mesh feature: plugs MeshService into the session host (welcome keys, replay and reconciliation
 * on state.request, acks, drift reports) and the admin channel (policy, tags, tagged tokens, feed,
 * key rotations). Admin endpoints (all JSON):
 *
 *   GET  /v1/mesh/policy                         → {policy, policyId}
 *   POST /v1/mesh/policy {policy|null}           → {policyId, affectedNodes}
 *   POST /v1/mesh/tags {node, tags, mode}        → {id, hostname, tags, affectedNodes}
 *   POST /v1/mesh/tokens {ttlMs, nodeId?, tags}  → TokenCreation + tags
 *   GET  /v1/mesh/feed?after=|last=&node=&waitMs= → {entries, last}
 *   POST /v1/mesh/rotate-keys {node}             → {nodeId, seq}
 *   POST /v1/mesh/signing-key/rotate             → {keyId, previousKeyId}
 */

export interface MeshFeatureOptions extends MeshOptions {
  /** How often the node table is checked for enrolled and removed nodes (default 1 s). */
  sweepIntervalMs?: number;
  /** Receives the service once started (tests, benchmarks). */
  onStarted?: (mesh: MeshService) => void;
}

const BODY_CAP = 64 * 1024;
const policyBody = z.object({ policy: z.unknown() }).strict();
const tagsBody = z.object({ node: z.string().min(1).max(253), tags: z.array(z.string().max(64)).max(64), mode: z.enum(['set', 'add', 'remove']).default('set') }).strict();
const tokenBody = z.object({ ttlMs: z.number().int().min(1_000).max(30 * 86_400_000), nodeId: z.string().min(1).max(128).nullish(), tags: z.array(z.string().max(64)).max(64) }).strict();
const nodeBody = z.object({ node: z.string().min(1).max(253) }).strict();
/** Events an operator may send (the others follow from policy, keys and membership). */
const notifyBody = z.discriminatedUnion('type', [
  z.object({ type: z.literal('action_request'), node: z.string().min(1).max(253).optional(), payload: EVENT_PAYLOAD_SCHEMAS.action_request }).strict(),
  z.object({ type: z.literal('node_secrets_updated'), node: z.string().min(1).max(253).optional(), payload: EVENT_PAYLOAD_SCHEMAS.node_secrets_updated }).strict(),
]);

export function createMeshFeature(options: MeshFeatureOptions = {}): ServerFeature {
  return async (ctx: ServerFeatureContext) => {
    const log = ctx.logger.child({ component: 'mesh' });
    // Sealed with the same passphrase as the CA key (the caller's, else MESHLINK_CA_PASSPHRASE).
    const mesh = await MeshService.open(ctx.store, ctx.logger, { ...options, passphrase: options.passphrase ?? ctx.passphrase });
    mesh.setDelivery(ctx.sessions);
    // A node gets the tags of the token it enrolled with, in the enrollment's own transaction.
    const tags = new MeshStore(ctx.store.database);
    const stopClaiming = ctx.enrollment.onCommit((commit) => tags.claimTokenTags(commit.tokenHash, commit.node.id));
    ctx.questions.answer('meshEventCreatedAt', (nodeId, seq) => mesh.eventCreatedAt(nodeId, seq));
    ctx.sessions.addWelcomeFields(() => ({ eventKeys: mesh.eventKeys() }));

    ctx.sessions.on('agent-open', (agent) => {
      try {
        void mesh.agentOpened(agent.nodeId, agent.hello, agent.info.remoteAddress ?? null);
      } catch (err) {
        log.error({ err, nodeId: agent.nodeId }, 'mesh: could not record the session');
      }
    });
    ctx.sessions.onRequest('state.request', (agent, req) => {
      mesh.replay(agent, agent.hello.lastEventSeq ?? 0);
      return mesh.stateFor(agent.nodeId, req.digest);
    });
    // A removed node's session closes with 4401: take it out of the mesh at once. Other closes leave
    // membership alone (a sweep scans the node table; thousands of sessions close at a shutdown).
    ctx.sessions.on('agent-close', (_agent, info) => {
      if (info.code === ERRORS.ML_ERR_CERT_REVOKED.closeCode) void mesh.sweepAndRecompute();
    });
    // A revoked node hears why, in a signed event, before its sockets close with 4401.
    const onRevoked = (nodeId: string, reason: string): void => {
      if (mesh.nodeInfo(nodeId)) mesh.publish(nodeId, 'session_revoked', { reason });
    };
    const stopObserving = ctx.connections.onRevoking(onRevoked);
    ctx.sessions.onMessage('event.ack', (agent, ack) => {
      try {
        void mesh.acked(agent.nodeId, ack);
      } catch (err) {
        log.error({ err, nodeId: agent.nodeId }, 'mesh: could not record the ack');
      }
    });
    ctx.sessions.onMessage('drift.report', (agent, report) => mesh.drift(agent.nodeId, report));

    const sweepTimer = setInterval(() => void mesh.sweepAndRecompute(), options.sweepIntervalMs ?? 1_000);
    sweepTimer.unref();

    const route = (key: string, handler: (req: IncomingMessage, res: ServerResponse) => Promise<void>): void => ctx.admin.add(key, handler);

    route('GET /v1/mesh/policy', async (_req, res) => sendJson(res, 200, { policy: mesh.policy, policyId: policyId(mesh.policy) }));
    route('POST /v1/mesh/policy', async (req, res) => {
      const body = await readJson(req, POLICY_MAX_BYTES + 1024, policyBody);
      sendJson(res, 200, await mesh.setPolicy(body.policy ?? null));
    });
    route('POST /v1/mesh/tags', async (req, res) => {
      const body = await readJson(req, BODY_CAP, tagsBody);
      const tagged = tagNode(ctx.store, body.node, body.tags, body.mode);
      const affectedNodes = await mesh.tagsChanged(tagged.id, tagged.tags);
      log.info({ nodeId: tagged.id, tags: tagged.tags, affected: affectedNodes.length }, 'node tags changed');
      sendJson(res, 200, { ...tagged, affectedNodes });
    });
    route('POST /v1/mesh/tokens', async (req, res) => {
      const body = await readJson(req, BODY_CAP, tokenBody);
      const created = createTaggedToken(ctx.store, { ttlMs: body.ttlMs, nodeId: body.nodeId ?? null, tags: body.tags });
      log.info({ expiresAt: created.expiresAt, nodeId: created.nodeId, tags: created.tags }, 'enrollment token created');
      sendJson(res, 200, created);
    });
    route('GET /v1/mesh/feed', async (req, res) => {
      const q = new URL(req.url ?? '/', 'http://admin').searchParams;
      const lastN = q.get('last');
      const after = Number(q.get('after') ?? '0');
      const node = q.get('node');
      const waitMs = Math.min(30_000, Math.max(0, Number(q.get('waitMs') ?? '0')));
      if (!Number.isSafeInteger(after) || after < 0 || !Number.isFinite(waitMs)) throw new MeshlinkError('ML_ERR_BAD_REQUEST', 'after must be a non-negative integer');
      if (lastN !== null && !/^\d{1,5}$/.test(lastN)) throw new MeshlinkError('ML_ERR_BAD_REQUEST', 'last must be an integer up to 99999');
      const nodeId = node ? resolveNode(ctx.store, node).id : null;
      // last=N: start N entries before the newest (of all nodes; the node filter applies after).
      const from = lastN !== null ? Math.max(0, mesh.lastFeedId() - Number(lastN)) : after;
      let entries = mesh.feed(from, nodeId);
      if (entries.length === 0 && waitMs > 0) {
        await mesh.waitForFeed(waitMs);
        entries = mesh.feed(from, nodeId);
      }
      const last = entries.length > 0 ? entries[entries.length - 1]!.id : Math.max(from, mesh.lastFeedId());
      sendJson(res, 200, { entries, last });
    });
    route('POST /v1/mesh/rotate-keys', async (req, res) => {
      const body = await readJson(req, BODY_CAP, nodeBody);
      const node = resolveNode(ctx.store, body.node);
      sendJson(res, 200, { nodeId: node.id, seq: mesh.requestKeyRotation(node.id) });
    });
    // One signed event to one node, or to every node without `node` (each under its own seq: nodes
    // that are offline get it by replay).
    route('POST /v1/mesh/notify', async (req, res) => {
      const body = await readJson(req, BODY_CAP, notifyBody);
      if (body.node !== undefined) {
        const node = resolveNode(ctx.store, body.node);
        const seq = mesh.publish(node.id, body.type, body.payload);
        sendJson(res, 200, { type: body.type, nodes: 1, nodeId: node.id, seq });
        return;
      }
      const nodes = await mesh.publishAll(body.type, body.payload);
      sendJson(res, 200, { type: body.type, nodes });
    });
    route('POST /v1/mesh/signing-key/rotate', async (_req, res) => sendJson(res, 200, mesh.rotateSigningKey()));

    options.onStarted?.(mesh);
    return {
      async close() {
        stopObserving();
        stopClaiming();
        clearInterval(sweepTimer);
        await mesh.close();
      },
    };
  };
}

/** The feature startServer runs (mesh range and passphrase from the environment; docs/MESH.md). */
export const meshFeature: ServerFeature = createMeshFeature();
