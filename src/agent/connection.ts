import { MeshlinkError } from '../errors.js';
import { serverOrigin } from '../contract/server-url.js';
import { EventEmitter } from 'node:events';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { WebSocket } from 'ws';
import { HandlerRegistry } from '../protocol/handler-registry.js';
import type { Session, CloseInfo, ControlMessage } from '../protocol/session.js';
import type { InputOf, KindName, PayloadOf } from '../protocol/registry.js';
import type { MuxStream } from '../protocol/stream.js';
import { VERSION } from '../version.js';
import type { Logger } from '../util/logger.js';
import { Backoff, type BackoffOptions } from './backoff.js';
import { AGENT_EXIT_CODES } from './config.js';
import { ConnectRefusedError, dial } from './dial.js';
import { EnrollError, reachesServer } from './enroll.js';
import { adoptCaBundle, loadIdentity, saveCaTrust, saveServerUrl, type Identity } from './identity.js';
import { DEFAULT_RENEW_POLICY, renewalDelayMs, renewalRetryMs, renewExpired, renewInBand, type RenewPolicy } from './renewal.js';
import { writeAgentStatus, type Revocation } from './state/status-file.js';
import { DIRECT, proxyFor, type ProxyConfig } from './proxy.js';

/**
 * `meshlink agent run`: keeps one outbound mTLS WebSocket to the control plane for as long as the
 * process lives (docs/AGENT.md, "Running"). This file is the serve loop; the dial is dial.ts, the
 * certificate renewal steps are renewal.ts.
 *
 * - Reconnects with jittered exponential backoff (backoff.ts).
 * - Heartbeats every `heartbeatIntervalMs` (from welcome); a connection on which nothing arrives for
 *   three intervals is considered half-open and replaced.
 * - Renews its certificate in-band (cert.renew) when renewal is due, commits the new key and
 *   certificate crash-safely, then opens a new connection with them before closing the old one
 *   (make-before-break), so the node never goes offline for a renewal.
 * - A certificate that expired while offline is renewed over POST /v1/renew within the server's
 *   grace period; beyond it, the agent exits with a message naming the way back (re-enrollment).
 * - Revocation (close code 4401, or a 403 ML_ERR_CERT_REVOKED refusal) ends the process with exit
 *   code 78, which the systemd unit does not restart.
 */

export interface AgentRunOptions {
  stateDir: string;
  logger: Logger;
  renewPolicy?: RenewPolicy;
  backoff?: BackoffOptions;
  connectTimeoutMs?: number;
  /** Missed-heartbeat intervals after which a silent connection is abandoned (default 3). */
  livenessIntervals?: number;
  /** How to reach the server (proxy.ts): for the connection, renewal over HTTPS, upgrade downloads. Default direct. */
  proxy?: ProxyConfig;
}

export type AgentConnectionState = 'connecting' | 'connected' | 'backoff' | 'stopped';

/** Handles a control message from the server (features register these; see onMessage). */
export type ServerMessageHandler<N extends KindName = KindName> = (payload: PayloadOf<N>, session: Session) => void;
/** Handles a stream the server opened (see onStream). The handler must accept or reject it. */
export type ServerStreamHandler = (stream: MuxStream, session: Session) => void;
type MessageArgs = { [N in KindName]: [payload: PayloadOf<N>, session: Session] };
type StreamArgs = { [N in KindName]: [stream: MuxStream, session: Session] };

/** What a runner emits; features listen to `connected` and `state`. */
export interface AgentRunnerEvents {
  connected: [session: Session, welcome: PayloadOf<'welcome'>];
  state: [state: AgentConnectionState];
  heartbeat: [rttMs: number];
  message: [message: { name: string; payload: unknown }];
}
/** Contributes fields to hello (e.g. lastEventSeq, wgPublicKey); called for every connection. */
export type HelloContributor = () => Partial<InputOf<'hello'>>;
/** A feature's part of the operator's `reconcile` action (e.g. the mesh): what it found and corrected. */
export type Reconciler = () => Promise<{ name: string; drift: string[] }>;

interface Live {
  identity: Identity;
  ws: WebSocket;
  session: Session;
  welcome: PayloadOf<'welcome'>;
  connectedAt: number;
  closed: Promise<CloseInfo>;
  /** Set when a renewal replaced this connection with a new one. */
  replacedBy: Live | null;
  /**
   * The renewal's connection while it is being made. The server closes this one with
   * ML_ERR_SESSION_REPLACED (4409) as soon as the new one opens, which may reach us before the new
   * connection's welcome: the run loop then waits for it instead of reconnecting from scratch.
   */
  successor: Promise<Live> | null;
}

