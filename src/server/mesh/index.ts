import { ERRORS, MeshlinkError } from '../../errors.js';
import type { ServerConfig } from '../config.js';
import type { Logger } from '../../util/logger.js';
import type { AgentHandle } from '../agent-sessions.js';
import type { OfflineFeature, ServerFeature, ServerFeatureContext } from '../feature.js';
import { registerMeshAdminRoutes } from './admin-routes.js';
import { meshListingLookup, meshNodeDetails, tokenTagsLookup } from './listing.js';
import { MeshService, type MeshOptions } from './service.js';
import { MeshStore } from './store.js';
import { StunResponder } from './stun-responder.js';
import { normalizeIp, UdpRelay } from './relay.js';
import { RelaySessions } from './relay-sessions.js';
import { PathHealth } from './path-health.js';
import type { RelayAllocationRequest } from './relay.js';
import { publicHostOf } from '../public-address.js';
import type { PresenceView } from '../presence.js';
import type { SelfReport } from '../../contract/mesh-events.js';

export { MeshService } from './service.js';

/**
 * The mesh feature: plugs MeshService into the session host (welcome keys, replay and reconciliation
 * on state.request, acks, drift reports) and the operator API (admin-routes.ts: policy, tags, tagged
 * tokens, feed, key rotations).
 */

export interface MeshFeatureOptions extends MeshOptions {
  /** How often the node table is checked for enrolled and removed nodes (default 1 s). */
  sweepIntervalMs?: number;
  /** Receives the service once started (tests, benchmarks). */
  onStarted?: (mesh: MeshService) => void;
  /** Receives the relay once started (tests). */
  onRelayStarted?: (relay: UdpRelay, sessions: RelaySessions) => void;
}

