import { EventEmitter } from 'node:events';
import type { WebSocket } from 'ws';
import { attachSession } from '../net/ws-session.js';
import type { CloseInfo, Session } from '../protocol/session.js';
import type { InputOf, KindName, PayloadOf } from '../protocol/registry.js';
import type { MuxStream } from '../protocol/stream.js';
import { VERSION } from '../version.js';
import type { Logger } from '../util/logger.js';
import type { ServerConfig } from './config.js';
import { parseCsr } from './csr.js';
import type { EnrollmentService } from './enroll.js';
import type { AgentConnectionInfo, GatewayHooks } from './hooks.js';
import type { LastSeenWriter } from './last-seen.js';
import type { Store } from './store/store.js';
import { MeshlinkError } from '../errors.js';

/**
 * The server's side of every agent session: handshake, heartbeats and presence, in-band
 * certificate renewal. One instance serves all connections (see docs/SERVER.md, "Presence").
 *
 * Presence: a node is online while it has an open session that is not silent. A session that
 * receives nothing for `offlineAfterMs` (default 45 s, three missed 15 s heartbeats) is closed with
 * ML_ERR_HEARTBEAT_TIMEOUT (4030), which takes the node offline.
 */

/** lastSeen is written to the store at most this often per node (heartbeats arrive every 15 s). */
const LAST_SEEN_WRITE_MS = 60_000;

export interface ConnectedAgent {
  readonly nodeId: string;
  readonly session: Session;
  readonly info: AgentConnectionInfo;
  readonly hello: PayloadOf<'hello'>;
  readonly connectedAt: number;
  lastHeartbeatAt: number;
  agentVersion: string | null;
}

export interface SessionHostDeps {
  config: ServerConfig;
  store: Store;
  enrollment: EnrollmentService;
  logger: Logger;
  lastSeen: LastSeenWriter;
}

/** Handles a control message from an agent (features register these; see onMessage). */
export type AgentMessageHandler<N extends KindName = KindName> = (agent: ConnectedAgent, payload: PayloadOf<N>) => void;
/** Handles a stream an agent opened (see onStream). The handler must accept or reject it. */
export type AgentStreamHandler = (agent: ConnectedAgent, stream: MuxStream) => void;
/** Contributes fields to the welcome of a new session (e.g. an upgrade offer). */
export type WelcomeContributor = (hello: PayloadOf<'hello'>, info: AgentConnectionInfo) => Partial<InputOf<'welcome'>>;

export interface SessionHostEvents {
  'agent-open': [agent: ConnectedAgent];
  'agent-close': [agent: ConnectedAgent, info: CloseInfo];
}

export class SessionHost extends EventEmitter<SessionHostEvents> implements GatewayHooks {
  /** Open sessions by node id (several during a make-before-break reconnect). */
  readonly agents = new Map<string, Set<ConnectedAgent>>();
  readonly #deps: SessionHostDeps;
  readonly #messageHandlers = new Map<string, AgentMessageHandler[]>();
  readonly #streamHandlers = new Map<string, AgentStreamHandler>();
  readonly #welcomeContributors: WelcomeContributor[] = [];
  readonly #lastSeenWritten = new Map<string, number>();
  #livenessTimer: NodeJS.Timeout;

  constructor(deps: SessionHostDeps) {
    super();
    this.#deps = deps;
    // One sweep for all sessions instead of a timer per connection.
    const sweepMs = Math.max(50, Math.min(1_000, Math.floor(deps.config.offlineAfterMs / 4)));
    this.#livenessTimer = setInterval(() => this.#sweep(), sweepMs);
    this.#livenessTimer.unref();
  }

