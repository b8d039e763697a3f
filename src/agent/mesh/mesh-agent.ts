import { createSocket, type Socket } from 'node:dgram';
import { networkInterfaces } from 'node:os';
import type { Session } from '../../protocol/session.js';
import type { PayloadOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import { EventDispatcher } from './dispatcher.js';
import { EMPTY_APPLIED, readApplied, statusOf, writeApplied, writeMeshStatus, type AppliedFile, type MeshStatus } from './state-file.js';
import { EventVerifier } from './verifier.js';
import { DEFAULT_WG_PORT, writeWgQuick, WG_CONFIG_FILE } from './wg-config.js';
import { generateWgKeyPair, loadOrCreateWgKey, saveWgKey, type WgKeyPair } from './wg-keys.js';
import type { DriftItem, WireGuardApplier } from './wg-apply.js';
import { decodeEnvelope, decodeSnapshot, snapshotSigningBytes, stateDigest, type Envelope, type MeshState, type PeerInfo, type SkippedEntry, type Snapshot } from '../../contract/mesh-events.js';
import { join } from 'node:path';
import { isIP } from 'node:net';
import { readPinnedEventKeys } from '../state/event-keys.js';
import { MeshlinkError } from '../../errors.js';
import { PEER_SAMPLE_MS, PEER_STATUS_MAX_ENTRIES, type NatReport } from '../../contract/mesh-events.js';
import { probeNat, type NatProbeResult } from './nat-probe.js';
import { PeerWatch } from './peer-watch.js';

/**
 * The agent's side of the mesh: verifies and applies events in order, persists what it applied,
 * reconciles against the server's desired state, renders (and with --wireguard applies) the WireGuard
 * configuration. Events are processed strictly one at a time through a promise queue, so a slow
 * `wg set` never lets a later event overtake an earlier one.
 */

export interface MeshAgentOptions {
  stateDir: string;
  logger: Logger;
  /** Reconciliation period (default 60 s). */
  reconcileIntervalMs?: number;
  /** Endpoints to announce (HOST:PORT); default: this host's IPv4 addresses with the listen port. */
  endpoints?: string[];
  listenPort?: number;
  /** Applies the configuration to a real interface when given (see wg-apply.ts). */
  applier?: WireGuardApplier | null;
  /** Write state files (default true). The fan-out benchmark turns it off to measure delivery alone. */
  persist?: boolean;
  /**
   * The server's STUN responder to probe from the WireGuard listen port (docs/MESH.md, "NAT
   * traversal"); null: no probe, and hello carries no NAT report (the node claims to be reachable at
   * its endpoints). Default null; `agent run` passes the enrolled server's host, port 3478.
   */
  stun?: { host: string; port: number } | null;
  /** Deadline of each STUN transaction (default 2 s). */
  stunTimeoutMs?: number;
}

type EventMessage = PayloadOf<'event'>;

export class MeshAgent {
  readonly dispatcher: EventDispatcher;
  readonly verifier: EventVerifier;
  readonly #o: Required<Omit<MeshAgentOptions, 'applier' | 'endpoints' | 'stun'>> & { applier: WireGuardApplier | null; endpoints: string[] | null; stun: { host: string; port: number } | null };
  readonly #log: Logger;
  #keys: WgKeyPair;
  #applied: AppliedFile;
  #queue: Promise<void> = Promise.resolve();
  #reportKey = false;
  #lastError: string | null = null;
  #timer: NodeJS.Timeout | null = null;
  #stopped = false;
  /** The node id of the last welcome, for a snapshot check before any state was applied. */
  #welcomeNodeId: string | undefined;
  /** Peer entries dropped because they failed their schema (status file, `agent status --json`). */
  #skippedPeerEntries = 0;
  /** What the last STUN probe learned (hello's `nat`); null: no probe ran. */
  #nat: NatReport | null = null;
  /** Whether each peer is reachable on its endpoint (with an applier: WireGuard's counters). */
  readonly #links = new PeerWatch();
  #linkTimer: NodeJS.Timeout | null = null;
  #sampling = false;
  /** The probes' socket, bound to the mesh address it was made for (see #probe). */
  #probeSocket: { meshIp: string; socket: Socket; bound: Promise<boolean> } | null = null;
  #samples = 0;
  /** Emitted for tests and the benchmark: (envelope, receivedAt). */
  onApplied: ((event: Envelope, receivedAt: number) => void) | null = null;

  private constructor(options: MeshAgentOptions, keys: WgKeyPair, applied: AppliedFile) {
    this.#o = {
      reconcileIntervalMs: 60_000,
      listenPort: DEFAULT_WG_PORT,
      persist: true,
      stunTimeoutMs: 2_000,
      ...options,
      stun: options.stun ?? null,
      applier: options.applier ?? null,
      endpoints: options.endpoints && options.endpoints.length > 0 ? options.endpoints : null,
    };
    this.#log = options.logger.child({ component: 'mesh' });
    this.#keys = keys;
    this.#applied = applied;
    this.verifier = new EventVerifier(applied.trustedKeys.map((k) => ({ keyId: k.keyId, publicKey: Buffer.from(k.publicKey, 'base64'), until: k.until })));
    this.dispatcher = new EventDispatcher(this.#log);
    this.#registerBuiltins();
  }

  static async create(options: MeshAgentOptions): Promise<MeshAgent> {
    const persist = options.persist ?? true;
    const keys = persist ? await loadOrCreateWgKey(options.stateDir) : generateWgKeyPair();
    let applied = persist ? await readApplied(options.stateDir) : { ...EMPTY_APPLIED };
    // The keys the enrollment pinned start the chain of trust: for an agent that trusts none yet, or
    // whose mesh state belongs to an earlier enrollment as another node (docs/MESH.md, "Trust model").
    const pinned = persist ? await readPinnedEventKeys(options.stateDir) : null;
    if (pinned && (applied.trustedKeys.length === 0 || (applied.state !== null && applied.state.nodeId !== pinned.nodeId))) {
      applied = { ...EMPTY_APPLIED, trustedKeys: pinned.keys.map((k) => ({ keyId: k.keyId, publicKey: k.publicKey, until: null })) };
    }
    return new MeshAgent(options, keys, applied);
  }

  get wgPublicKey(): string {
    return this.#keys.publicKey;
  }
  get lastEventSeq(): number {
    return this.#applied.lastEventSeq;
  }
  get state(): MeshState | null {
    return this.#applied.state;
  }
  /** How many invalid peer entries were dropped since start (each is logged with where it was). */
  get skippedPeerEntries(): number {
    return this.#skippedPeerEntries;
  }

  /** hello fields: what was applied (for replay), the WireGuard key, where peers can reach us, and the NAT report. */
  helloFields(): { lastEventSeq: number; wgPublicKey: string; endpoints: string[]; nat?: NatReport } {
    const fields = { lastEventSeq: this.#applied.lastEventSeq, wgPublicKey: this.#keys.publicKey, endpoints: this.endpoints() };
    return this.#nat === null ? fields : { ...fields, nat: { ...this.#nat } };
  }

  get nat(): NatReport | null {
    return this.#nat;
  }

  /**
   * Probes the STUN responder from the WireGuard listen port (before the interface holds it: the
   * feature runs this at attach, before the first connection and so before any state is applied).
   * The result goes into every hello from then on. A probe that gets no answer reports `unknown`
   * (the server then chooses the relay unless the peer is public); when the port is already held (an
   * interface left up by an earlier run), the probe runs from any port: `none` still holds for the
   * listen port (same host address, no NAT), any other class is reported `unknown`, since the
   * reflexive port would not be WireGuard's. Never throws.
   */
  async probeNat(probe: typeof probeNat = probeNat): Promise<NatReport | null> {
    const server = this.#o.stun;
    if (server === null) return null;
    const listenPort = this.#o.listenPort;
    const run = (localPort: number): Promise<NatProbeResult> => probe({ server, localPort, timeoutMs: this.#o.stunTimeoutMs });
    let report: NatReport;
    try {
      let result: NatProbeResult;
      let fromListenPort = true;
      try {
        result = await run(listenPort);
      } catch (err) {
        if (!(err instanceof MeshlinkError && err.code === 'ML_ERR_STUN_PORT_BUSY')) throw err;
        fromListenPort = false;
        result = await run(0);
      }
      const reflexive = formatEndpoint(result.reflexive.address, fromListenPort ? result.reflexive.port : listenPort);
      report = fromListenPort || result.mapping === 'none' ? { mapping: result.mapping, reflexive } : { mapping: 'unknown', reflexive: null };
      this.#log.info({ mapping: report.mapping, reflexive: report.reflexive, fromListenPort }, 'NAT probe done');
    } catch (err) {
      report = { mapping: 'unknown', reflexive: null };
      this.#log.warn({ err: describeErr(err), stun: `${server.host}:${server.port}` }, 'NAT probe failed; reporting the mapping as unknown (peers behind NAT reach this node only through a relay)');
    }
    this.#nat = report;
    return report;
  }

  endpoints(): string[] {
    if (this.#o.endpoints) return [...this.#o.endpoints];
    const out: string[] = [];
    const own = this.#applied.state?.meshIp;
    for (const list of Object.values(networkInterfaces())) {
      for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal && a.address !== own) out.push(`${a.address}:${this.#o.listenPort}`);
    }
    return out.slice(0, 32);
  }

  // ------------------------------------------------------------------ connection

  /** A session is up: trust the welcome's keys, then reconcile now and every interval. */
  connected(session: Session, welcome: PayloadOf<'welcome'>): void {
    // Trust model (docs/MESH.md): the welcome's keys are pinned only by an agent that trusts none yet
    // (its first contact over the CA-pinned channel). After that they change nothing: a new key is
    // trusted only through a signing_key_rotated event signed by a key already trusted.
    this.#welcomeNodeId = welcome.nodeId;
    const keys = welcome.eventKeys ?? [];
    if (this.verifier.keys.length === 0 && keys.length > 0) {
      this.verifier.trustWelcome(keys);
      this.#applied = { ...this.#applied, trustedKeys: this.#trustedForFile() };
      this.#log.info({ keyIds: keys.map((k) => k.keyId) }, 'event-signing keys pinned at first contact');
    } else {
      const foreign = keys.filter((k) => !this.verifier.trusts(k.keyId, k.publicKey)).map((k) => k.keyId);
      if (foreign.length > 0) this.#log.warn({ keyIds: foreign }, 'the welcome names event keys this agent does not trust; ignored (keys change only by a signed rotation)');
    }
    this.#clearTimer();
    // The first state.request also tells the server to replay what this agent missed.
    void this.reconcile(session);
    this.#timer = setInterval(() => void this.reconcile(session), this.#o.reconcileIntervalMs);
    this.#timer.unref();
    // Only a real interface has counters to tell a working path from a dead one (docs/MESH.md, "Switching").
    if (this.#o.applier) {
      this.#linkTimer = setInterval(() => void this.sampleLinks(session), PEER_SAMPLE_MS);
      this.#linkTimer.unref();
    }
    session.once('close', () => this.#clearTimer());
  }

  #clearTimer(): void {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#linkTimer) clearInterval(this.#linkTimer);
    this.#timer = null;
    this.#linkTimer = null;
  }

  /**
   * Sends one byte to the discard port (9) of each peer's mesh address, through the tunnel: a data
   * packet its WireGuard must answer (peer-watch.ts, PEER_PROBE_AFTER_MS). What the peer's host does
   * with the datagram does not matter; WireGuard's answer does. Errors are ignored (no route yet).
   */
  #probe(state: MeshState, nodeIds: readonly string[]): void {
    if (nodeIds.length === 0) return;
    // Bound to this node's mesh address: without the interface (or its route) the send fails instead
    // of leaving by the default route.
    if (this.#probeSocket?.meshIp !== state.meshIp) {
      if (this.#probeSocket) closeQuietly(this.#probeSocket.socket);
      const socket = createSocket('udp4');
      socket.on('error', () => {});
      socket.unref();
      const bound = new Promise<boolean>((resolve) => {
        socket.once('error', () => resolve(false));
        socket.bind(0, state.meshIp, () => resolve(true));
      });
      this.#probeSocket = { meshIp: state.meshIp, socket, bound };
    }
    const { socket, bound } = this.#probeSocket;
    const meshIps = new Map(state.peers.map((p) => [p.nodeId, p.meshIp]));
    void bound.then((ok) => {
      if (!ok) {
        // Not bindable yet (the interface is not up): the next probe tries again.
        if (this.#probeSocket?.socket === socket) this.#probeSocket = null;
        closeQuietly(socket);
        return;
      }
      for (const id of nodeIds) {
        const ip = meshIps.get(id);
        if (ip !== undefined) socket.send(PROBE_DATAGRAM, DISCARD_PORT, ip, () => {});
      }
    });
  }

  /**
   * One sample of the interface's peers (docs/MESH.md, "Switching"): reports the peers whose state or
   * endpoint changed at once, and every peer once every FULL_REPORT_SAMPLES samples (the operator's
   * view of handshakes). Never throws; a sample still running makes this one a no-op.
   */
  async sampleLinks(session: Session, now = Date.now()): Promise<void> {
    const applier = this.#o.applier;
    const state = this.#applied.state;
    if (!applier || !state || this.#sampling || this.#stopped) return;
    this.#sampling = true;
    try {
      const actual = new Map((await applier.actualPeers()).map((p) => [p.publicKey, p]));
      const effective = this.#effectiveState(state);
      const samples = [];
      for (const p of effective.peers) {
        const a = actual.get(p.publicKey);
        if (a) samples.push({ nodeId: p.nodeId, endpoint: p.endpoints[0] ?? null, rxBytes: a.rxBytes, handshakeAt: a.handshakeAt });
      }
      const { changed, probe } = this.#links.sample(samples, now);
      this.#probe(effective, probe);
      const full = ++this.#samples % FULL_REPORT_SAMPLES === 0;
      const report = full ? this.#links.entries(now) : changed;
      if (report.length > 0 && session.state === 'open') {
        for (let i = 0; i < report.length; i += PEER_STATUS_MAX_ENTRIES) session.send('peer.status', { peers: report.slice(i, i + PEER_STATUS_MAX_ENTRIES) });
      }
      for (const c of changed) if (c.state === 'down') this.#log.info({ peer: c.nodeId, endpoint: c.endpoint }, 'nothing received from the peer on its endpoint; reported down');
      if ((changed.length > 0 || full) && this.#o.persist) await writeMeshStatus(this.#o.stateDir, this.status());
    } catch (err) {
      this.#log.warn({ err: describeErr(err) }, 'sampling the WireGuard peers failed');
    } finally {
      this.#sampling = false;
    }
  }

  /** Queues a received event; events are verified, applied and acknowledged strictly in order. */
  receive(message: EventMessage, session: Session): Promise<void> {
    if (this.#stopped) return this.#queue;
    const receivedAt = Date.now();
    this.#queue = this.#queue.then(() => this.#process(message, session, receivedAt)).catch((err: unknown) => {
      this.#log.error({ err: describeErr(err) }, 'event processing failed');
    });
    return this.#queue;
  }

  /**
   * Runs for every event received before close(), even when it runs after: the server sends a revoked
   * node its signed session_revoked and closes with 4401 a turn later, so both arrive together and
   * the agent stops at once; close() drains the queue, so that event is still verified and applied.
   */
  async #process(message: EventMessage, session: Session, receivedAt: number): Promise<void> {
    // Verify the exact bytes received; decode only what verified.
    if (!this.verifier.verify(message.envelope, message.signature, message.keyId)) {
      this.#log.warn({ keyId: message.keyId, bytes: message.envelope.byteLength }, 'event signature does not verify; dropped');
      return;
    }
    let decoded;
    try {
      decoded = decodeEnvelope(message.envelope);
    } catch (err) {
      this.#log.warn({ err: describeErr(err) }, 'event envelope is malformed; dropped');
      return;
    }
    const seq = decoded.known ? decoded.envelope.seq : decoded.seq;
    if (decoded.known) this.#skipped(decoded.skipped, seq);
    if (seq <= this.#applied.lastEventSeq) {
      this.#log.debug({ seq, lastEventSeq: this.#applied.lastEventSeq }, 'event already applied; ignored');
      return;
    }
    const gap = seq > this.#applied.lastEventSeq + 1 && !(decoded.known && decoded.envelope.type === 'node_state_updated');
    if (gap) this.#log.warn({ seq, lastEventSeq: this.#applied.lastEventSeq }, 'event seq gap; reconciling');
    const before = this.#applied.state;
    if (decoded.known) await this.dispatcher.dispatch(decoded.envelope);
    else await this.dispatcher.dispatch({ seq, type: decoded.type, ts: decoded.ts });
    this.#applied = { ...this.#applied, lastEventSeq: seq };
    await this.#commit(before !== this.#applied.state);
    const ack: PayloadOf<'event.ack'> = { seq };
    if (this.#reportKey) {
      ack.wgPublicKey = this.#keys.publicKey;
      this.#reportKey = false;
    }
    if (session.state === 'open') session.send('event.ack', ack);
    if (decoded.known) this.onApplied?.(decoded.envelope, receivedAt);
    if (gap && session.state === 'open') void this.reconcile(session);
  }

  /** Persists the applied state (before the ack, so hello never claims more than was applied). */
  async #commit(stateChanged: boolean): Promise<void> {
    if (stateChanged) await this.#applyDataPlane();
    if (!this.#o.persist) return;
    await writeApplied(this.#o.stateDir, this.#applied);
    await writeMeshStatus(this.#o.stateDir, this.status());
  }

  status(): MeshStatus {
    return statusOf(this.#applied.state, this.#applied.lastEventSeq, this.#keys.publicKey, this.#applied.policyId, {
      mode: this.#o.applier ? 'applied' : 'render-only',
      interface: this.#o.applier?.interfaceName ?? null,
      configPath: join(this.#o.stateDir, WG_CONFIG_FILE),
      lastError: this.#lastError,
    }, this.#skippedPeerEntries, this.#applied.relays, this.#nat, (id) => this.#links.peer(id));
  }

  /** The state WireGuard is given: the applied state with each relayed peer's endpoint replaced by its relay's. */
  #effectiveState(state: MeshState): MeshState {
    if (this.#applied.relays.length === 0) return state;
    const relayOf = new Map(this.#applied.relays.map((r) => [r.peerNodeId, r.endpoint]));
    return { ...state, peers: state.peers.map((p) => (relayOf.has(p.nodeId) ? { ...p, endpoints: [relayOf.get(p.nodeId)!] } : p)) };
  }

  /** Renders the wg-quick file and, with an applier, brings the interface to the state. Returns data-plane drift. */
  async #applyDataPlane(): Promise<DriftItem[]> {
    const applied = this.#applied.state;
    if (!applied || !this.#o.persist) return [];
    const state = this.#effectiveState(applied);
    await writeWgQuick(this.#o.stateDir, state, this.#keys.privateKey, this.#o.listenPort);
    const applier = this.#o.applier;
    if (!applier) return [];
    try {
      await applier.ensureInterface(state.meshIp, state.cidr, this.#keys.privateKey);
      const drift = await applier.syncPeers(state.peers);
      this.#lastError = null;
      return drift;
    } catch (err) {
      this.#lastError = (err as Error).message;
      this.#log.error({ err: describeErr(err) }, 'applying the WireGuard configuration failed');
      return [];
    }
  }

  // ------------------------------------------------------------------ reconciliation

  /**
   * Sends the digest of the applied state; on a mismatch applies the server's full desired state and
   * reports what differed (control-plane drift) plus what the interface had wrong (data-plane drift).
   */
  async reconcile(session: Session): Promise<{ inSync: boolean; drift: DriftItem[] }> {
    if (session.state !== 'open' || this.#stopped) return { inSync: true, drift: [] };
    const mine = this.#applied.state ? stateDigest(this.#applied.state) : undefined;
    let res: PayloadOf<'state.response'>;
    try {
      res = await session.request('state.request', mine ? { digest: mine } : {}, { timeoutMs: 30_000 });
    } catch (err) {
      this.#log.warn({ err: describeErr(err) }, 'reconciliation request failed');
      return { inSync: true, drift: [] };
    }
    let result: { inSync: boolean; drift: DriftItem[] } = { inSync: true, drift: [] };
    // Events sent before the response are queued already: run after them, in the same queue.
    this.#queue = this.#queue.then(async () => {
      result = await this.#reconcileWith(res);
      if (result.drift.length > 0 && session.state === 'open') {
        session.send('drift.report', { ts: Date.now(), items: result.drift.slice(0, 1024).map(clipItem) });
        this.#log.warn({ items: result.drift.length }, 'reconciliation corrected drift');
      }
    });
    await this.#queue;
    return result;
  }

  async #reconcileWith(res: PayloadOf<'state.response'>): Promise<{ inSync: boolean; drift: DriftItem[] }> {
    if (res.inSync || res.snapshot === undefined) {
      // Control plane agrees; check the interface itself.
      const applier = this.#o.applier;
      if (!applier || !this.#applied.state) return { inSync: true, drift: [] };
      const drift = await this.#applyDataPlane();
      return { inSync: drift.length === 0, drift };
    }
    const skipped: SkippedEntry[] = [];
    const snapshot = this.#verifiedSnapshot(res.snapshot, skipped);
    this.#skipped(skipped, null);
    if (!snapshot) return { inSync: true, drift: [] };
    const { seq, digest, state: desired } = snapshot;
    // Events that were in flight when we asked have been applied by now: maybe nothing is wrong.
    if (this.#applied.state && stateDigest(this.#applied.state) === digest) return { inSync: true, drift: [] };
    const drift = diffStates(this.#applied.state, desired);
    this.#applied = { ...this.#applied, state: desired, lastEventSeq: Math.max(this.#applied.lastEventSeq, seq), relays: keepRelaysOf(this.#applied.relays, desired) };
    const plane = await this.#applyDataPlane();
    if (this.#o.persist) {
      await writeApplied(this.#o.stateDir, this.#applied);
      await writeMeshStatus(this.#o.stateDir, this.status());
    }
    return { inSync: false, drift: [...drift, ...plane] };
  }

  /**
   * The snapshot of a state.response, if it may be applied: signed (over the snapshot context) by a
   * trusted key, well-formed, for this node, and not older than what was applied. Otherwise null and
   * the applied state stays: the next reconciliation asks again.
   */
  #verifiedSnapshot(signed: NonNullable<PayloadOf<'state.response'>['snapshot']>, skipped: SkippedEntry[]): Snapshot | null {
    if (!this.verifier.verify(snapshotSigningBytes(signed.bytes), signed.signature, signed.keyId)) {
      this.#log.warn({ keyId: signed.keyId, bytes: signed.bytes.byteLength }, 'state snapshot signature does not verify; ignored');
      return null;
    }
    let snapshot: Snapshot;
    try {
      snapshot = decodeSnapshot(signed.bytes, skipped);
    } catch (err) {
      this.#log.warn({ err: describeErr(err) }, 'state snapshot is malformed; ignored');
      return null;
    }
    const own = this.#applied.state?.nodeId ?? this.#welcomeNodeId;
    if (snapshot.state.nodeId !== snapshot.nodeId || (own !== undefined && snapshot.nodeId !== own)) {
      this.#log.warn({ nodeId: snapshot.nodeId }, 'state snapshot is for another node; ignored');
      return null;
    }
    if (snapshot.seq < this.#applied.lastEventSeq) {
      this.#log.info({ seq: snapshot.seq, lastEventSeq: this.#applied.lastEventSeq }, 'state snapshot is older than the applied events; ignored');
      return null;
    }
    return snapshot;
  }

  /** One bad peer entry costs that peer only: the rest of the event or state applies (contract/mesh-events.ts). */
  #skipped(entries: readonly SkippedEntry[], seq: number | null): void {
    if (entries.length === 0) return;
    this.#skippedPeerEntries += entries.length;
    // Node ids and schema issues only: never the rejected value, which the sender chose.
    for (const e of entries.slice(0, 10)) this.#log.warn({ seq, where: e.where, peer: e.nodeId, issue: e.issue }, 'invalid peer entry skipped');
    if (entries.length > 10) this.#log.warn({ seq, more: entries.length - 10 }, 'more invalid peer entries skipped');
  }

  // ------------------------------------------------------------------ built-in handlers

  #setState(state: MeshState): void {
    this.#applied = { ...this.#applied, state };
  }

  #peers(fn: (peers: Map<string, PeerInfo>) => void): void {
    const s = this.#applied.state;
    if (!s) {
      this.#log.warn('peer event before any state snapshot; reconciliation will repair');
      return;
    }
    const map = new Map(s.peers.map((p) => [p.nodeId, { ...p }]));
    fn(map);
    this.#setState({ ...s, peers: [...map.values()].sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1)) });
  }

  #registerBuiltins(): void {
    const d = this.dispatcher;
    d.on('node_state_updated', (e) => {
      this.#setState(e.payload.state);
      this.#applied = { ...this.#applied, relays: keepRelaysOf(this.#applied.relays, e.payload.state) };
    });
    d.on('peer_added', (e) => this.#peers((m) => e.payload.peers.forEach((p) => m.set(p.nodeId, p))));
    d.on('peer_removed', (e) => {
      this.#peers((m) => e.payload.nodeIds.forEach((id) => m.delete(id)));
      const gone = new Set(e.payload.nodeIds);
      this.#applied = { ...this.#applied, relays: this.#applied.relays.filter((r) => !gone.has(r.peerNodeId)) };
    });
    // A relay session replaces the peer's endpoint (for WireGuard only: the state and its digest keep
    // the peer's own endpoints) until the revoke that names the same session; a revoke of an older
    // session, arriving after a newer assignment, changes nothing.
    d.on('relay_session_assigned', (e) => {
      const { peerNodeId, sessionId, endpoint } = e.payload;
      this.#applied = { ...this.#applied, relays: [...this.#applied.relays.filter((r) => r.peerNodeId !== peerNodeId), { peerNodeId, sessionId, endpoint }] };
      this.#touchState();
      this.#log.info({ peer: peerNodeId, sessionId, endpoint }, 'peer relayed');
    });
    d.on('relay_session_revoked', (e) => {
      const { peerNodeId, sessionId } = e.payload;
      const current = this.#applied.relays.find((r) => r.peerNodeId === peerNodeId);
      if (!current || current.sessionId !== sessionId) {
        this.#log.debug({ peer: peerNodeId, sessionId }, 'relay revoke for a session not in force; ignored');
        return;
      }
      this.#applied = { ...this.#applied, relays: this.#applied.relays.filter((r) => r !== current) };
      this.#touchState();
      this.#log.info({ peer: peerNodeId, sessionId, reason: e.payload.reason }, 'peer relay revoked; its own endpoints apply');
    });
    d.on('peer_key_rotated', (e) =>
      this.#peers((m) =>
        e.payload.peers.forEach((p) => {
          const peer = m.get(p.nodeId);
          if (peer) peer.publicKey = p.publicKey;
        }),
      ),
    );
    d.on('peer_endpoint_changed', (e) =>
      this.#peers((m) =>
        e.payload.peers.forEach((p) => {
          const peer = m.get(p.nodeId);
          if (!peer) return;
          peer.endpoints = p.endpoints;
          // The path travels with the endpoints it chose (server/mesh/path.ts).
          if (p.path !== undefined) peer.path = p.path;
        }),
      ),
    );
    d.on('policy_updated', (e) => {
      this.#applied = { ...this.#applied, policyId: e.payload.policyId };
      this.#log.info({ policyId: e.payload.policyId }, 'policy updated');
    });
    d.on('rotate_keys', async (e) => {
      const next = generateWgKeyPair();
      if (this.#o.persist) await saveWgKey(this.#o.stateDir, next.privateKey);
      this.#keys = next;
      this.#reportKey = true;
      // The interface takes the new key at once (ensureInterface compares keys).
      if (this.#applied.state) this.#applied = { ...this.#applied, state: { ...this.#applied.state } };
      this.#log.info({ reason: e.payload.reason, publicKey: next.publicKey }, 'WireGuard key rotated');
    });
    d.on('signing_key_rotated', (e) => {
      this.verifier.rotate({ keyId: e.payload.keyId, publicKey: e.payload.publicKey }, e.payload.transitionMs);
      this.#applied = { ...this.#applied, trustedKeys: this.#trustedForFile() };
      this.#log.info({ keyId: e.payload.keyId }, 'event-signing key rotated');
    });
    d.on('node_secrets_updated', (e) => this.#log.info({ keys: e.payload.keys }, 'node secrets updated (no secret store on this agent yet)'));
    d.on('action_request', (e) => this.#log.info({ action: e.payload.action }, 'action requested by event (actions run over action.request streams)'));
    d.on('session_revoked', (e) => this.#log.warn({ reason: e.payload.reason, sessionId: e.payload.sessionId }, 'session revoked'));
  }

  /** Marks the state changed so that the event's commit re-applies the data plane. */
  #touchState(): void {
    if (this.#applied.state) this.#applied = { ...this.#applied, state: { ...this.#applied.state } };
  }

  #trustedForFile(): AppliedFile['trustedKeys'] {
    return this.verifier.keys.slice(-8).map((k) => ({ keyId: k.keyId, publicKey: Buffer.from(k.publicKey).toString('base64'), until: k.until }));
  }

  async close(): Promise<void> {
    this.#stopped = true;
    this.#clearTimer();
    if (this.#probeSocket) closeQuietly(this.#probeSocket.socket);
    this.#probeSocket = null;
    await this.#queue;
    await this.#o.applier?.close();
  }
}

/** What a probe sends, and where (RFC 863's discard port: nothing listens there, nothing is expected back). */
const PROBE_DATAGRAM = Buffer.from([0]);
const DISCARD_PORT = 9;

/** Every this many link samples, all peers are reported, not only the changed ones (once a minute). */
const FULL_REPORT_SAMPLES = 12;

/** The relay sessions whose peer is still in the state (a snapshot drops the others). */
function keepRelaysOf(relays: AppliedFile['relays'], state: MeshState): AppliedFile['relays'] {
  if (relays.length === 0) return relays;
  const present = new Set(state.peers.map((p) => p.nodeId));
  return relays.filter((r) => present.has(r.peerNodeId));
}

/** Field-level differences between the applied and the desired state, for drift.report. */
export function diffStates(applied: MeshState | null, desired: MeshState): DriftItem[] {
  const items: DriftItem[] = [];
  if (!applied) return [{ field: 'state', expected: `${desired.meshIp} with ${desired.peers.length} peers`, actual: 'none' }];
  if (applied.meshIp !== desired.meshIp) items.push({ field: 'meshIp', expected: desired.meshIp, actual: applied.meshIp });
  if (applied.cidr !== desired.cidr) items.push({ field: 'cidr', expected: desired.cidr, actual: applied.cidr });
  const mine = new Map(applied.peers.map((p) => [p.nodeId, p]));
  for (const p of desired.peers) {
    const a = mine.get(p.nodeId);
    mine.delete(p.nodeId);
    if (!a) items.push({ field: `peers.${p.nodeId}`, expected: 'present', actual: 'absent' });
    else {
      if (a.publicKey !== p.publicKey) items.push({ field: `peers.${p.nodeId}.publicKey`, expected: p.publicKey, actual: a.publicKey });
      if (a.meshIp !== p.meshIp) items.push({ field: `peers.${p.nodeId}.meshIp`, expected: p.meshIp, actual: a.meshIp });
      if (a.endpoints.join(',') !== p.endpoints.join(',')) items.push({ field: `peers.${p.nodeId}.endpoints`, expected: p.endpoints.join(','), actual: a.endpoints.join(',') });
      if ((a.path ?? null) !== (p.path ?? null)) items.push({ field: `peers.${p.nodeId}.path`, expected: p.path ?? '-', actual: a.path ?? '-' });
      // Never put a PSK in a report: say only that it differed.
      if (a.psk !== p.psk) items.push({ field: `peers.${p.nodeId}.psk`, expected: '(server value)', actual: '(different)' });
    }
  }
  for (const id of mine.keys()) items.push({ field: `peers.${id}`, expected: 'absent', actual: 'present' });
  return items;
}

function clipItem(i: DriftItem): DriftItem {
  return { field: i.field.slice(0, 1024), ...(i.expected !== undefined ? { expected: i.expected.slice(0, 4096) } : {}), ...(i.actual !== undefined ? { actual: i.actual.slice(0, 4096) } : {}) };
}

/** Closes a datagram socket that may already be closed (a failed bind). */
function closeQuietly(socket: Socket): void {
  try {
    socket.close();
  } catch {
    // already closed
  }
}

function formatEndpoint(address: string, port: number): string {
  return isIP(address) === 6 ? `[${address}]:${port}` : `${address}:${port}`;
}

function describeErr(err: unknown): { message: string; code?: string } {
  if (err instanceof Error) return { message: err.message, ...((err as { code?: string }).code ? { code: (err as { code?: string }).code } : {}) };
  return { message: String(err) };
}