export function createMeshFeature(options: MeshFeatureOptions = {}): ServerFeature {
  return async (ctx: ServerFeatureContext) => {
    const log = ctx.logger.child({ component: 'mesh' });
    // Sealed with the same key file and passphrase as the CA key (the caller's, else the server's).
    const mesh = await MeshService.open(ctx.store, ctx.logger, { ...options, sealing: options.sealing ?? ctx.sealing });
    mesh.setDelivery(ctx.sessions);
    // A node gets the tags of the token it enrolled with, in the enrollment's own transaction.
    const tags = new MeshStore(ctx.store.database);
    const stopClaiming = ctx.enrollment.onCommit(async (commit, tx) => tags.claimTokenTags(commit.tokenHash, commit.node.id, tx));
    ctx.questions.answer('nodeListingFields', () => meshListingLookup(ctx.store));
    ctx.questions.answer('tokenListingFields', () => tokenTagsLookup(ctx.store));
    ctx.questions.answer('meshEventCreatedAt', (nodeId, seq) => mesh.eventCreatedAt(nodeId, seq));
    ctx.questions.answer('meshNodeDetails', (nodeId) => meshNodeDetails(ctx.store, nodeId, (peerId) => mesh.linkReport(nodeId, peerId)));
    ctx.questions.answer('meshPairsByPath', () => {
      const paths = mesh.pairPaths();
      return { direct: paths.direct, relay: paths.relay.length };
    });
    ctx.sessions.addWelcomeFields(() => ({ eventKeys: mesh.eventKeys() }));
    // The agent's first trusted keys, in the enrollment response the CA pin protects.
    ctx.enrollment.addResponseFields(() => ({ eventKeys: mesh.eventKeys().map((k) => ({ keyId: k.keyId, publicKey: Buffer.from(k.publicKey).toString('base64') })) }));

    // What a node says about itself reaches every peer: a value its peers would reject, or another
    // live node's key, refuses the message and ends the session (docs/MESH.md, "What a node reports").
    // A claimed key is also written to the audit log: it is an attack or a cloned state dir.
    const refused = (nodeId: string, err: MeshlinkError, where: string, key: string | undefined): void => {
      const owner = err.code === 'ML_ERR_MESH_KEY_IN_USE' && key !== undefined ? (mesh.keyOwner(key) ?? null) : null;
      log.warn({ nodeId, where, code: err.code, issue: err.message, keyOwner: owner }, 'mesh: refused what a node reported about itself');
      if (err.code === 'ML_ERR_MESH_KEY_IN_USE') {
        ctx.audit
          .record({ source: 'agent', actor: null, operation: 'mesh.key_refused', nodeId, target: key ?? null, result: err.code, details: { where, keyOwner: owner } })
          .catch((e: unknown) => log.error({ err: e, nodeId }, 'mesh: could not write the refused key to the audit log'));
      }
    };
    ctx.sessions.addHelloCheck((hello, info) => {
      try {
        mesh.checkSelfReport(info.nodeId, { wgPublicKey: hello.wgPublicKey, endpoints: hello.endpoints, nat: hello.nat as SelfReport['nat'] }, 'hello');
      } catch (err) {
        if (err instanceof MeshlinkError) refused(info.nodeId, err, 'hello', hello.wgPublicKey);
        throw err;
      }
    });
    const refuse = (agent: AgentHandle, err: unknown, where: string, key: string | undefined): void => {
      if (err instanceof MeshlinkError && (err.code === 'ML_ERR_BAD_PAYLOAD' || err.code === 'ML_ERR_MESH_KEY_IN_USE')) {
        refused(agent.nodeId, err, where, key);
        ctx.sessions.refuse(agent, err);
      } else log.error({ err, nodeId: agent.nodeId }, `mesh: could not record the ${where}`);
    };

    // A session's hello, acks, state requests and drift reports are handled in the order they came:
    // each waits for the one before it of the same session (a promise chain per session). The store
    // is async, so without this a state.request could be served before the hello that brings its
    // (just enrolled) node into the mesh, or an ack's key be stored before the hello's. Only the
    // recording waits; the recompute that follows a report runs on its own.
    const turns = new WeakMap<AgentHandle, Promise<unknown>>();
    const inSessionTurn = <T>(agent: AgentHandle, work: () => Promise<T>): Promise<T> => {
      const run = (turns.get(agent) ?? Promise.resolve()).then(work);
      turns.set(agent, run.catch(() => undefined));
      return run;
    };
    ctx.sessions.on('agent-open', (agent) => {
      inSessionTurn(agent, () => mesh.helloReceived(agent.nodeId, agent.hello, agent.info.remoteAddress ?? null)).catch((err: unknown) =>
        refuse(agent, err, 'hello', agent.hello.wgPublicKey),
      );
    });
    ctx.sessions.onRequest('state.request', (agent, req) =>
      inSessionTurn(agent, async () => {
        await mesh.replay(agent, agent.hello.lastEventSeq ?? 0);
        // Only the signed snapshot goes on the wire: the agent applies nothing unsigned.
        const { inSync, snapshot } = mesh.stateFor(agent.nodeId, req.digest);
        return snapshot ? { inSync, snapshot } : { inSync };
      }),
    );
    // A removed node's session closes with 4401: take it out of the mesh at once. Other closes leave
    // membership alone (a sweep scans the node table; thousands of sessions close at a shutdown).
    ctx.sessions.on('agent-close', (_agent, info) => {
      if (info.code === ERRORS.ML_ERR_CERT_REVOKED.closeCode) void mesh.sweepAndRecompute();
    });
    // A revoked node hears why, in a signed event, before its sockets close with 4401: the close waits
    // for the append and the send (a store round trip on PostgreSQL), 500 ms at most; past that the
    // node learns of its removal from the close code alone.
    const onRevoked = (nodeId: string, reason: string): Promise<void> | undefined => {
      if (!mesh.nodeInfo(nodeId)) return undefined;
      return mesh.publish(nodeId, 'session_revoked', { reason }).then(
        () => undefined,
        (err: unknown) => log.error({ err, nodeId }, 'mesh: session_revoked not sent'),
      );
    };
    const stopObserving = ctx.connections.onRevoking(onRevoked);
    ctx.sessions.onMessage('event.ack', (agent, ack) => {
      inSessionTurn(agent, () => mesh.ackReceived(agent.nodeId, ack)).catch((err: unknown) => refuse(agent, err, 'event.ack', ack.wgPublicKey));
    });
    ctx.sessions.onMessage('drift.report', (agent, report) => {
      const receivedAt = Date.now();
      inSessionTurn(agent, () => mesh.drift(agent.nodeId, report, receivedAt)).catch((err: unknown) => log.error({ err, nodeId: agent.nodeId }, 'mesh: could not record the drift report'));
    });

    const stun = await startStunResponder(ctx.config.stunListen, log);
    const relay = await startRelay(ctx.config, log);
    if (!relay) await revokeAllHeld(mesh, log);
    const assigner = relay ? new RelayAssigner(mesh, relay, ctx.presence, await publicHostOf(ctx.store, ctx.config), ctx.config.relayPublicHost, log) : null;
    // Switching (docs/MESH.md): with a relay to fall back on, a direct pair its agents report down is
    // moved there, and tries direct again after a back-off. Without one there is nowhere to move it.
    const health = assigner ? new PathHealth({ retryMs: ctx.config.meshDirectRetryMs, maxRetryMs: Math.max(ctx.config.meshDirectRetryMs, MAX_DIRECT_RETRY_MS) }) : null;
    let retryTimer: NodeJS.Timeout | null = null;
    if (assigner && health) {
      mesh.enableSwitching(health, { onlineSince: (id) => ctx.presence.onlineSince(id), lastHeard: (id) => ctx.presence.lastHeard(id), heartbeatIntervalMs: ctx.config.heartbeatIntervalMs });
      retryTimer = setInterval(() => mesh.retryDirect(), DIRECT_RETRY_CHECK_MS);
      retryTimer.unref();
    }
    ctx.sessions.onMessage('peer.status', (agent, report) => mesh.peerStatus(agent.nodeId, report));
    if (assigner) {
      ctx.questions.answer('meshRelayStats', () => {
        const c = relay!.counters;
        return {
          allocations: relay!.size,
          bytesAtoB: c.relayedBytesAtoB,
          bytesBtoA: c.relayedBytesBtoA,
          packets: c.relayedPackets,
          relatched: c.relatched,
          dropped: c.dropped,
          switchedToRelay: health?.counters.toRelay ?? 0,
          directRetries: health?.counters.retries ?? 0,
          heldOnRelay: health?.size ?? 0,
        };
      });
      // A member coming online (or going) changes which pairs get an allocation.
      ctx.sessions.on('agent-open', () => assigner.schedule());
      ctx.sessions.on('agent-close', () => assigner.schedule());
      await assigner.start();
      options.onRelayStarted?.(relay!, assigner.sessions);
    }

    const sweepTimer = setInterval(() => void mesh.sweepAndRecompute(), options.sweepIntervalMs ?? 1_000);
    sweepTimer.unref();

    registerMeshAdminRoutes(ctx.admin, { store: ctx.store, mesh, logger: log });

    options.onStarted?.(mesh);
    return {
      readyFields: () => (assigner ? { relay: assigner.address() } : {}),
      async close() {
        stopObserving();
        stopClaiming();
        clearInterval(sweepTimer);
        if (retryTimer) clearInterval(retryTimer);
        await stun?.close();
        await assigner?.close();
        await relay?.close();
        await mesh.close();
      },
    };
  };
}

