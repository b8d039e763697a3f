import { EventEmitter } from 'node:events';
import { stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import type { IncomingMessage } from 'node:http';
import { zeroMaskingKey } from '../net/ws-mask.js';
import { attachSession } from '../net/ws-session.js';
import { MeshlinkError, ProtocolError } from '../protocol/errors.js';
import type { Session, CloseInfo } from '../protocol/session.js';
import type { InputOf, KindName, PayloadOf } from '../protocol/registry.js';
import type { MuxStream } from '../protocol/stream.js';
import { VERSION } from '../version.js';
import type { Logger } from '../util/logger.js';
import { Backoff, type BackoffOptions } from './backoff.js';
import { AGENT_EXIT_CODES } from './config.js';
import { createCsrPem, generateAgentKeyPair, KEY_TYPES, type KeyType } from './csr.js';
import { EnrollError, renewViaHttps, verifyIssued } from './enroll.js';
import { loadIdentity, saveRenewedCertificate, type Identity } from './identity.js';
import { writeAgentStatus } from './state/status-file.js';
import { DEFAULT_RENEW_POLICY, renewalDueAt, type RenewPolicy } from './renew.js';
import { createPrivateKey } from 'node:crypto';

/**
 * `meshlink agent run`: keeps one outbound mTLS WebSocket to the control plane for as long as the
 * process lives (docs/AGENT.md, "Running").
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
}

export type AgentConnectionState = 'connecting' | 'connected' | 'backoff' | 'stopped';

/** Handles a control message from the server (features register these; see onMessage). */
export type ServerMessageHandler<N extends KindName = KindName> = (payload: PayloadOf<N>, session: Session) => void;
/** Handles a stream the server opened (see onStream). The handler must accept or reject it. */
export type ServerStreamHandler = (stream: MuxStream, session: Session) => void;
/** Contributes fields to hello (e.g. lastEventSeq, wgPublicKey); called for every connection. */
export type HelloContributor = () => Partial<InputOf<'hello'>>;
/** A feature's part of the operator's `reconcile` action (e.g. the mesh): what it found and corrected. */
export type Reconciler = () => Promise<{ name: string; drift: string[] }>;

/** A refusal of the WebSocket upgrade, with the server's JSON error code when it sent one. */
export class ConnectRefusedError extends MeshlinkError {
  constructor(
    readonly status: number,
    readonly serverCode: string | null,
    message: string,
  ) {
    super('ML_ERR_CONNECT_REFUSED', message);
  }
}

interface Live {
  identity: Identity;
  ws: WebSocket;
  session: Session;
  welcome: PayloadOf<'welcome'>;
  connectedAt: number;
  closed: Promise<CloseInfo>;
  /** Set when a renewal replaced this connection with a new one. */
  replacedBy: Live | null;
}

export class AgentRunner extends EventEmitter {
  state: AgentConnectionState = 'connecting';
  lastHeartbeatRttMs: number | null = null;
  readonly #opts: Required<Omit<AgentRunOptions, 'backoff'>> & { backoff: BackoffOptions };
  readonly #log: Logger;
  readonly #backoff: Backoff;
  #identity: Identity | null = null;
  #live: Live | null = null;
  #stopping = false;
  #wakeUp: (() => void) | null = null;
  #renewTimer: NodeJS.Timeout | null = null;
  #renewing = false;
  /** When this process obtained the current certificate (renewal timing; see renew.ts). */
  #certReceivedAt = 0;
  readonly #messageHandlers = new Map<string, ServerMessageHandler[]>();
  readonly #streamHandlers = new Map<string, ServerStreamHandler>();
  readonly #helloContributors: HelloContributor[] = [];
  readonly #reconcilers: Reconciler[] = [];

  constructor(options: AgentRunOptions) {
    super();
    this.#opts = {
      renewPolicy: DEFAULT_RENEW_POLICY,
      connectTimeoutMs: 15_000,
      livenessIntervals: 3,
      backoff: {},
      ...options,
    };
    this.#log = options.logger;
    this.#backoff = new Backoff(this.#opts.backoff);
  }

  /** Registers a handler for a control message kind from the server; several run in order. */
  onMessage<N extends KindName>(kind: N, handler: ServerMessageHandler<N>): void {
    const list = this.#messageHandlers.get(kind) ?? [];
    list.push(handler as unknown as ServerMessageHandler);
    this.#messageHandlers.set(kind, list);
  }

  /** Registers the handler for server-opened streams of `kind` (e.g. exec.open); one per kind. */
  onStream(kind: KindName, handler: ServerStreamHandler): void {
    if (this.#streamHandlers.has(kind)) throw new Error(`a stream handler for ${kind} is already registered`);
    this.#streamHandlers.set(kind, handler);
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

  /** Runs until stopped or until the identity is refused for good; resolves with the exit code. */
  async run(): Promise<number> {
    this.#identity = await loadIdentity(this.#opts.stateDir);
    this.#certReceivedAt = await this.#certFileTime();
    this.#log.info({ nodeId: this.#identity.nodeId, server: this.#identity.server, certNotAfter: this.#identity.cert.notAfter.toISOString() }, 'agent starting');
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
        if (live.replacedBy) {
          live = live.replacedBy;
          continue;
        }
        live = null;
        if (this.#stopping) break;
        if (info.code === 4401 || info.error?.code === 'ML_ERR_CERT_REVOKED') {
          return this.#revoked();
        }
        this.#backoff.connectionEnded(upFor);
        await this.#sleepBackoff(`connection closed (${info.code}${info.error ? ` ${info.error.code}` : ''})`);
      }
      return AGENT_EXIT_CODES.ok;
    } finally {
      this.#clearRenewTimer();
      await this.#setState('stopped');
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

  #connect(identity: Identity): Promise<Live> {
    const url = new URL('/v1/connect', identity.server);
    url.protocol = url.protocol === 'http:' ? 'ws:' : 'wss:';
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const ws = new WebSocket(url, {
      ca: identity.caPem,
      cert: identity.certPem,
      key: identity.keyPem,
      ...(isIP(host) ? {} : { servername: host }),
      perMessageDeflate: false,
      maxPayload: 16 * 1024 * 1024,
      handshakeTimeout: this.#opts.connectTimeoutMs,
      ...(url.protocol === 'wss:' ? { generateMask: zeroMaskingKey } : {}),
    });
    return new Promise<Live>((resolve, reject) => {
      let settled = false;
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        ws.terminate();
        reject(err);
      };
      ws.once('unexpected-response', (_req, res: IncomingMessage) => {
        readJsonError(res).then(
          (body) => fail(new ConnectRefusedError(res.statusCode ?? 0, body?.code ?? null, `server refused the connection: ${res.statusCode} ${body?.code ?? ''} ${body?.message ?? ''}`.trim())),
          () => fail(new ConnectRefusedError(res.statusCode ?? 0, null, `server refused the connection: ${res.statusCode}`)),
        );
      });
      ws.once('error', (err) => fail(err));
      ws.once('open', () => {
        const session = attachSession(ws, { role: 'agent', handshakeTimeoutMs: this.#opts.connectTimeoutMs });
        const closed = new Promise<CloseInfo>((r) => session.once('close', r));
        // Handlers attach before the handshake: the server may send right after welcome, in the same
        // read, before any continuation of ours runs.
        session.on('message', (msg) => this.#dispatchMessage(msg, session));
        session.on('stream', (stream) => {
          const handler = this.#streamHandlers.get(stream.kind);
          if (!handler) {
            session.reject(stream, 'ML_ERR_UNSUPPORTED', `this agent does not handle ${stream.kind}`);
            return;
          }
          handler(stream, session);
        });
        let hello: Omit<InputOf<'hello'>, 'versions'> = { agentVersion: VERSION, hostname: identity.hostname };
        for (const contribute of this.#helloContributors) hello = { ...hello, ...contribute() };
        session
          .handshake(hello)
          .then((welcome) => {
            if (settled) return;
            settled = true;
            resolve({ identity, ws, session, welcome, connectedAt: Date.now(), closed, replacedBy: null });
          })
          .catch((err: Error) => fail(err));
      });
    });
  }

  /** Decides what a failed dial means; returns an exit code to stop, or null to go on. */
  async #handleConnectFailure(err: unknown): Promise<number | null> {
    if (err instanceof ConnectRefusedError) {
      if (err.serverCode === 'ML_ERR_CERT_REVOKED') return this.#revoked();
      if (err.serverCode === 'ML_ERR_CERT_EXPIRED' || this.#identity!.cert.notAfter.getTime() <= Date.now()) {
        return this.#renewExpired();
      }
    }
    this.#log.warn({ err: describe(err) }, 'connection attempt failed');
    await this.#sleepBackoff('dial failed');
    return null;
  }

  async #renewExpired(): Promise<number | null> {
    const identity = this.#identity!;
    this.#log.warn({ certNotAfter: identity.cert.notAfter.toISOString() }, 'certificate expired; renewing over HTTPS within the grace period');
    try {
      this.#identity = await renewViaHttps(identity, { logger: this.#log });
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

  #revoked(): number {
    this.#log.error({ nodeId: this.#identity?.nodeId }, 'the server revoked this node’s certificate; not retrying (exit 78). Re-enroll with a new token to rejoin.');
    return AGENT_EXIT_CODES.revoked;
  }

  async #sleepBackoff(reason: string): Promise<void> {
    if (this.#stopping) return;
    const delay = this.#backoff.next();
    await this.#setState('backoff', { retryInMs: delay });
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

    let seq = 0;
    const interval = welcome.heartbeatIntervalMs;
    const beat = (): void => {
      if (session.state !== 'open') return;
      if (Date.now() - session.lastReceivedAt > interval * this.#opts.livenessIntervals) {
        this.#log.warn({ silentMs: Date.now() - session.lastReceivedAt }, 'server silent; abandoning the connection');
        session.abort(new ProtocolError('ML_ERR_HEARTBEAT_TIMEOUT', 'no traffic from the server'));
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

  #dispatchMessage(msg: { name: string; payload: unknown }, session: Session): void {
    if (msg.name === 'heartbeat.ack') {
      this.lastHeartbeatRttMs = Date.now() - (msg.payload as { ts: number }).ts;
      this.emit('heartbeat', this.lastHeartbeatRttMs);
      return;
    }
    for (const handle of this.#messageHandlers.get(msg.name) ?? []) {
      try {
        handle(msg.payload as never, session);
      } catch (err) {
        this.#log.error({ err: describe(err), kind: msg.name }, 'message handler failed');
      }
    }
    this.emit('message', msg);
  }

  // ---------------------------------------------------------------- renewal

  #scheduleRenewal(): void {
    this.#clearRenewTimer();
    const identity = this.#identity!;
    const start = Math.max(identity.cert.notBefore.getTime(), this.#certReceivedAt);
    const due = renewalDueAt(start, identity.cert.notAfter.getTime(), this.#opts.renewPolicy);
    const wait = Math.max(0, due - Date.now());
    this.#renewTimer = setTimeout(() => void this.#renewInBand(), Math.min(wait, 2_147_483_647));
    this.#renewTimer.unref();
    this.#log.debug({ dueAt: new Date(due).toISOString() }, 'renewal scheduled');
  }

  #clearRenewTimer(): void {
    if (this.#renewTimer) clearTimeout(this.#renewTimer);
    this.#renewTimer = null;
  }

  async #renewInBand(): Promise<void> {
    const live = this.#live;
    if (!live || this.#renewing || this.#stopping || live.session.state !== 'open') return;
    this.#renewing = true;
    const identity = this.#identity!;
    try {
      const keys = await generateAgentKeyPair(keyTypeOf(identity.keyPem));
      const csr = createCsrPem(keys, { hostname: identity.hostname, sans: identity.sans });
      const res = await live.session.request('cert.renew', { csr }, { timeoutMs: 60_000 });
      const verified = verifyIssued({ nodeId: identity.nodeId, certificate: res.certificate, caCertificate: res.caCertificate, notAfter: res.notAfter }, identity.caPins, keys.publicKeyPem);
      const renewed = await saveRenewedCertificate(identity.stateDir, keys.privateKeyPem, verified.certPem, verified.caPem);
      this.#identity = renewed;
      this.#certReceivedAt = Date.now();
      this.#log.info({ certSerial: renewed.cert.serial, certNotAfter: renewed.cert.notAfter.toISOString() }, 'certificate renewed; switching connections');
      // Make before break: the new connection is up before the old one goes.
      const next = await this.#connect(renewed);
      if (this.#stopping || this.#live !== live) {
        next.session.close(1000, 'not needed');
        return;
      }
      live.replacedBy = next;
      live.session.goaway('switching to a renewed certificate');
      live.session.close(1000, 'renewed');
    } catch (err) {
      // The old certificate is still valid: keep it and try again in a minute (or at half the time left).
      const left = identity.cert.notAfter.getTime() - Date.now();
      const retry = Math.max(1_000, Math.min(60_000, left / 2));
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
        ...(identity ? { nodeId: identity.nodeId, server: identity.server, certSerial: identity.cert.serial, certNotAfter: identity.cert.notAfter.toISOString() } : {}),
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

function keyTypeOf(keyPem: string): KeyType {
  const bits = createPrivateKey(keyPem).asymmetricKeyDetails?.modulusLength;
  const candidate = `rsa${bits ?? 2048}`;
  return (KEY_TYPES as readonly string[]).includes(candidate) ? (candidate as KeyType) : 'rsa2048';
}

async function readJsonError(res: IncomingMessage): Promise<{ code?: string; message?: string } | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of res) {
    size += (c as Buffer).length;
    if (size > 16 * 1024) break;
    chunks.push(c as Buffer);
  }
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { code?: unknown; message?: unknown };
    return { ...(typeof body.code === 'string' ? { code: body.code } : {}), ...(typeof body.message === 'string' ? { message: body.message.slice(0, 500) } : {}) };
  } catch {
    return null;
  }
}

function describe(err: unknown): { code?: string; message: string } {
  if (err instanceof MeshlinkError) return { code: err.code, message: err.message };
  if (err instanceof Error) return { code: (err as { code?: string }).code, message: err.message } as { code?: string; message: string };
  return { message: String(err) };
}