export class AgentRunner extends EventEmitter<AgentRunnerEvents> {
  state: AgentConnectionState = 'connecting';
  lastHeartbeatRttMs: number | null = null;
  readonly #opts: Required<Omit<AgentRunOptions, 'backoff'>> & { backoff: BackoffOptions };
  readonly #log: Logger;
  readonly #backoff: Backoff;
  #identity: Identity | null = null;
  #live: Live | null = null;
  #stopping = false;
  /** Set when the server revoked this node (close 4401 or a 403 ML_ERR_CERT_REVOKED); written into the final status.json. */
  #revocation: Revocation | null = null;
  #wakeUp: (() => void) | null = null;
  #renewTimer: NodeJS.Timeout | null = null;
  #renewing = false;
  /** An adoption of a CA bundle being written; a renewal waits for it (both rewrite the identity). */
  #adopting: Promise<void> = Promise.resolve();
  /** When this process obtained the current certificate (renewal timing; see renew.ts). */
  #certReceivedAt = 0;
  readonly #messageHandlers = new HandlerRegistry<MessageArgs>();
  readonly #streamHandlers = new HandlerRegistry<StreamArgs>({ exclusive: true });
  readonly #helloContributors: HelloContributor[] = [];
  readonly #reconcilers: Reconciler[] = [];

