import { MeshlinkError } from '../errors.js';
import { EventEmitter } from 'node:events';
import type { WebSocket } from 'ws';
import { attachSession } from '../net/ws-session.js';
import type { CloseInfo, Session, SessionOptions } from '../protocol/session.js';
import type { InputOf, KindName, PayloadOf, RequestKindName as RequestKind } from '../protocol/registry.js';
import type { MuxStream } from '../protocol/stream.js';
import { HandlerRegistry } from '../protocol/handler-registry.js';
import { VERSION } from '../version.js';
import type { Logger } from '../util/logger.js';
import type {
  AgentHandle,
  AgentMessageHandler,
  AgentRequestHandler,
  AgentSessions,
  AgentStreamHandler,
  HelloCheck,
  SendResult,
  WelcomeContributor,
} from './agent-sessions.js';
import type { ServerConfig } from './config.js';
import { parseCsr } from './csr.js';
import type { EnrollmentService } from './enroll.js';
import type { AgentConnectionInfo, GatewayHooks } from './hooks.js';
import type { Presence } from './presence.js';
import type { CertificateSuccession } from './cert-succession.js';
import type { RevocationList } from './revocation.js';
import type { Store } from './store/store.js';

export type { AgentHandle, AgentMessageHandler, AgentStreamHandler, WelcomeContributor } from './agent-sessions.js';

/**
 * The server's side of every agent session: handshake, heartbeats, in-band certificate renewal, and
 * the AgentSessions facade that features use (see agent-sessions.ts). One instance serves all
 * connections (docs/SERVER.md, "Presence").
 *
 * Presence: a node is online while it has an open session that is not silent. A session that
 * receives nothing for `offlineAfterMs` (default 45 s, three missed 15 s heartbeats) is closed with
 * ML_ERR_HEARTBEAT_TIMEOUT (4030), which takes the node offline. Opens, closes and heartbeats are
 * reported to Presence, which owns online and last_seen.
 */

/** One open session. Features see it as an AgentHandle (no `session`); tests reach the session. */
export class ConnectedAgent implements AgentHandle {
  lastHeartbeatAt: number;
  constructor(
    readonly session: Session,
    readonly info: AgentConnectionInfo,
    readonly hello: PayloadOf<'hello'>,
    readonly connectedAt: number,
  ) {
    this.lastHeartbeatAt = connectedAt;
  }
  get nodeId(): string {
    return this.info.nodeId;
  }
  get agentVersion(): string {
    return this.hello.agentVersion;
  }
  get open(): boolean {
    return this.session.state === 'open';
  }
  get streamCount(): number {
    return this.session.streamCount;
  }
  get flowControlStalls(): number {
    return this.session.flowControlStalls;
  }
  get inflightBytes(): number {
    return this.session.inflightBytes;
  }
}

/** How long one drain probe waits for its pong; a session still open then is probed again (see drained). */
export const DRAIN_PROBE_TIMEOUT_MS = 30_000;

/** What the host decides of a session it serves; the binding adds the transport (a WebSocket, or a test's link). */
export type SessionBinding = Pick<SessionOptions, 'role' | 'onHello'>;

export interface SessionHostDeps {
  config: ServerConfig;
  store: Store;
  enrollment: EnrollmentService;
  logger: Logger;
  presence: Presence;
  /**
   * The public URL the operator configured (`--public-url`), announced in every welcome; null: none
   * (a derived URL, the host name, may not resolve where agents are, so it is never announced).
   */
  announcedServerUrl?: string | null;
  /**
   * One live certificate per node (cert-succession.ts): a session's open revokes the node's older
   * certificates. Absent in tests that drive the host without certificates.
   */
  certificates?: CertificateSuccession;
  /** Checked at hello: a certificate revoked while its socket was upgrading gets no session. */
  revocations?: RevocationList;
}

export interface SessionHostEvents {
  'agent-open': [agent: ConnectedAgent];
  'agent-close': [agent: ConnectedAgent, info: CloseInfo];
}

