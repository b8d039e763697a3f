import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { MeshlinkError } from '../../errors.js';
import type { AgentHandle } from '../agent-sessions.js';
import type { PayloadOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import { EVENT_PAYLOAD_SCHEMAS, encodeSnapshot, natReportSchema, peerLinkSchema, selfReportSchema, type PeerLink, snapshotSigningBytes, stateDigest, type EventPayload, type EventType, type MeshState, type NatReport, type SelfReport } from '../../contract/mesh-events.js';
import { zodErrorText } from '../../util/zod-error.js';
import { MeshStore } from './store.js';
import type { Store } from '../store/store.js';
import { intToIp, parseMeshRange, type MeshRange } from './addresses.js';
import { EventDelivery, type DeliverySessions } from './delivery.js';
import { desiredState, viewChange, type PolicyAnnouncement } from './desired-state.js';
import { EventLog, type Outgoing } from './event-log.js';
import { MeshFeed, type FeedEntry } from './feed.js';
import { MeshModel } from './model.js';
import { validatePolicy, type Policy } from '../../admin-api/policy.js';
import { policyId } from './policy.js';
import { choosePath, pairsByPath, type RelayPair } from './path.js';
import type { PathContext, PathHealth, PeerLinkReport } from './path-health.js';
import { SecretBox } from './secret-box.js';
import type { SealingSecret } from '../ca-key-crypto.js';
import { generateSigningKey, signBytes, signingKeyFromPkcs8, type SigningKey } from './signer.js';

import { TokenBuckets } from '../../util/token-bucket.js';
import { isHostAddress } from '../../util/public-ip.js';
import { normalizeIp } from './relay.js';
import { z } from 'zod';

export type { DeliverySessions } from './delivery.js';

/** What switching needs from outside the mesh (presence and the session layer's heartbeat). */
export type SwitchingContext = Pick<PathContext, 'onlineSince' | 'lastHeard' | 'heartbeatIntervalMs'>;

/** An agent reconciles once a minute (and after a gap); 6 a minute leaves room for reconnects. */
export const DRIFT_REPORTS_PER_MINUTE = 6;
/**
 * An agent sends a `peer.status` when a peer's state changes and a full one a minute (1,024 peers a
 * message): 30 a minute leaves room for a mesh of thousands of peers and for flapping, not for a flood.
 */
export const PEER_STATUS_PER_MINUTE = 30;
export type { FeedEntry } from './feed.js';

/**
 * The mesh control plane: desired state per node (address, permitted peers with keys, endpoints and
 * PSKs), turned into signed, per-node sequenced events by diffing against what each node was already
 * told. Every change (policy, tags, a node joining or leaving, a key or endpoint report) runs the same
 * `recompute`, so "exactly the affected nodes get events" holds by construction: a node whose view
 * did not change gets nothing.
 *
 * The jobs live in their own modules: model.ts (nodes, membership, PSKs), desired-state.ts (the pure
 * state and diff), event-log.ts (seq, seal, sign, retain), delivery.ts (sessions, backpressure),
 * feed.ts (the operator feed). This class keeps the order in which things happen (`#inTurn`,
 * `#inOrder`) and the operator API.
 *
 * The store is async (on PostgreSQL every query is a round trip), so work that appends events, or
 * reads the log to send it, runs in `#inOrder`: one at a time, in call order. That keeps what the
 * synchronous store gave for free: a node's seqs are committed and sent in order, a replay's read
 * and sends see no live event slip between them, and a sweep never allocates one node twice.
 */

export interface MeshOptions {
  /** Mesh range (default MESHLINK_MESH_CIDR, else 10.100.0.0/16). */
  cidr?: string;
  /** What seals the mesh master key: the CA's (the feature passes ctx.sealing; key-file.ts). */
  sealing?: SealingSecret;
  /** Events kept per node for replay; older gaps get a snapshot (default 256). */
  retainEvents?: number;
  /** How long agents keep accepting the previous signing key after a rotation (default 24 h). */
  signingTransitionMs?: number;
  /** Feed rows kept for `events tail` (default 10,000). */
  feedRetain?: number;
}

const SETTING_POLICY = 'policy';
const SETTING_CIDR = 'cidr';
const SETTING_PREVIOUS_KEY_UNTIL = 'previous_signing_key_until';
/** Relay sessions assigned and not yet revoked (a JSON array of {sessionId, a, b}): revoked after a restart. */
const SETTING_RELAY_SESSIONS = 'relay_sessions';
export const SETTING_RELAY_SESSIONS_KEY = SETTING_RELAY_SESSIONS;
/** A held session; `endpoints`: the relay endpoint each of a and b sends to (`server nodes show`). */
export const heldRelaySchema = z
  .array(z.object({ sessionId: z.string().min(1).max(64), a: z.string().min(1).max(128), b: z.string().min(1).max(128), endpoints: z.tuple([z.string().max(300), z.string().max(300)]).optional() }))
  .max(100_000);
export type HeldRelaySession = z.infer<typeof heldRelaySchema>[number];

/**
 * Nodes whose events are persisted (one transaction) and sent per batch of a recompute. Between batches
 * the event loop runs, so sockets write out the first batches while later ones are still being signed:
 * a policy change that touches 1,000 nodes reaches the first of them after one batch, not after all.
 */
const DELIVERY_BATCH_NODES = 64;
const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** What a recompute has to look at (see `recompute`). */
export interface RecomputeScope {
  /**
   * Only these nodes' own facts (WireGuard key, endpoints, observed address) changed. Who may talk to
   * whom did not, so only they and their permitted peers can see a difference, each peer only in
   * its entries for them, and the O(n²) policy evaluation is skipped.
   */
  changedNodes?: ReadonlySet<string>;
}

/** zod's Uint8Array is over an ArrayBuffer; Buffers from node:crypto and the codec are. */
const bin = (b: Uint8Array): Uint8Array<ArrayBuffer> => b as Uint8Array<ArrayBuffer>;
const sameList = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
const sameNat = (a: NatReport | null, b: NatReport | null): boolean => a === b || (a !== null && b !== null && a.mapping === b.mapping && a.reflexive === b.reflexive);

/** The mesh settings the constructor takes (read by `open`). */
interface StoredSettings {
  policy: string | undefined;
  previousKeyUntil: string | undefined;
  relaySessions: string | undefined;
}

/** A relay member: its node and the relay endpoint (HOST:PORT) it sends to. */
export interface RelayMemberEndpoint {
  nodeId: string;
  endpoint: string;
}

export class MeshService {
  readonly range: MeshRange;
  readonly #db: MeshStore;
  readonly #box: SecretBox;
  readonly #log: Logger;
  readonly #opts: Required<Omit<MeshOptions, 'cidr' | 'sealing'>>;
  readonly #model: MeshModel;
  readonly #feed: MeshFeed;
  /** Drift reports per node (see drift()); full buckets are evicted first, so the table stays small. */
  readonly #driftRate = new TokenBuckets({ perMinute: DRIFT_REPORTS_PER_MINUTE, maxEntries: 100_000 });
  readonly #peerStatusRate = new TokenBuckets({ perMinute: PEER_STATUS_PER_MINUTE, maxEntries: 100_000 });
  readonly #peerStatusWarned = new TokenBuckets({ perMinute: 1, maxEntries: 100_000 });
  /** Switching between direct and relay on the agents' reports; null while no relay runs. */
  #health: { health: PathHealth; context: SwitchingContext } | null = null;
  readonly #events: EventLog;
  readonly #delivery: EventDelivery;
  #policy: Policy | null;
  #signing: SigningKey[];
  #previousKeyUntil: number;
  /** Recomputes run one at a time, in call order (each yields between its delivery batches). */
  #serial: Promise<unknown> = Promise.resolve();
  /**
   * The store work that must not interleave (see the class comment): each appending transaction with
   * the delivery of its events, each replay, each sweep, each WireGuard report's write. A step never
   * waits for another step or for a recompute's turn (that would wait for itself).
   */
  #writes: Promise<unknown> = Promise.resolve();
  /** The sweep queued in #writes and not yet started: callers meanwhile share it. */
  #sweepQueued: Promise<{ recomputed: Promise<void> }> | null = null;
  /** Set by a policy or tag change; the next full recompute sends policy_updated with its changes. */
  #policyDirty = false;
  /**
   * Nodes whose own facts changed since the queued recompute for them was scheduled. A burst of
   * connects (a fleet joining, a restart) is coalesced into one recompute: a peer learns of the k
   * nodes that joined meanwhile in one peer_added, not in k signed events.
   */
  #changed = new Set<string>();
  #changedRun: Promise<string[]> | null = null;
  /**
   * Nodes a sweep brought in (enrolled) whose permitted pairs the queued #changedRun adds first. A
   * join changes nobody's tags and not the policy, so it needs no full recompute: the joined nodes and
   * their permitted peers are checked like nodes whose own facts changed (O(joined × n), not O(n²):
   * during an enrollment burst into a mesh of 600 nodes, the full recompute at every sweep took more
   * of the server's time than the enrollments' certificate signatures, bench:enroll profile).
   */
  #joined = new Set<string>();
  /** Nodes the running recompute has yet to reach: their events are still to come (see stateFor). */
  readonly #pending = new Set<string>();
  /** Relay sessions in force by id (persisted in SETTING_RELAY_SESSIONS with their events). */
  #relayHeld = new Map<string, HeldRelaySession>();
  readonly #recomputed = new Set<() => void>();
  /** pairPaths() as of the model's pathsVersion. */
  #pairPaths: { version: number; direct: number; relay: readonly RelayPair[] } | null = null;
  #closed = false;

  private constructor(db: MeshStore, box: SecretBox, range: MeshRange, signing: SigningKey[], logger: Logger, options: MeshOptions, stored: StoredSettings) {
    this.#db = db;
    this.#box = box;
    this.range = range;
    this.#signing = signing;
    this.#log = logger.child({ component: 'mesh' });
    this.#opts = {
      retainEvents: options.retainEvents ?? 256,
      signingTransitionMs: options.signingTransitionMs ?? 86_400_000,
      feedRetain: options.feedRetain ?? 10_000,
    };
    this.#model = new MeshModel(db, box, range, this.#log);
    this.#feed = new MeshFeed(db, this.#opts.feedRetain);
    this.#events = new EventLog(db, box, () => this.#signing[this.#signing.length - 1]!, this.#opts.retainEvents, this.#feed);
    this.#delivery = new EventDelivery(this.#events, this.#log, (work) => this.#inOrder(work));
    this.#policy = stored.policy === undefined ? null : validatePolicy(JSON.parse(stored.policy));
    this.#previousKeyUntil = Number(stored.previousKeyUntil ?? 0);
    const held = stored.relaySessions;
    if (held !== undefined) {
      let parsed: ReturnType<typeof heldRelaySchema.safeParse> | null = null;
      try {
        parsed = heldRelaySchema.safeParse(JSON.parse(held));
      } catch {
        parsed = null;
      }
      if (parsed?.success) for (const h of parsed.data) this.#relayHeld.set(h.sessionId, h);
      else this.#log.warn('the stored relay sessions do not parse; none are revoked at this start');
    }
  }

  /** Opens the mesh state of a store: master key, signing key, range, model; then one recompute. */
  static async open(store: Store, logger: Logger, options: MeshOptions = {}): Promise<MeshService> {
    const db = new MeshStore(store.database);
    const sealing = options.sealing;
    if (!sealing) throw new MeshlinkError('ML_ERR_INTERNAL', 'the mesh needs the server key file to seal its secrets (options.sealing)');
    let box: SecretBox;
    const master = await db.getMaster();
    if (master) {
      const opened = await SecretBox.openMaster(master.blob, master.salt, sealing, resolve(store.path));
      // Sealed by an earlier release with the store's path: from now on only the key file opens it.
      if (opened.resealed) await db.replaceMaster(master.blob, opened.resealed.blob, opened.resealed.salt);
      box = opened.box;
    } else {
      const created = await SecretBox.createMaster(sealing);
      await db.insertMaster(created.blob, created.salt);
      box = created.box;
    }
    const signing = (await db.signingKeys()).map((k) => signingKeyFromPkcs8(box.open(k.sealedPkcs8, `signing:${k.keyId}`), k.createdAt));
    if (signing.length === 0) {
      const k = generateSigningKey();
      await db.insertSigningKey(k.keyId, k.publicKey, box.seal(k.pkcs8, `signing:${k.keyId}`), k.createdAt);
      signing.push(k);
    }
    const range = parseMeshRange(options.cidr ?? process.env.MESHLINK_MESH_CIDR ?? (await db.getSetting(SETTING_CIDR)) ?? '10.100.0.0/16');
    const stored: StoredSettings = {
      policy: await db.getSetting(SETTING_POLICY),
      previousKeyUntil: await db.getSetting(SETTING_PREVIOUS_KEY_UNTIL),
      relaySessions: await db.getSetting(SETTING_RELAY_SESSIONS),
    };
    const service = new MeshService(db, box, range, signing, logger, options, stored);
    await service.#model.load();
    await db.setSetting(SETTING_CIDR, range.cidr);
    await service.sweep();
    await service.recompute();
    return service;
  }

  /** The sessions facade events are delivered through (the server's AgentSessions; tests' stand-ins). */
  setDelivery(sessions: DeliverySessions): void {
    this.#delivery.setSessions(sessions);
  }

  // ------------------------------------------------------------------ membership

  /**
   * Brings the model in line with the node table: live nodes without an address get one (enrollment),
   * removed nodes lose theirs (freed) with their PSKs and event log. Returns true when something
   * changed; the caller recomputes.
   */
  async sweep(): Promise<boolean> {
    return (await this.#inOrder(() => this.#model.sweep())) !== null;
  }

  // ------------------------------------------------------------------ desired state and events

  /** The full desired state of a node: only permitted peers that have reported a WireGuard key. */
  desiredState(nodeId: string): MeshState | null {
    return desiredState(this.#model, nodeId);
  }

  /**
   * Recomputes the nodes' views and emits the differences as events. Resolves with the ids of the
   * nodes that got events.
   *
   * Recomputes are serialised (a second call waits for the first), because one spans several turns of
   * the event loop: nodes are handled in batches of DELIVERY_BATCH_NODES, each batch's events appended
   * and the node's announced view updated in one transaction, then sent, then the loop yields. Events
   * are therefore never sent before they are durable, and a crash between batches leaves every node
   * either fully updated or not at all (the next start's recompute sends the rest). Calls that touch
   * nodes between batches (replay, publish, sweep) each keep a node's seq and announced view
   * consistent on their own; a later batch diffs against whatever the node was told by then.
   */
  recompute(scope: RecomputeScope = {}): Promise<string[]> {
    return this.#inTurn(() => this.#recomputeNow(scope));
  }

  /**
   * Runs `work` after the store work queued before it in #writes, and before any queued after it
   * (see the class comment). `work` must not wait for #inOrder or #inTurn work queued after it.
   */
  #inOrder<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#writes.then(work);
    this.#writes = run.catch(() => undefined);
    return run;
  }

  /**
   * Inside #inOrder: runs `fn` in one transaction (it appends to `outgoing` through `tx`), then
   * `committed` (memory that must change only with the commit), then delivers the events. Events are
   * never sent before they are durable.
   */
  async #commitAndDeliver(fn: (tx: MeshStore, outgoing: Outgoing[]) => Promise<void>, committed?: () => void): Promise<Outgoing[]> {
    const outgoing: Outgoing[] = [];
    await this.#db.transaction((tx) => fn(tx, outgoing));
    committed?.();
    await this.#deliver(outgoing);
    return outgoing;
  }

  /** Runs `work` after every recompute queued before it (and before any queued after it). */
  #inTurn<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(() => {
      if (this.#closed) throw new MeshlinkError('ML_ERR_MESH_CLOSED', 'the mesh service is shutting down');
      return work();
    });
    this.#serial = run.catch(() => undefined);
    return run;
  }

  async #recomputeNow(scope: RecomputeScope): Promise<string[]> {
    const now = Date.now();
    const model = this.#model;
    // Each target: a node, and the peers its view is checked for (null: all of its peers).
    let targets: Array<[string, Set<string> | null]>;
    let policy: PolicyAnnouncement | null = null;
    if (scope.changedNodes === undefined) {
      model.permit(this.#policy);
      if (this.#policyDirty) policy = { policyId: policyId(this.#policy), rules: this.#policy?.rules ?? null };
      await this.#inOrder(() => this.#db.transaction((tx) => model.syncPsks(tx, now)));
      targets = [...model.nodes.keys()].map((id) => [id, null]);
    } else {
      const changed = scope.changedNodes;
      await this.#inOrder(() => this.#db.transaction((tx) => model.syncPsks(tx, now, changed)));
      const about = new Map<string, Set<string> | null>();
      for (const id of changed) about.set(id, null);
      for (const id of changed) {
        for (const peer of model.permitted.get(id) ?? []) {
          if (about.get(peer) === null) continue; // checked in full anyway
          let set = about.get(peer);
          if (!set) about.set(peer, (set = new Set()));
          set.add(id);
        }
      }
      targets = [...about];
    }
    const affected: string[] = [];
    for (const [id] of targets) this.#pending.add(id);
    try {
      for (let i = 0; i < targets.length; i += DELIVERY_BATCH_NODES) {
        if (i > 0) await yieldToEventLoop();
        if (this.#closed) throw new MeshlinkError('ML_ERR_MESH_CLOSED', 'the mesh service shut down during a recompute');
        const batch = targets.slice(i, i + DELIVERY_BATCH_NODES);
        await this.#inOrder(() =>
          this.#commitAndDeliver(
            async (tx, outgoing) => {
              for (const [id, about] of batch) {
                const node = model.nodes.get(id);
                if (!node) continue; // removed by a sweep while an earlier batch was out
                const change = viewChange(model, id, node.announced, about, policy);
                if (change === null) continue;
                affected.push(id);
                for (const [type, payload] of change.events) outgoing.push(await this.#events.append(tx, node, type, payload, now));
                await model.recordView(tx, node, change);
              }
            },
            () => {
              for (const [id] of batch) this.#pending.delete(id);
            },
          ),
        );
      }
      // Only a full recompute that reached every node has told them all of the policy change.
      if (scope.changedNodes === undefined) this.#policyDirty = false;
      for (const listener of this.#recomputed) listener();
    } catch (err) {
      // What this run did not reach is redone by the next one: the nodes whose own facts changed go
      // back into the coalescing set (a full recompute keeps #policyDirty set).
      if (scope.changedNodes !== undefined) for (const id of scope.changedNodes) this.#changed.add(id);
      throw err;
    } finally {
      for (const [id] of targets) this.#pending.delete(id);
    }
    return affected;
  }

  /**
   * Calls `listener` after every recompute that finished (the relay assigner: a pair's path, a member's
   * addresses, membership or policy may have changed), and when switching moved a pair. Returns the
   * unsubscribe.
   */
  onRecomputed(listener: () => void): () => void {
    this.#recomputed.add(listener);
    return () => this.#recomputed.delete(listener);
  }

  /**
   * Sweeps and, when membership changed, recomputes; errors are logged (for timers and events).
   * Resolves when the recompute is done.
   */
  async sweepAndRecompute(): Promise<void> {
    await (await this.#sweepAndSchedule()).recomputed;
  }

  /**
   * Sweeps (in #inOrder; callers while one is queued share it) and schedules the recompute that
   * follows; resolves once the model holds the sweep's result, with the recompute's promise.
   */
  #sweepAndSchedule(): Promise<{ recomputed: Promise<void> }> {
    const none = { recomputed: Promise.resolve() };
    if (this.#closed) return Promise.resolve(none);
    this.#sweepQueued ??= this.#inOrder(async () => {
      this.#sweepQueued = null;
      let swept: { added: string[]; removed: string[] } | null;
      try {
        swept = await this.#model.sweep();
      } catch (err) {
        this.#log.error({ err }, 'mesh sweep failed');
        return none;
      }
      if (swept === null) return none;
      // A node leaving drops pairs and PSKs everywhere: the full recompute; so does a policy change not
      // yet told to every node (its recompute failed: this one retries it). Nodes joining only add pairs.
      // Not awaited here: a recompute's batches queue behind this step.
      if (this.#health !== null && swept.removed.length > 0) {
        for (const id of swept.removed) this.#health.health.forget(id);
        this.#model.forcedRelay = new Set(this.#health.health.forced);
      }
      if (swept.removed.length > 0 || this.#policyDirty) return { recomputed: this.#background(this.recompute()) };
      for (const id of swept.added) this.#joined.add(id);
      return { recomputed: this.#background(this.#nodesChanged(swept.added)) };
    });
    return this.#sweepQueued;
  }

  #background(work: Promise<unknown>): Promise<void> {
    return work.then(
      () => undefined,
      (err: unknown) => {
        if (err instanceof MeshlinkError && err.code === 'ML_ERR_MESH_CLOSED') this.#log.debug('mesh recompute skipped: shutting down');
        else this.#log.error({ err }, 'mesh recompute failed');
      },
    );
  }

  /** Appends and delivers one event of any type to one node (operations features may use this); its seq. */
  publish<T extends EventType>(nodeId: string, type: T, payload: EventPayload<T>): Promise<number> {
    return this.#inOrder(async () => {
      const node = this.#model.nodes.get(nodeId);
      if (!node) throw new MeshlinkError('ML_ERR_MESH_TAG', `node ${nodeId} is not in the mesh`);
      const [out] = await this.#commitAndDeliver(async (tx, outgoing) => {
        outgoing.push(await this.#events.append(tx, node, type, payload, Date.now()));
        await this.#model.saveSeq(tx, node);
      });
      return out!.event.seq;
    });
  }

  /**
   * Appends and delivers one event to every node in the mesh (each under its own seq, so a node that is
   * offline gets it by replay). Batched like a recompute: one transaction per DELIVERY_BATCH_NODES
   * nodes, sent, then the event loop runs. Resolves with the number of nodes.
   */
  publishAll<T extends EventType>(type: T, payload: EventPayload<T>): Promise<number> {
    return this.#inTurn(async () => {
      const ids = [...this.#model.nodes.keys()];
      const now = Date.now(); // one ts for all: when it was published, whichever batch carries it
      for (let i = 0; i < ids.length; i += DELIVERY_BATCH_NODES) {
        if (i > 0) await yieldToEventLoop();
        if (this.#closed) throw new MeshlinkError('ML_ERR_MESH_CLOSED', 'the mesh service shut down during a publish');
        await this.#inOrder(() =>
          this.#commitAndDeliver(async (tx, outgoing) => {
            for (const id of ids.slice(i, i + DELIVERY_BATCH_NODES)) {
              const node = this.#model.nodes.get(id);
              if (!node) continue;
              outgoing.push(await this.#events.append(tx, node, type, payload, now));
              await this.#model.saveSeq(tx, node);
            }
          }),
        );
      }
      return ids.length;
    });
  }

  /**
   * Sends appended events and wakes feed readers, then prunes the feed (here, outside a transaction;
   * after the sends, so that pruning never delays them).
   */
  async #deliver(outgoing: Outgoing[]): Promise<void> {
    this.#delivery.deliver(outgoing);
    if (outgoing.length > 0) this.#feed.wake();
    await this.#feed.pruneIfDue();
  }

  // ------------------------------------------------------------------ agent sessions

  /**
   * Checks what a node reports about itself (`hello`, `event.ack`) before anything is stored: the
   * values must pass the schemas its peers apply to the peer entries built from them
   * (ML_ERR_BAD_PAYLOAD), and the WireGuard key must not be another live node's
   * (ML_ERR_MESH_KEY_IN_USE). The caller refuses the message with the thrown error.
   */
  checkSelfReport(nodeId: string, report: SelfReport, where: 'hello' | 'event.ack'): void {
    const parsed = selfReportSchema.safeParse(report);
    if (!parsed.success) throw new MeshlinkError('ML_ERR_BAD_PAYLOAD', `${where}: ${zodErrorText(parsed.error)}`);
    const key = parsed.data.wgPublicKey;
    const owner = key === undefined ? undefined : this.#model.keyOwner(key);
    if (owner !== undefined && owner !== nodeId) throw new MeshlinkError('ML_ERR_MESH_KEY_IN_USE', `${where}: the WireGuard key is another node's`);
  }

  /** The live node that holds a WireGuard key (for the report of a refused claim). */
  keyOwner(publicKey: string): string | undefined {
    return this.#model.keyOwner(publicKey);
  }

  /**
   * A session opened: record the WireGuard key and endpoints it reported (checked in its hello by
   * checkSelfReport; a key claimed in the meantime by another session rejects with
   * ML_ERR_MESH_KEY_IN_USE). Resolves when the events that follow from it are sent (errors of the
   * recompute are logged, never thrown: this runs on every connect).
   */
  agentOpened(nodeId: string, hello: PayloadOf<'hello'>, remoteAddress: string | null): Promise<void> {
    return this.helloReceived(nodeId, hello, remoteAddress).then((r) => r.sent);
  }

  /**
   * agentOpened in two steps, for the feature's per-session order: resolves once the node is in the
   * model and its report is stored, with `sent` for the events that follow (errors logged).
   */
  async helloReceived(nodeId: string, hello: PayloadOf<'hello'>, remoteAddress: string | null): Promise<{ sent: Promise<void> }> {
    // A node the model does not know yet has just enrolled: bring it in now rather than at the next
    // periodic sweep. A known node needs no sweep (its queries scan the node table: O(n) per connect
    // would be O(n²) in a reconnect storm).
    const membership = this.#model.nodes.has(nodeId) ? Promise.resolve() : (await this.#sweepAndSchedule()).recomputed;
    const node = this.#model.nodes.get(nodeId);
    if (!node) return { sent: membership };
    const key = hello.wgPublicKey ?? node.publicKey;
    const endpoints = hello.endpoints ?? node.endpoints;
    // The NAT report of this hello (checked by checkSelfReport); a hello without one says the node did
    // not probe (path.ts). The connection's remote address is kept for the operator only: it is the
    // NAT's address for TCP, never a UDP endpoint.
    const nat = hello.nat === undefined ? null : natReportSchema.parse(hello.nat);
    if (key === node.publicKey && sameList(endpoints, node.endpoints) && remoteAddress === node.observedAddr && sameNat(nat, node.nat)) return { sent: membership };
    this.#model.updateWg(node, key, endpoints, remoteAddress, nat);
    await this.#inOrder(() => this.#model.persistWg(node));
    return { sent: this.#background(this.#nodeChanged(nodeId)) };
  }

  /** Queues a recompute for a node whose own facts changed, coalesced with others (see #changed). */
  #nodeChanged(nodeId: string): Promise<string[]> {
    return this.#nodesChanged([nodeId]);
  }

  #nodesChanged(nodeIds: readonly string[]): Promise<string[]> {
    for (const id of nodeIds) this.#changed.add(id);
    this.#changedRun ??= this.#inTurn(() => {
      const changedNodes = this.#changed;
      this.#changed = new Set();
      this.#changedRun = null;
      const joined = this.#joined;
      this.#joined = new Set();
      if (joined.size > 0) this.#model.permitJoined(this.#policy, joined);
      return this.#recomputeNow({ changedNodes });
    });
    return this.#changedRun;
  }

  /**
   * The agent's first state.request on a session: replay what it missed since `lastEventSeq` (or a
   * snapshot when that reaches past what is retained), then deliver live events on this session.
   * Replay waits for this request because the agent attaches its handlers only once it is connected.
   * Runs in #inOrder: the session turns ready, the log is read and sent with no live event between.
   */
  replay(agent: AgentHandle, lastEventSeq: number): Promise<void> {
    return this.#inOrder(async () => {
      const nodeId = agent.nodeId;
      const node = this.#model.nodes.get(nodeId);
      if (!node || !this.#delivery.markReady(agent)) return;
      if (lastEventSeq === node.lastSeq) return;
      const oldest = await this.#events.oldestSeq(nodeId);
      if (lastEventSeq < node.lastSeq && oldest !== null && oldest <= lastEventSeq + 1) {
        const events = await this.#events.after(nodeId, lastEventSeq);
        this.#delivery.sendStored(agent, events);
        this.#log.debug({ nodeId, from: lastEventSeq, events: events.length }, 'replayed missed events');
        return;
      }
      // Past retention, or the agent is ahead of us (store restored from a backup): a snapshot with a
      // seq above anything the agent has seen.
      if (lastEventSeq > node.lastSeq) node.lastSeq = lastEventSeq;
      const desired = this.desiredState(nodeId)!;
      await this.#commitAndDeliver(async (tx, outgoing) => {
        outgoing.push(await this.#events.append(tx, node, 'node_state_updated', { state: desired }, Date.now()));
        await this.#model.recordView(tx, node, { events: [], snapshot: desired, upserts: [], removed: [] });
      });
      this.#log.info({ nodeId, lastEventSeq, oldestRetained: oldest }, 'sent a state snapshot (gap past retention)');
    });
  }

  /**
   * Reconciliation: in sync, or the full desired state with the seq it corresponds to, as a snapshot
   * signed with the current event-signing key (contract/mesh-events.ts: the agent applies nothing
   * unsigned). `state` is that snapshot decoded, for tests and callers in the server.
   */
  stateFor(nodeId: string, digest: string | undefined): { inSync: boolean; state?: MeshState & { seq: number; digest: string }; snapshot?: { bytes: Uint8Array<ArrayBuffer>; signature: Uint8Array<ArrayBuffer>; keyId: string } } {
    // A node not told anything yet (its first snapshot is queued), or one the running recompute has
    // not reached: its events are on their way, and a state now would run ahead of them.
    if (this.#pending.has(nodeId) || this.#model.nodes.get(nodeId)?.announced === null) return { inSync: true };
    const desired = this.desiredState(nodeId);
    if (!desired) return { inSync: true };
    const d = stateDigest(desired);
    if (digest === d) return { inSync: true };
    const node = this.#model.nodes.get(nodeId)!;
    const bytes = encodeSnapshot({ nodeId, seq: node.lastSeq, digest: d, ts: Date.now(), state: desired });
    const key = this.#signing[this.#signing.length - 1]!;
    const snapshot = { bytes: bin(bytes), signature: bin(signBytes(key, snapshotSigningBytes(bytes))), keyId: key.keyId };
    return { inSync: false, state: { ...desired, seq: node.lastSeq, digest: d }, snapshot };
  }

  /**
   * event.ack: remembers the applied seq; an ack carrying a new WireGuard key finishes rotate_keys.
   * A key that fails checkSelfReport rejects, before anything is stored. Resolves when the peers'
   * peer_key_rotated events are sent (errors of the recompute are logged).
   */
  acked(nodeId: string, ack: PayloadOf<'event.ack'>): Promise<void> {
    return this.ackReceived(nodeId, ack).then((r) => r.sent);
  }

  /** acked in two steps (see helloReceived): resolves once the ack is recorded, with `sent`. */
  async ackReceived(nodeId: string, ack: PayloadOf<'event.ack'>): Promise<{ sent: Promise<void> }> {
    const none = { sent: Promise.resolve() };
    const node = this.#model.nodes.get(nodeId);
    if (!node) return none;
    node.ackedSeq = Math.max(node.ackedSeq, ack.seq);
    if (!ack.wgPublicKey || ack.wgPublicKey === node.publicKey) return none;
    this.checkSelfReport(nodeId, { wgPublicKey: ack.wgPublicKey }, 'event.ack');
    this.#model.updateWg(node, ack.wgPublicKey, node.endpoints, node.observedAddr);
    this.#log.info({ nodeId }, 'node reported a new WireGuard key');
    await this.#inOrder(() => this.#model.persistWg(node));
    return { sent: this.#background(this.#nodeChanged(nodeId)) };
  }

  /**
   * A drift report: at most DRIFT_REPORTS_PER_MINUTE per node (an agent reconciles once a minute;
   * more is dropped and logged), stored with the receive time and pruned with the feed.
   */
  async drift(nodeId: string, report: PayloadOf<'drift.report'>, receivedAt = Date.now()): Promise<void> {
    if (!this.#model.nodes.has(nodeId)) return;
    if (!this.#driftRate.take(nodeId, receivedAt)) {
      this.#log.warn({ nodeId, items: report.items.length }, 'drift report over the node’s rate; dropped');
      return;
    }
    await this.#feed.recordDrift(nodeId, report, receivedAt);
    await this.#feed.pruneIfDue();
    this.#log.warn({ nodeId, items: report.items.length, fields: report.items.slice(0, 10).map((i) => i.field) }, 'agent reported and corrected drift');
    this.#feed.wake();
  }

  // ------------------------------------------------------------------ switching (path-health.ts)

  /**
   * Turns switching on (the feature does, when a relay runs): from now on `peer.status` reports can
   * hold a failed direct pair on the relay, and `retryDirect` lets it try direct again.
   */
  enableSwitching(health: PathHealth, context: SwitchingContext): void {
    this.#health = { health, context };
  }

  /**
   * A `peer.status` from a node: at most PEER_STATUS_PER_MINUTE per node (an agent sends one on a
   * change and one a minute; more is dropped and logged); entries that fail the schema are skipped one
   * by one. A direct pair reported down goes to the relay (its members get the events at once).
   */
  peerStatus(nodeId: string, report: PayloadOf<'peer.status'>, receivedAt = Date.now()): void {
    const switching = this.#health;
    if (!switching || !this.#model.nodes.has(nodeId)) return;
    if (!this.#peerStatusRate.take(nodeId, receivedAt)) {
      // One line a minute per node: a flood must not become a flood of log lines.
      if (this.#peerStatusWarned.take(nodeId, receivedAt)) this.#log.warn({ nodeId, perMinute: PEER_STATUS_PER_MINUTE }, 'peer status over the node’s rate; dropped (logged once a minute)');
      return;
    }
    const links: PeerLink[] = [];
    for (const entry of report.peers) {
      const parsed = peerLinkSchema.safeParse(entry);
      if (parsed.success) links.push(parsed.data);
    }
    const model = this.#model;
    const moved = switching.health.record(nodeId, links, receivedAt, {
      ...switching.context,
      permitted: (a, b) => model.permitted.get(a)?.has(b) ?? false,
      naturalPath: (a, b) => choosePath(model.nodes.get(a)?.nat ?? null, model.nodes.get(b)?.nat ?? null),
      announcedEndpoint: (viewer, peer) => model.nodes.get(viewer)?.announced?.peers.get(peer)?.endpoints[0] ?? null,
    });
    if (moved.length === 0) return;
    this.#log.info({ pairs: moved.map(([a, b]) => `${a}–${b}`), reportedBy: nodeId }, 'direct path down: pair moved to the relay');
    this.#pathsMoved(switching.health);
  }

  /** Lifts the back-offs that ended by `now`: those pairs try their direct path again. Returns them. */
  retryDirect(now = Date.now()): Array<[string, string]> {
    const switching = this.#health;
    if (!switching) return [];
    const lifted = switching.health.due(now);
    if (lifted.length > 0) {
      this.#log.info({ pairs: lifted.map(([a, b]) => `${a}–${b}`) }, 'relay back-off over: pair tries its direct path again');
      this.#pathsMoved(switching.health);
    }
    return lifted;
  }

  /** What `nodeId` last reported about `peerId` (for `nodes show`); undefined without switching or a report. */
  linkReport(nodeId: string, peerId: string): PeerLinkReport | undefined {
    return this.#health?.health.report(nodeId, peerId);
  }

  /**
   * The overrides changed: the relay's pairs follow (pairPaths), and the relay assigner is told as
   * after a recompute. The members' views need none: they keep the direct endpoints (path-health.ts).
   */
  #pathsMoved(health: PathHealth): void {
    this.#model.forcedRelay = new Set(health.forced);
    this.#model.pathsChanged();
    for (const listener of this.#recomputed) listener();
  }

  // ------------------------------------------------------------------ operator actions

  get policy(): Policy | null {
    return this.#policy;
  }

  /**
   * Replaces the policy (null = full mesh). Validation happens before anything changes and throws
   * synchronously; the promise resolves once every affected node's events are persisted and sent.
   */
  setPolicy(input: unknown): Promise<{ policyId: string; affectedNodes: string[] }> {
    const policy = input === null ? null : validatePolicy(input);
    // Takes effect in turn: a recompute still running (or queued) finishes under the policy it began
    // with, so each change's affectedNodes are the nodes that change made a difference to.
    return this.#inTurn(async () => {
      if (policy === null) await this.#db.deleteSetting(SETTING_POLICY);
      else await this.#db.setSetting(SETTING_POLICY, JSON.stringify(policy));
      this.#policy = policy;
      this.#policyDirty = true;
      const affected = await this.#recomputeNow({});
      this.#log.info({ policyId: policyId(policy), affected: affected.length }, 'policy updated');
      return { policyId: policyId(policy), affectedNodes: affected };
    });
  }

  /** Re-reads tags written by `nodes tag` (through the store) and recomputes. */
  tagsChanged(nodeId: string, tags: string[]): Promise<string[]> {
    return this.#inTurn(() => {
      const node = this.#model.nodes.get(nodeId);
      if (node) node.tags = [...tags];
      this.#policyDirty = true;
      return this.#recomputeNow({});
    });
  }

  /**
   * Puts a pair on the relay (docs/MESH.md, "Relay"): each member gets a signed `relay_session_assigned`
   * naming the other member and the relay endpoint it must send to (its own port of the allocation,
   * server/mesh/relay.ts). Both events are appended in one transaction, so neither member is relayed
   * alone. Payloads are checked with the agents' schema first: the server never signs what they refuse.
   * Resolves with the two seqs once both events are stored and sent.
   */
  assignRelay(sessionId: string, members: readonly [RelayMemberEndpoint, RelayMemberEndpoint], expiresAt?: number): Promise<number[]> {
    const [x, y] = members;
    return this.#publishEach(
      () => [
        [x.nodeId, 'relay_session_assigned', { sessionId, peerNodeId: y.nodeId, endpoint: x.endpoint, ...(expiresAt !== undefined ? { expiresAt } : {}) }],
        [y.nodeId, 'relay_session_assigned', { sessionId, peerNodeId: x.nodeId, endpoint: y.endpoint, ...(expiresAt !== undefined ? { expiresAt } : {}) }],
      ],
      (held) => held.set(sessionId, { sessionId, a: x.nodeId, b: y.nodeId, endpoints: [x.endpoint, y.endpoint] }),
    );
  }

  /**
   * Ends a pair's relay session: both members go back to each other's own endpoints. A member no longer
   * in the mesh is skipped (its peer got peer_removed, which drops the session too); throws only when
   * neither is in the mesh and the session was not held (rejects).
   */
  revokeRelay(sessionId: string, nodeA: string, nodeB: string, reason?: string): Promise<number[]> {
    const extra = reason !== undefined ? { reason } : {};
    const items = [
      [nodeA, 'relay_session_revoked', { sessionId, peerNodeId: nodeB, ...extra }],
      [nodeB, 'relay_session_revoked', { sessionId, peerNodeId: nodeA, ...extra }],
    ] as const;
    // Which members are present is decided in the publishing step, against the model of that moment.
    return this.#publishEach(() => (this.#relayHeld.has(sessionId) ? items.filter(([id]) => this.#model.nodes.has(id)) : items), (held) => held.delete(sessionId));
  }

  /** The relay sessions assigned and not revoked, this run's and (until revoked) an earlier run's. */
  heldRelaySessions(): HeldRelaySession[] {
    return [...this.#relayHeld.values()].map((h) => ({ ...h, ...(h.endpoints ? { endpoints: [...h.endpoints] as [string, string] } : {}) }));
  }

  /**
   * Appends one event per node in one transaction and delivers them; the seqs, in order. `held`
   * updates the relay sessions in force (a copy, which replaces them once committed), persisted in
   * the same transaction. The items are taken and
   * checked in the step that publishes them (a sweep queued before it may remove a member).
   */
  #publishEach(itemsOf: () => ReadonlyArray<readonly [string, 'relay_session_assigned' | 'relay_session_revoked', unknown]>, held: (sessions: Map<string, HeldRelaySession>) => void): Promise<number[]> {
    return this.#inOrder(async () => {
      const checked = itemsOf().map(([nodeId, type, payload]) => {
        const node = this.#model.nodes.get(nodeId);
        if (!node) throw new MeshlinkError('ML_ERR_MESH_TAG', `node ${nodeId} is not in the mesh`);
        const parsed = EVENT_PAYLOAD_SCHEMAS[type].safeParse(payload);
        if (!parsed.success) throw new MeshlinkError('ML_ERR_RELAY_BAD_ALLOCATION', `${type}: ${zodErrorText(parsed.error)}`);
        return { node, type, payload: parsed.data };
      });
      const now = Date.now();
      // The sessions in force as they will be once this commits; memory follows the commit.
      const next = new Map(this.#relayHeld);
      held(next);
      const outgoing = await this.#commitAndDeliver(
        async (tx, out) => {
          for (const { node, type, payload } of checked) {
            out.push(await this.#events.append(tx, node, type, payload, now));
            await this.#model.saveSeq(tx, node);
          }
          if (next.size === 0) await tx.deleteSetting(SETTING_RELAY_SESSIONS);
          else await tx.setSetting(SETTING_RELAY_SESSIONS, JSON.stringify([...next.values()]));
        },
        () => {
          this.#relayHeld = next;
        },
      );
      return outgoing.map((o) => o.event.seq);
    });
  }

  /** Asks a node to generate a new WireGuard key; its ack carries the new public key. */
  requestKeyRotation(nodeId: string, reason = 'operator request'): Promise<number> {
    return this.publish(nodeId, 'rotate_keys', { reason });
  }

  /**
   * Signing-key rotation: a new key is created and announced to every node in an envelope signed by
   * the current key; from then on the new key signs. Agents keep the previous key for the transition.
   */
  rotateSigningKey(): Promise<{ keyId: string; previousKeyId: string }> {
    return this.#inOrder(async () => {
      const previous = this.#signing[this.#signing.length - 1]!;
      const next = generateSigningKey();
      const now = Date.now();
      const until = now + this.#opts.signingTransitionMs;
      await this.#commitAndDeliver(
        async (tx, outgoing) => {
          await tx.insertSigningKey(next.keyId, next.publicKey, this.#box.seal(next.pkcs8, `signing:${next.keyId}`), next.createdAt);
          for (const node of this.#model.nodes.values()) {
            outgoing.push(await this.#events.append(tx, node, 'signing_key_rotated', { keyId: next.keyId, publicKey: next.publicKey, transitionMs: this.#opts.signingTransitionMs }, now));
            await this.#model.saveSeq(tx, node);
          }
          await tx.setSetting(SETTING_PREVIOUS_KEY_UNTIL, String(until));
        },
        // The new key signs from the commit on (the announcements above are signed by the previous one).
        () => {
          this.#previousKeyUntil = until;
          this.#signing = [previous, next];
        },
      );
      this.#log.info({ keyId: next.keyId, previousKeyId: previous.keyId }, 'event-signing key rotated');
      return { keyId: next.keyId, previousKeyId: previous.keyId };
    });
  }

  /** Keys for `welcome.eventKeys`: the current one, plus the previous during its transition. */
  eventKeys(now = Date.now()): Array<{ keyId: string; publicKey: Uint8Array<ArrayBuffer> }> {
    const current = this.#signing[this.#signing.length - 1]!;
    const keys = [{ keyId: current.keyId, publicKey: bin(current.publicKey) }];
    const previous = this.#signing[this.#signing.length - 2];
    if (previous && now < this.#previousKeyUntil) keys.push({ keyId: previous.keyId, publicKey: bin(previous.publicKey) });
    return keys;
  }

  nodeInfo(nodeId: string): { meshIp: string; publicKey: string | null; endpoints: string[]; nat: NatReport | null; tags: string[]; lastSeq: number; ackedSeq: number } | null {
    const n = this.#model.nodes.get(nodeId);
    return n ? { meshIp: intToIp(n.meshIp), publicKey: n.publicKey, endpoints: [...n.endpoints], nat: n.nat, tags: [...n.tags], lastSeq: n.lastSeq, ackedSeq: n.ackedSeq } : null;
  }

  /**
   * The permitted pairs of keyed nodes by path (path.ts): how many are direct, and the relay ones.
   * The relay allocator's input (`relayPairs`, run on every connect and close) and the
   * `meshlink_mesh_pairs` gauge. Computing it is O(permitted pairs), about a second at 3,000 nodes
   * in a full mesh, so it is cached until the model changes something a path depends on.
   */
  pairPaths(): { direct: number; relay: readonly RelayPair[] } {
    const version = this.#model.pathsVersion;
    if (this.#pairPaths?.version !== version) {
      const nodes = this.#model.nodes;
      const paths = pairsByPath(this.#model.permitted, (id) => nodes.get(id)?.nat ?? null, (id) => Boolean(nodes.get(id)?.publicKey), this.#model.forcedRelay);
      this.#pairPaths = { version, direct: paths.direct, relay: Object.freeze(paths.relay) };
    }
    return this.#pairPaths;
  }

  /** The pairs whose path is `relay`, in pair-id order: what a relay must hold an allocation for. */
  relayPairs(): readonly RelayPair[] {
    return this.pairPaths().relay;
  }

  /**
   * The addresses the server observed for a node, the IPs its relay port may latch from: the source of
   * its control connection and the host of its STUN reflexive endpoint (one NAT usually shows both;
   * a NAT that pools addresses may not). Empty when neither is known.
   *
   * The control connection's source is the server's own observation and always counts (on loopback,
   * in tests and demos, it is 127.0.0.1). The reflexive host is what the node *says* a STUN server
   * saw: it counts only when it is an address another host could send from, so a node cannot open
   * its relay port to the server's own loopback or to a multicast or unspecified address, nor to an
   * address in `notReflexive` (the caller's: the relay's own addresses).
   */
  observedIps(nodeId: string, notReflexive: ReadonlySet<string> = new Set()): string[] {
    const node = this.#model.nodes.get(nodeId);
    if (!node) return [];
    const ips: string[] = [];
    if (node.observedAddr && isIP(node.observedAddr) !== 0) ips.push(node.observedAddr);
    const reflexive = node.nat?.reflexive;
    if (reflexive) {
      const host = reflexive.slice(0, reflexive.lastIndexOf(':')).replace(/^\[(.*)\]$/, '$1');
      if (isHostAddress(host) && !notReflexive.has(normalizeIp(host))) ips.push(host);
    }
    return [...new Set(ips)];
  }

  feed(after: number, nodeId: string | null, limit = 500): Promise<FeedEntry[]> {
    return this.#feed.entries(after, nodeId, limit);
  }

  /** Resolves when the feed grows or after `ms`. */
  waitForFeed(ms: number): Promise<void> {
    return this.#feed.wait(ms);
  }

  lastFeedId(): Promise<number> {
    return this.#feed.lastId();
  }

  /** When the node's event `seq` was created (ms), while the event log keeps it (delivery-lag metric). */
  eventCreatedAt(nodeId: string, seq: number): Promise<number | undefined> {
    return this.#db.eventTs(nodeId, seq);
  }

  /**
   * Stops: no new recompute or publishAll starts, the running one stops after its current batch
   * (every batch is a whole transaction), and the promise resolves when it has. Call before the store
   * closes.
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#feed.wake();
    await this.#serial;
    // Then the store work queued meanwhile (a replay, a report's write): the store closes after this.
    await this.#writes;
  }
}