  onAgentConnection(ws: WebSocket, info: AgentConnectionInfo): void {
    const log = this.#deps.logger.child({ nodeId: info.nodeId, certSerial: info.certSerial, remote: info.remoteAddress });
    const agent: { current: ConnectedAgent | null } = { current: null };
    const session = attachSession(ws, {
      role: 'server',
      onHello: (hello) => {
        const node = this.#deps.store.getNode(info.nodeId);
        if (!node || node.removedAt !== null) throw new MeshlinkError('ML_ERR_CERT_REVOKED', 'node was removed');
        if (hello.agentVersion !== node.agentVersion) this.#deps.store.setAgentVersion(info.nodeId, hello.agentVersion);
        let welcome: Omit<InputOf<'welcome'>, 'version'> = { nodeId: info.nodeId, serverVersion: VERSION, heartbeatIntervalMs: this.#deps.config.heartbeatIntervalMs };
        for (const contribute of this.#welcomeContributors) welcome = { ...welcome, ...contribute(hello, info) };
        return welcome;
      },
    });

    session.on('open', ({ hello }) => {
      const now = Date.now();
      const entry: ConnectedAgent = {
        nodeId: info.nodeId,
        session,
        info,
        hello: hello!,
        connectedAt: now,
        lastHeartbeatAt: now,
        agentVersion: hello?.agentVersion ?? null,
      };
      agent.current = entry;
      let set = this.agents.get(info.nodeId);
      if (!set) this.agents.set(info.nodeId, (set = new Set()));
      set.add(entry);
      this.#touch(info.nodeId, now, true);
      log.info({ agentVersion: entry.agentVersion, sessions: set.size }, 'agent session open');
      this.emit('agent-open', entry);
    });

    session.on('stream', (stream) => {
      const handler = this.#streamHandlers.get(stream.kind);
      if (!handler || !agent.current) {
        session.reject(stream, 'ML_ERR_UNSUPPORTED', `the server does not accept ${stream.kind} streams`);
        return;
      }
      handler(agent.current, stream);
    });

    session.on('message', (msg) => {
      switch (msg.name) {
        case 'heartbeat': {
          const hb = msg.payload as { seq: number; ts: number };
          const now = Date.now();
          if (agent.current) agent.current.lastHeartbeatAt = now;
          session.send('heartbeat.ack', { seq: hb.seq, ts: hb.ts });
          this.#touch(info.nodeId, now, false);
          return;
        }
        default: {
          const handlers = this.#messageHandlers.get(msg.name);
          if (!handlers || !agent.current) {
            log.debug({ kind: msg.name }, 'unhandled control message');
            return;
          }
          for (const handle of handlers) {
            try {
              handle(agent.current, msg.payload as never);
            } catch (err) {
              log.error({ err, kind: msg.name }, 'message handler failed');
            }
          }
        }
      }
    });

    session.handle('cert.renew', async ({ csr }) => {
      const node = this.#deps.store.getNode(info.nodeId);
      const parsed = parseCsr(csr);
      // The CSR must name this node: its hostname (as enrolled) or its id.
      if (!node || (parsed.commonName !== node.hostname && parsed.commonName !== node.id)) {
        throw new MeshlinkError('ML_ERR_CERT_FORBIDDEN', 'the CSR subject does not match the connected node');
      }
      const issued = await this.#deps.enrollment.issueNodeCertificate(info.nodeId, csr);
      log.info({ newSerial: issued.serial, notAfter: issued.notAfter }, 'certificate renewed in-band');
      return { certificate: issued.certificate, caCertificate: issued.caCertificate, notAfter: issued.notAfter };
    });

    session.on('close', (closeInfo) => {
      const entry = agent.current;
      if (entry) {
        const set = this.agents.get(info.nodeId);
        set?.delete(entry);
        if (set && set.size === 0) this.agents.delete(info.nodeId);
        this.#touch(info.nodeId, Date.now(), true);
        this.emit('agent-close', entry, closeInfo);
      }
      log.info({ code: closeInfo.code, reason: closeInfo.reason, error: closeInfo.error?.code }, 'agent session closed');
    });
  }

  /** Registers a handler for a control message kind from agents; several run in registration order. */
  onMessage<N extends KindName>(kind: N, handler: AgentMessageHandler<N>): void {
    const list = this.#messageHandlers.get(kind) ?? [];
    list.push(handler as unknown as AgentMessageHandler);
    this.#messageHandlers.set(kind, list);
  }

  /** Registers the handler for agent-opened streams of `kind` (one per kind). */
  onStream(kind: KindName, handler: AgentStreamHandler): void {
    if (this.#streamHandlers.has(kind)) throw new Error(`a stream handler for ${kind} is already registered`);
    this.#streamHandlers.set(kind, handler);
  }

  addWelcomeFields(contributor: WelcomeContributor): void {
    this.#welcomeContributors.push(contributor);
  }

  /** The node's newest open session (the one to open streams on), if it is online. */
  current(nodeId: string): ConnectedAgent | undefined {
    let newest: ConnectedAgent | undefined;
    for (const a of this.agents.get(nodeId) ?? []) {
      if (a.session.state === 'open' && (!newest || a.connectedAt >= newest.connectedAt)) newest = a;
    }
    return newest;
  }

  /** True while the node has an open session. */
  isOnline(nodeId: string): boolean {
    return this.agents.has(nodeId);
  }

  get sessionCount(): number {
    let n = 0;
    for (const s of this.agents.values()) n += s.size;
    return n;
  }

  close(): void {
    clearInterval(this.#livenessTimer);
    for (const set of this.agents.values()) for (const a of set) a.session.close(1001, 'server shutting down');
  }

  #sweep(): void {
    const now = Date.now();
    const limit = this.#deps.config.offlineAfterMs;
    for (const set of this.agents.values()) {
      for (const a of set) {
        if (now - a.session.lastReceivedAt > limit) {
          this.#deps.logger.warn({ nodeId: a.nodeId, silentMs: now - a.session.lastReceivedAt }, 'agent silent; closing session');
          a.session.abort(new MeshlinkError('ML_ERR_HEARTBEAT_TIMEOUT', `nothing received for ${now - a.session.lastReceivedAt} ms`));
        }
      }
    }
  }

  #touch(nodeId: string, now: number, force: boolean): void {
    const last = this.#lastSeenWritten.get(nodeId) ?? 0;
    if (!force && now - last < LAST_SEEN_WRITE_MS) return;
    this.#lastSeenWritten.set(nodeId, now);
    this.#deps.lastSeen.touch(nodeId, now);
  }
}