/** How often lapsed relay back-offs are looked for, and the longest back-off (docs/MESH.md, "Switching"). */
const DIRECT_RETRY_CHECK_MS = 5_000;
const MAX_DIRECT_RETRY_MS = 3_600_000;

/** The feature startServer runs (mesh range from the environment; docs/MESH.md). */
export const meshFeature: ServerFeature = createMeshFeature();

/** With no server running: the operator's mesh routes on the store, and the mesh columns of the node list. */
export const meshOffline: OfflineFeature = (ctx) => {
  ctx.questions.answer('nodeListingFields', () => meshListingLookup(ctx.store));
  ctx.questions.answer('tokenListingFields', () => tokenTagsLookup(ctx.store));
  ctx.questions.answer('meshNodeDetails', (nodeId) => meshNodeDetails(ctx.store, nodeId));
  registerMeshAdminRoutes(ctx.admin, { store: ctx.store, mesh: null, logger: ctx.logger.child({ component: 'mesh' }) });
};

/** The default STUN ports (RFC 8489 §9 registers 3478; the alternate is the next one). */
const DEFAULT_STUN = { host: '0.0.0.0', port: 3478, alternatePort: 3479 };

/**
 * Starts the STUN responder the config asks for: an explicit address must bind (the start fails
 * otherwise); the default one is best effort, so that a second server on one machine (or a test)
 * still starts, with a warning naming the way to move it.
 */