  constructor(options: AgentRunOptions) {
    super();
    this.#opts = {
      renewPolicy: DEFAULT_RENEW_POLICY,
      connectTimeoutMs: 15_000,
      livenessIntervals: 3,
      backoff: {},
      proxy: DIRECT,
      ...options,
    };
    this.#log = options.logger;
    this.#backoff = new Backoff(this.#opts.backoff);
  }

  /** Registers a handler for a control message kind from the server; several run in order. Returns its removal. */
  onMessage<N extends KindName>(kind: N, handler: ServerMessageHandler<N>): () => void {
    return this.#messageHandlers.on(kind, handler);
  }

  /** Registers the handler for server-opened streams of `kind` (e.g. exec.open); one per kind. Returns its removal. */
  onStream(kind: KindName, handler: ServerStreamHandler): () => void {
    if (this.#streamHandlers.has(kind)) throw new Error(`a stream handler for ${kind} is already registered`);
    return this.#streamHandlers.on(kind, handler);
  }

  /**
   * Sends a control message on the current session. False when there is no open session or its
   * control queue is above the high-water mark (Session.send): the caller keeps what it wanted to
   * send and tries again later, rather than piling up messages for a slow link.
   */
  send<N extends KindName>(kind: N, payload: InputOf<N>): boolean {
    const session = this.session;
    if (!session || session.state !== 'open') return false;
    return session.send(kind, payload);
  }

  addHelloFields(contributor: HelloContributor): void {
    this.#helloContributors.push(contributor);
  }

  /** Lets a feature take part in the `reconcile` action (run by the ops feature's builtins). */
  addReconciler(reconciler: Reconciler): void {
    this.#reconcilers.push(reconciler);
  }

  get reconcilers(): readonly Reconciler[] {
    return this.#reconcilers;
  }

  get identity(): Identity | null {
    return this.#identity;
  }

  get session(): Session | null {
    return this.#live?.session ?? null;
  }

  /** How this runner reaches its server; features that talk HTTPS to it (upgrade downloads) use the same. */
  get proxy(): ProxyConfig {
    return this.#opts.proxy;
  }

  /** Runs until stopped or until the identity is refused for good; resolves with the exit code. */
  async run(): Promise<number> {
    this.#identity = await loadIdentity(this.#opts.stateDir);
    this.#certReceivedAt = await this.#certFileTime();
    const via = proxyFor(this.#identity.server, this.#opts.proxy);
    this.#log.info(
      { nodeId: this.#identity.nodeId, server: this.#identity.server, certNotAfter: this.#identity.cert.notAfter.toISOString(), proxy: via === null ? null : via.display },
      'agent starting',
    );
    try {
      let live: Live | null = null;
      while (!this.#stopping) {
        if (!live) {
          await this.#setState('connecting');
          try {
            live = await this.#connect(this.#identity);
          } catch (err) {
            const exit = await this.#handleConnectFailure(err);
            if (exit !== null) return exit;
            continue;
          }
        }
        const info = await this.#serve(live);
        const upFor = Date.now() - live.connectedAt;
        const successor = live.replacedBy ?? (live.successor ? await live.successor.catch(() => null) : null);
        if (successor && !this.#stopping) {
          live = successor;
          continue;
        }
        live = null;
        if (this.#stopping) break;
        if (info.code === 4401 || info.error?.code === 'ML_ERR_CERT_REVOKED') {
          return this.#revoked(info.code === 4401 ? 'closed with 4401 (session_revoked)' : 'ML_ERR_CERT_REVOKED');
        }
        this.#backoff.connectionEnded(upFor);
        await this.#sleepBackoff(`connection closed (${info.code}${info.error ? ` ${info.error.code}` : ''})`);
      }
      return AGENT_EXIT_CODES.ok;
    } finally {
      this.#clearRenewTimer();
      await this.#setState('stopped', this.#revocation === null ? {} : { revoked: this.#revocation });
    }
  }

  /** Graceful stop: goaway on the live session, then close. Idempotent. */
  stop(): void {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#wakeUp?.();
    const live = this.#live;
    if (live && live.session.state === 'open') {
      live.session.goaway('agent stopping');
      live.session.close(1001, 'agent stopping');
    } else {
      live?.ws.terminate();
    }
  }

  // ---------------------------------------------------------------- connecting

  async #connect(identity: Identity): Promise<Live> {
    let hello: Omit<InputOf<'hello'>, 'versions'> = { agentVersion: VERSION, hostname: identity.hostname };
    for (const contribute of this.#helloContributors) hello = { ...hello, ...contribute() };
    const dialled = await dial(identity, {
      timeoutMs: this.#opts.connectTimeoutMs,
      proxy: this.#opts.proxy,
      hello,
      prepare: (session) => {
        session.on('message', (msg) => this.#dispatchMessage(msg, session));
        session.on('stream', (stream) => {
          const handler = this.#streamHandlers.handlersOf(stream.kind as KindName)[0];
          if (!handler) {
            session.reject(stream, 'ML_ERR_UNSUPPORTED', `this agent does not handle ${stream.kind}`);
            return;
          }
          handler(stream, session);
        });
      },
    });
    return { identity, ...dialled, connectedAt: Date.now(), replacedBy: null, successor: null };
  }

  /** Decides what a failed dial means; returns an exit code to stop, or null to go on. */
  async #handleConnectFailure(err: unknown): Promise<number | null> {
    if (err instanceof ConnectRefusedError) {
      if (err.serverCode === 'ML_ERR_CERT_REVOKED') return this.#revoked('connection refused with ML_ERR_CERT_REVOKED');
      if (err.serverCode === 'ML_ERR_CERT_EXPIRED' || this.#identity!.cert.notAfter.getTime() <= Date.now()) {
        return this.#renewExpired();
      }
    }
    this.#log.warn({ err: describe(err) }, 'connection attempt failed');
    await this.#sleepBackoff('dial failed', err);
    return null;
  }

  async #renewExpired(): Promise<number | null> {
    const identity = this.#identity!;
    this.#log.warn({ certNotAfter: identity.cert.notAfter.toISOString() }, 'certificate expired; renewing over HTTPS within the grace period');
    try {
      this.#identity = await renewExpired(identity, this.#log, this.#opts.proxy);
      this.#certReceivedAt = Date.now();
      this.#backoff.reset();
      return null;
    } catch (err) {
      if (err instanceof EnrollError) {
        this.#log.error(
          { code: err.code, nodeId: identity.nodeId },
          `the server refuses to renew this expired certificate (${err.message}). Way back: on the server run ` +
            `"meshlink server token create --node ${identity.nodeId}", then here "meshlink agent enroll --force ..." with that token`,
        );
        return AGENT_EXIT_CODES.certExpired;
      }
      this.#log.warn({ err: describe(err) }, 'renewal of the expired certificate failed; will retry');
      await this.#sleepBackoff('renewal failed');
      return null;
    }
  }

  /**
   * The server revoked this node: remembered so that the last status.json (state stopped) says so,
   * with when and how, for `agent status`; a restart cannot help, only a re-enrollment.
   */
  #revoked(how: string): number {
    this.#revocation = { at: new Date().toISOString(), how, certSerial: this.#identity?.cert.serial ?? null };
    this.#log.error({ nodeId: this.#identity?.nodeId }, 'the server revoked this node’s certificate; not retrying (exit 78). Re-enroll with a new token to rejoin.');
    return AGENT_EXIT_CODES.revoked;
  }

  async #sleepBackoff(reason: string, err?: unknown): Promise<void> {
    if (this.#stopping) return;
    const delay = this.#backoff.next();
    // Our own errors' messages name a proxy by host:port only, so the failure may go to status.json.
    await this.#setState('backoff', { retryInMs: delay, ...(err === undefined ? {} : { lastError: describe(err) }) });
    this.#log.info({ reason, delayMs: delay, attempt: this.#backoff.attempt }, 'reconnecting after backoff');
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, delay);
      this.#wakeUp = () => {
        clearTimeout(t);
        resolve();
      };
    });
    this.#wakeUp = null;
  }

  // ---------------------------------------------------------------- a live connection

  /** Serves one connection until it closes; heartbeats, liveness, renewal. */
  async #serve(live: Live): Promise<CloseInfo> {
    this.#live = live;
    const { session, welcome } = live;
    await this.#setState('connected', { connectedAt: new Date(live.connectedAt).toISOString() });
    this.#log.info({ nodeId: welcome.nodeId, version: session.version, heartbeatIntervalMs: welcome.heartbeatIntervalMs }, 'connected');
    this.emit('connected', live.session, welcome);
    void this.#followServerUrl(welcome.serverUrl);
    void this.#adoptCaBundle(welcome.caBundle);

    let seq = 0;
    const interval = welcome.heartbeatIntervalMs;
    const beat = (): void => {
      if (session.state !== 'open') return;
      if (Date.now() - session.lastReceivedAt > interval * this.#opts.livenessIntervals) {
        this.#log.warn({ silentMs: Date.now() - session.lastReceivedAt }, 'server silent; abandoning the connection');
        session.abort(new MeshlinkError('ML_ERR_HEARTBEAT_TIMEOUT', 'no traffic from the server'));
        live.ws.terminate();
        return;
      }
      session.send('heartbeat', { seq: ++seq, ts: Date.now(), uptimeMs: Math.round(process.uptime() * 1000) });
    };
    const timer = setInterval(beat, interval);
    beat();
    session.on('goaway', (g) => this.#log.info({ reason: g.reason }, 'server sent goaway'));
    this.#scheduleRenewal();

    const info = await live.closed;
    clearInterval(timer);
    if (this.#live === live) this.#live = null;
    if (!live.replacedBy) this.#log.info({ code: info.code, reason: info.reason, error: info.error?.code }, 'disconnected');
    return info;
  }

  #dispatchMessage(msg: ControlMessage, session: Session): void {
    if (msg.name === 'heartbeat.ack') {
      this.lastHeartbeatRttMs = Date.now() - msg.payload.ts;
      this.emit('heartbeat', this.lastHeartbeatRttMs);
      return;
    }
    if (msg.name === 'ca.bundle') {
      // A CA rotation started or ended while this session is open (docs/PROTOCOL.md §4, rule 6).
      void this.#adoptCaBundle(msg.payload.caBundle);
      return;
    }
    // The session decoded and checked the payload against the schema of its kind.
    const kind = msg.name as KindName;
    this.#messageHandlers.emit(kind, [msg.payload, session] as MessageArgs[typeof kind], (err) =>
      this.#log.error({ err: describe(err), kind: msg.name }, 'message handler failed'),
    );
    this.emit('message', msg);
  }

  // ---------------------------------------------------------------- renewal

  #scheduleRenewal(): void {
    this.#clearRenewTimer();
    const wait = renewalDelayMs(this.#identity!, this.#certReceivedAt, this.#opts.renewPolicy);
    this.#renewTimer = setTimeout(() => void this.#renewInBand(), Math.min(wait, 2_147_483_647));
    this.#renewTimer.unref();
    this.#log.debug({ dueAt: new Date(Date.now() + wait).toISOString() }, 'renewal scheduled');
  }

  #clearRenewTimer(): void {
    if (this.#renewTimer) clearTimeout(this.#renewTimer);
    this.#renewTimer = null;
  }

  /**
   * The server announces its configured public URL (`server start --public-url`). An agent enrolled at
   * another URL moves there, for every later connection, renewal and download, once it has reached the
   * new URL with its pinned CA: a wrong URL leaves it where it is. Announced at every welcome, so an
   * attempt skipped during a renewal is made at the next connection.
   */
  async #followServerUrl(url: string | undefined): Promise<void> {
    const identity = this.#identity;
    if (!url || !identity || url === identity.server || this.#renewing) return;
    const log = this.#log.child({ from: identity.server, to: url });
    if (serverOrigin(url) !== url) {
      log.warn('the server announced a public URL that is not https://host[:port]; ignored');
      return;
    }
    if (!(await reachesServer(url, identity.caPem, this.#opts.proxy))) {
      log.warn('the server announced a public URL this agent cannot reach with its CA; staying at the enrolled URL');
      return;
    }
    if (this.#identity !== identity || this.#renewing) return;
    try {
      this.#identity = await saveServerUrl(identity.stateDir, url);
      log.info('the server moved to a new public URL; connecting there from now on');
    } catch (err) {
      log.warn({ err }, 'could not store the new server URL');
    }
  }

  /**
   * The server's CA bundle (welcome.caBundle): during a CA rotation it holds the next CA too, which
   * this agent then pins and trusts for every later connection (docs/AGENT.md, "CA rotation"). It came
   * on this session, whose server certificate verified against the CAs the agent already trusts.
   */
  async #adoptCaBundle(bundle: readonly string[] | undefined): Promise<void> {
    const identity = this.#identity;
    if (!bundle || !identity || this.#renewing) return;
    const trust = adoptCaBundle(identity, bundle, identity.certPem);
    if (!trust) return;
    // saveCaTrust reads the identity and writes it back: a renewal committing in between would be
    // undone (the old certificate back, which the server has revoked on the renewed one's first use).
    // A renewal starting now waits for this write; one already under way made us return above, and its
    // answer carries the bundle again.
    const write = (async () => {
      try {
        this.#identity = await saveCaTrust(identity.stateDir, trust);
        this.#log.info({ caPins: trust.caPins }, 'the server changed its CA bundle; trusting it from now on');
      } catch (err) {
        this.#log.warn({ err }, 'could not store the CA bundle');
      }
    })();
    this.#adopting = write;
    await write;
  }

  async #renewInBand(): Promise<void> {
    const live = this.#live;
    if (!live || this.#renewing || this.#stopping || live.session.state !== 'open') return;
    this.#renewing = true;
    await this.#adopting;
    const identity = this.#identity!;
    try {
      const renewed = await renewInBand(live.session, identity);
      this.#identity = renewed;
      this.#certReceivedAt = Date.now();
      this.#log.info({ certSerial: renewed.cert.serial, certNotAfter: renewed.cert.notAfter.toISOString() }, 'certificate renewed; switching connections');
      // Make before break: the new connection is up before the old one goes. The run loop takes
      // `successor` over when the old one closes first (the server replaces it: 4409).
      live.successor = this.#connect(renewed);
      const next = await live.successor;
      if (this.#stopping) {
        next.session.close(1000, 'not needed');
        return;
      }
      // Read again after the await (the narrowing above is stale): the run loop already took `next`.
      const oldState: string = live.session.state;
      if (oldState === 'closed') return;
      live.replacedBy = next;
      live.session.goaway('switching to a renewed certificate');
      live.session.close(1000, 'renewed');
    } catch (err) {
      // The old certificate is still valid: keep it and try again.
      const retry = renewalRetryMs(identity);
      this.#log.warn({ err: describe(err), retryInMs: retry }, 'in-band renewal failed; keeping the current certificate');
      this.#clearRenewTimer();
      this.#renewTimer = setTimeout(() => void this.#renewInBand(), retry);
      this.#renewTimer.unref();
    } finally {
      this.#renewing = false;
    }
  }

  // ---------------------------------------------------------------- status

  async #setState(state: AgentConnectionState, extra: Record<string, unknown> = {}): Promise<void> {
    this.state = state;
    this.emit('state', state);
    const identity = this.#identity;
    try {
      await writeAgentStatus(this.#opts.stateDir, {
        state,
        since: new Date().toISOString(),
        pid: process.pid,
        updatedAt: new Date().toISOString(),
        ...(identity ? { nodeId: identity.nodeId, server: identity.server, certSerial: identity.cert.serial, certNotAfter: identity.cert.notAfter.toISOString(), proxy: proxyStatus(identity.server, this.#opts.proxy) } : {}),
        ...extra,
      });
    } catch (err) {
      this.#log.warn({ err: describe(err) }, 'could not write status.json');
    }
  }

  async #certFileTime(): Promise<number> {
    try {
      return (await stat(join(this.#opts.stateDir, 'cert.pem'))).mtimeMs;
    } catch {
      return Date.now();
    }
  }
}

/** The proxy as status.json shows it: host:port and where it was set, never credentials; null when direct. */
function proxyStatus(server: string, proxy: ProxyConfig): { address: string; source: string } | null {
  const via = proxyFor(server, proxy);
  return via === null ? null : { address: via.display, source: via.source };
}

function describe(err: unknown): { code?: string; message: string } {
  if (err instanceof MeshlinkError) return { code: err.code, message: err.message };
  if (err instanceof Error) return { code: (err as { code?: string }).code, message: err.message } as { code?: string; message: string };
  return { message: String(err) };
}