// One registry kind for every handler table (protocol/handler-registry.ts), as in the agent runner.
type MessageArgs = { [N in KindName]: [agent: AgentHandle, payload: PayloadOf<N>] };
type StreamArgs = { [N in KindName]: [agent: AgentHandle, stream: MuxStream] };
type RequestArgs = { [N in RequestKind]: [agent: AgentHandle, payload: PayloadOf<N>] };

export class SessionHost extends EventEmitter<SessionHostEvents> implements GatewayHooks, AgentSessions {
  /** Open sessions by node id (several during a make-before-break reconnect). Private: see snapshot(). */
  readonly #agents = new Map<string, Set<ConnectedAgent>>();
  readonly #deps: SessionHostDeps;
  readonly #messageHandlers = new HandlerRegistry<MessageArgs>();
  /** Exclusive: exactly one party accepts or rejects a stream, and one answers a request. */
  readonly #streamHandlers = new HandlerRegistry<StreamArgs>({ exclusive: true });
  readonly #requestHandlers = new HandlerRegistry<RequestArgs>({ exclusive: true });
  readonly #welcomeContributors: WelcomeContributor[] = [];
  readonly #helloChecks: HelloCheck[] = [];
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
    this.serveSession(info, (binding) => attachSession(ws, binding));
  }

  /**
   * Serves one authenticated agent connection: `bind` makes its protocol session over the transport
   * (the gateway's WebSocket; tests bind an in-memory link to drive backpressure and timers).
   */
  serveSession(info: AgentConnectionInfo, bind: (binding: SessionBinding) => Session): void {
    const log = this.#deps.logger.child({ nodeId: info.nodeId, certSerial: info.certSerial, remote: info.remoteAddress });
    const agent: { current: ConnectedAgent | null } = { current: null };
    const session = bind({
      role: 'server',
      onHello: async (hello) => {
        const node = await this.#deps.store.getNode(info.nodeId);
        if (!node || node.removedAt !== null) throw new MeshlinkError('ML_ERR_CERT_REVOKED', 'node was removed');
        // A newer certificate's session may have opened since the gateway admitted this socket.
        if (this.#deps.revocations?.has(info.certSerial)) throw new MeshlinkError('ML_ERR_CERT_REVOKED', 'the client certificate was superseded');
        for (const check of this.#helloChecks) check(hello, info);
        if (hello.agentVersion !== node.agentVersion) await this.#deps.store.setAgentVersion(info.nodeId, hello.agentVersion);
        const serverUrl = this.#deps.announcedServerUrl;
        let welcome: Omit<InputOf<'welcome'>, 'version'> = {
          nodeId: info.nodeId,
          serverVersion: VERSION,
          heartbeatIntervalMs: this.#deps.config.heartbeatIntervalMs,
          ...(serverUrl ? { serverUrl } : {}),
        };
        for (const contribute of this.#welcomeContributors) welcome = { ...welcome, ...contribute(hello, info) };
        // The node's certificates issued before this one are revoked before the session opens, so the
        // revocation is committed before this session is admitted to the node's operations.
        await this.#deps.certificates?.sessionOpened(info.nodeId, info.certSerial);
        // Checked again after the awaits: a session on a newer certificate may have opened meanwhile
        // and revoked this one; opened anyway, it would replace (abort) the newer session.
        if (this.#deps.revocations?.has(info.certSerial)) throw new MeshlinkError('ML_ERR_CERT_REVOKED', 'the client certificate was superseded');
        return welcome;
      },
    });

    session.on('open', ({ hello }) => {
      const entry = new ConnectedAgent(session, info, hello!, Date.now());
      agent.current = entry;
      let set = this.#agents.get(info.nodeId);
      if (!set) this.#agents.set(info.nodeId, (set = new Set()));
      set.add(entry);
      this.#deps.presence.opened(info.nodeId, entry.connectedAt);
      this.#replaceOlderCertificates(entry);
      for (const kind of this.#requestHandlers.keys()) {
        const [handler] = this.#requestHandlers.handlersOf(kind);
        // The registry types each handler by its kind; the session's handle() is generic over it too.
        if (handler) session.handle(kind, (payload) => handler(entry, payload as never) as never);
      }
      log.info({ agentVersion: entry.agentVersion, sessions: set.size }, 'agent session open');
      this.emit('agent-open', entry);
    });

    session.on('stream', (stream) => {
      const [handler] = this.#streamHandlers.handlersOf(stream.kind as KindName);
      if (!handler || !agent.current) {
        session.reject(stream, 'ML_ERR_UNSUPPORTED', `the server does not accept ${stream.kind} streams`);
        return;
      }
      handler(agent.current, stream);
    });

    session.on('message', (msg) => {
      switch (msg.name) {
        case 'heartbeat': {
          const hb = msg.payload;
          const now = Date.now();
          if (agent.current) agent.current.lastHeartbeatAt = now;
          session.send('heartbeat.ack', { seq: hb.seq, ts: hb.ts });
          this.#deps.presence.heard(info.nodeId, now);
          return;
        }
        default: {
          if (!this.#messageHandlers.has(msg.name) || !agent.current) {
            log.debug({ kind: msg.name }, 'unhandled control message');
            return;
          }
          const kind = msg.name;
          this.#messageHandlers.emit(kind, [agent.current, msg.payload] as MessageArgs[typeof kind], (err) => log.error({ err, kind }, 'message handler failed'));
        }
      }
    });

    session.handle('cert.renew', async ({ csr }) => {
      // A revoked session is closed a moment after its revocation (after the node's notice goes out,
      // connections.ts): in that moment it must not get a fresh certificate out of the old one.
      if (this.#deps.revocations?.has(info.certSerial)) throw new MeshlinkError('ML_ERR_CERT_REVOKED', 'the client certificate is revoked');
      const node = await this.#deps.store.getNode(info.nodeId);
      const parsed = parseCsr(csr);
      // The CSR must name this node: its hostname (as enrolled) or its id.
      if (!node || (parsed.commonName !== node.hostname && parsed.commonName !== node.id)) {
        throw new MeshlinkError('ML_ERR_CERT_FORBIDDEN', 'the CSR subject does not match the connected node');
      }
      const issued = await this.#deps.enrollment.renewNodeCertificate(info.nodeId, csr);
      log.info({ newSerial: issued.serial, notAfter: issued.notAfter }, 'certificate renewed in-band');
      return { certificate: issued.certificate, caCertificate: issued.caCertificate, caBundle: issued.caBundle, notAfter: issued.notAfter };
    });

    session.on('close', (closeInfo) => {
      const entry = agent.current;
      if (entry) {
        const set = this.#agents.get(info.nodeId);
        set?.delete(entry);
        if (set && set.size === 0) this.#agents.delete(info.nodeId);
        this.#deps.presence.closed(info.nodeId);
        this.emit('agent-close', entry, closeInfo);
      }
      log.info({ code: closeInfo.code, reason: closeInfo.reason, error: closeInfo.error?.code }, 'agent session closed');
    });
  }

  onMessage<N extends KindName>(kind: N, handler: AgentMessageHandler<N>): void {
    this.#messageHandlers.on(kind, handler);
  }

  onStream(kind: KindName, handler: AgentStreamHandler): void {
    this.#streamHandlers.on(kind, handler);
  }

  onRequest<N extends RequestKind>(kind: N, handler: AgentRequestHandler<N>): void {
    // cert.renew is the session host's own; a feature may not take it over.
    if (kind === 'cert.renew') throw new Error(`a request handler for ${kind} is already registered`);
    this.#requestHandlers.on(kind, handler);
  }

  addWelcomeFields(contributor: WelcomeContributor): void {
    this.#welcomeContributors.push(contributor);
  }

  addHelloCheck(check: HelloCheck): void {
    this.#helloChecks.push(check);
  }

  refuse(agent: AgentHandle, error: MeshlinkError): void {
    this.#sessionOf(agent)?.abort(error);
  }

  current(nodeId: string): ConnectedAgent | undefined {
    let newest: ConnectedAgent | undefined;
    for (const a of this.#agents.get(nodeId) ?? []) {
      if (a.open && (!newest || a.connectedAt >= newest.connectedAt)) newest = a;
    }
    return newest;
  }

  isOnline(nodeId: string): boolean {
    return this.#deps.presence.isOnline(nodeId);
  }

  snapshot(): ConnectedAgent[] {
    const out: ConnectedAgent[] = [];
    for (const set of this.#agents.values()) for (const a of set) out.push(a);
    return out;
  }

  send<N extends KindName>(agent: AgentHandle, kind: N, payload: InputOf<N>): SendResult {
    const session = this.#sessionOf(agent);
    if (!session || session.state !== 'open') return 'closed';
    return session.send(kind, payload) ? 'sent' : 'backpressure';
  }

  openStream<N extends KindName>(agent: AgentHandle, kind: N, meta: InputOf<N>): Promise<MuxStream> {
    const session = this.#sessionOf(agent);
    if (!session) return Promise.reject(new MeshlinkError('ML_ERR_SESSION_CLOSED', `the session of ${agent.nodeId} is closed`));
    return session.openStream(kind, meta);
  }

  drained(agent: AgentHandle): Promise<void> {
    const session = this.#sessionOf(agent);
    if (!session || session.state !== 'open') return Promise.reject(new MeshlinkError('ML_ERR_SESSION_CLOSED', `the session of ${agent.nodeId} is closed`));
    // Control messages have no 'drain' event: a ping queued behind them is answered once the agent
    // has read everything before it. An agent slow to read is not a closed one, so a probe that times
    // out while the session is open is followed by another (queued behind the first); only the
    // session's close ends the wait, with its reason.
    const probe = (): Promise<void> =>
      session.ping(DRAIN_PROBE_TIMEOUT_MS).then(
        () => undefined,
        (err: unknown) => (session.state === 'open' ? probe() : Promise.reject(err instanceof Error ? err : new Error(String(err)))),
      );
    return probe();
  }

  get sessionCount(): number {
    let n = 0;
    for (const s of this.#agents.values()) n += s.size;
    return n;
  }

  close(): void {
    clearInterval(this.#livenessTimer);
    for (const a of this.snapshot()) a.session.close(1001, 'server shutting down');
  }

  /** The session behind a handle this host gave out, while it is registered. */
  #sessionOf(agent: AgentHandle): Session | undefined {
    const entry = agent as ConnectedAgent;
    return this.#agents.get(agent.nodeId)?.has(entry) ? entry.session : undefined;
  }

  /**
   * The node's sessions on other certificates end when one on a newer certificate opens (docs/SERVER.md,
   * "Certificates of a node"): the certificates issued before it are revoked, and their sessions get
   * ML_ERR_SESSION_REPLACED (an error frame, then close 4409), so that operations reach only the
   * holder of the newest certificate. Sessions on the same certificate (a reconnect that overlaps
   * the old socket's timeout) are left to end by themselves. (The revocation itself ran in onHello.)
   */
  #replaceOlderCertificates(entry: ConnectedAgent): void {
    if (this.#deps.revocations?.has(entry.info.certSerial)) return; // superseded itself: it replaces nothing
    for (const other of this.#agents.get(entry.nodeId) ?? []) {
      if (other === entry || other.info.certSerial === entry.info.certSerial || !other.open) continue;
      this.#deps.logger.info({ nodeId: entry.nodeId, certSerial: other.info.certSerial, newSerial: entry.info.certSerial }, 'session replaced by one on a newer certificate');
      other.session.abort(new MeshlinkError('ML_ERR_SESSION_REPLACED', `node ${entry.nodeId} connected with a newer certificate`));
    }
  }

  #sweep(): void {
    const now = Date.now();
    const limit = this.#deps.config.offlineAfterMs;
    for (const a of this.snapshot()) {
      if (now - a.session.lastReceivedAt > limit) {
        this.#deps.logger.warn({ nodeId: a.nodeId, silentMs: now - a.session.lastReceivedAt }, 'agent silent; closing session');
        a.session.abort(new MeshlinkError('ML_ERR_HEARTBEAT_TIMEOUT', `nothing received for ${now - a.session.lastReceivedAt} ms`));
      }
    }
  }
}