async function startStunResponder(setting: ServerConfig['stunListen'], log: Logger): Promise<StunResponder | null> {
  if (setting === null) return null;
  const address = setting ?? DEFAULT_STUN;
  try {
    const stun = await StunResponder.listen({ ...address, logger: log });
    const [primary, alternate] = stun.endpoints;
    log.info({ stun: `${primary.address}:${primary.port}`, alternatePort: alternate.port }, 'STUN responder listening');
    return stun;
  } catch (err) {
    if (setting !== undefined || !(err instanceof MeshlinkError && err.code === 'ML_ERR_STUN_PORT_BUSY')) throw err;
    log.warn({ err: err.message }, 'no STUN responder: the default UDP ports 3478/3479 are in use; agents behind NAT cannot learn their public endpoints (set --stun-listen, or --no-stun to silence this)');
    return null;
  }
}

/**
 * Starts the relay the config asks for (docs/MESH.md, "Relay"): an explicit address must bind (the
 * start fails otherwise). The default is best effort, with a warning: `::` (dual-stack, so members
 * reach it over IPv4 and IPv6), else `0.0.0.0` where the host has no IPv6; any port.
 */
async function startRelay(config: ServerConfig, log: Logger): Promise<UdpRelay | null> {
  const setting = config.relayListen;
  if (setting === null) return null;
  const candidates = setting ? [setting] : [{ host: '::', ports: null }, { host: '0.0.0.0', ports: null }];
  const failures: string[] = [];
  for (const listen of candidates) {
    try {
      await UdpRelay.probe(listen.host, listen.ports);
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      if (setting !== undefined) throw new MeshlinkError('ML_ERR_CONFIG', `--relay-listen ${listen.host}: no UDP port binds there (${why})`);
      failures.push(`${listen.host}: ${why}`);
      continue;
    }
    log.info({ host: listen.host, ports: listen.ports ? `${listen.ports.low}-${listen.ports.high}` : 'any' }, 'relay bound');
    return new UdpRelay({ host: listen.host, ports: listen.ports, idleMs: config.relayIdleMs, bytesPerSecond: config.relayBytesPerSecond, maxAllocations: config.relayMaxAllocations, logger: log });
  }
  log.warn({ err: failures.join('; ') }, 'no relay: no UDP port binds on :: or 0.0.0.0; pairs behind hard NATs on both sides have no path (set --relay-listen, or --no-relay to silence this)');
  return null;
}

/** Reconciles coalesce: a burst of connects or recomputes runs one reconcile after this delay. */
const RELAY_RECONCILE_DELAY_MS = 100;

/**
 * The relay assigned by the server itself: after every mesh recompute (hello NAT reports, node removal,
 * policy and tags), every agent connect and close, and every expiry, the relay is made to hold an
 * allocation for exactly the pairs the path choice marks `relay` (path.ts) whose members are both
 * online, plus the ones already held whose members went offline (they expire when idle). A pair
 * that turns direct, loses its permission or a member gets `relay_session_revoked` and its ports freed.
 */
class RelayAssigner {
  readonly sessions: RelaySessions;
  readonly #mesh: MeshService;
  readonly #relay: UdpRelay;
  readonly #presence: PresenceView;
  readonly #host: string;
  readonly #log: Logger;
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<void> | null = null;
  #again = false;
  #closed = false;
  #unsubscribe: (() => void) | null = null;

  constructor(mesh: MeshService, relay: UdpRelay, presence: PresenceView, publicUrlHost: string, configuredHost: string | null, log: Logger) {
    this.#mesh = mesh;
    this.#relay = relay;
    this.#presence = presence;
    this.#host = configuredHost ?? publicUrlHost;
    this.#log = log;
    this.sessions = new RelaySessions({ relay, mesh, publicHost: this.#host, logger: log });
    this.sessions.onRevokedExpired = () => this.schedule();
  }

  /** The relay's address as agents are told it, and where it binds. */
  address(): { publicHost: string; bind: string } {
    const listen = this.#relay.listen;
    return { publicHost: this.#host, bind: `${listen.host.includes(':') ? `[${listen.host}]` : listen.host}${listen.ports ? `:${listen.ports.low}-${listen.ports.high}` : ''}` };
  }

  async start(): Promise<void> {
    // Sessions an earlier run assigned died with its relay: their members hear so before new ones.
    const stale = await this.sessions.revokeStale(this.#mesh.heldRelaySessions());
    if (stale > 0) this.#log.info({ revoked: stale }, 'relay sessions of the previous run revoked');
    this.#unsubscribe = this.#mesh.onRecomputed(() => this.schedule());
    this.schedule();
  }

  schedule(): void {
    if (this.#closed) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    if (this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#running = this.#run().finally(() => {
        this.#running = null;
        if (this.#again) {
          this.#again = false;
          this.schedule();
        }
      });
    }, RELAY_RECONCILE_DELAY_MS);
    this.#timer.unref();
  }

  async #run(): Promise<void> {
    const held = new Set(this.sessions.list().map((s) => `${s.a}\n${s.b}`));
    const wanted: RelayAllocationRequest[] = [];
    for (const pair of this.#mesh.relayPairs()) {
      const online = this.#presence.isOnline(pair.a) && this.#presence.isOnline(pair.b);
      if (!online && !held.has(`${pair.a}\n${pair.b}`) && !held.has(`${pair.b}\n${pair.a}`)) continue;
      const ipsA = this.#memberIps(pair.a);
      const ipsB = this.#memberIps(pair.b);
      // Relay pairs are of keyed nodes only (pairPaths); the keys let the relay check each handshake's MAC1.
      const keyA = this.#mesh.nodeInfo(pair.a)?.publicKey;
      const keyB = this.#mesh.nodeInfo(pair.b)?.publicKey;
      if (ipsA.length === 0 || ipsB.length === 0 || !keyA || !keyB) continue;
      wanted.push({ a: { nodeId: pair.a, ips: ipsA, publicKey: keyA }, b: { nodeId: pair.b, ips: ipsB, publicKey: keyB } });
    }
    try {
      const done = await this.sessions.reconcile(wanted);
      if (done.assigned.length + done.ended.length > 0) this.#log.info({ assigned: done.assigned.length, ended: done.ended.length, failed: done.failed, held: this.#relay.size }, 'relay sessions reconciled');
    } catch (err) {
      this.#log.error({ err }, 'relay reconcile failed');
    }
  }

  /**
   * The IPs a member's relay port may latch from (MeshService.observedIps), where a reported reflexive
   * host that is one of the relay's own addresses does not count: a node could otherwise open its port
   * to packets that claim to come from the relay itself. The control connection's source does count
   * even then: an agent on the server's own host connects from it.
   */
  #memberIps(nodeId: string): string[] {
    return this.#mesh.observedIps(nodeId, new Set([this.#host, this.#relay.listen.host].map(normalizeIp)));
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#unsubscribe?.();
    if (this.#timer) clearTimeout(this.#timer);
    await this.#running;
  }
}

/** Without a relay, the sessions an earlier run assigned point at nothing: their members hear so. */
async function revokeAllHeld(mesh: MeshService, log: Logger): Promise<void> {
  const held = mesh.heldRelaySessions();
  for (const h of held) {
    try {
      await mesh.revokeRelay(h.sessionId, h.a, h.b, 'relay off');
    } catch (err) {
      log.warn({ err, allocation: h.sessionId }, 'stale relay session not revoked');
    }
  }
  if (held.length > 0) log.info({ revoked: held.length }, 'relay sessions of the previous run revoked: this server runs no relay');
}
