import { createHash, randomBytes } from 'node:crypto';
import type { Session } from '../../protocol/session.js';
import type { PayloadOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import {
  encodeEnvelope,
  stateDigest,
  type EventPayload,
  type EventType,
  type MeshState,
  type PeerInfo,
} from '../../contract/mesh-events.js';
import { MeshStore, type MeshNodeRow, type StoredEvent } from '../store/mesh-store.js';
import type { Store } from '../store/store.js';
import { allocateAddress, inRange, intToIp, parseMeshRange, type MeshRange } from './addresses.js';
import { MeshError } from './errors.js';
import { permittedPeers, policyId, validatePolicy, type Policy } from './policy.js';
import { SecretBox } from './secret-box.js';
import { generateSigningKey, signBytes, signingKeyFromPkcs8, type SigningKey } from './signer.js';

/**
 * The mesh control plane: desired state per node (address, permitted peers with keys, endpoints and
 * PSKs), turned into signed, per-node sequenced events by diffing against what each node was already
 * told. Every change (policy, tags, a node joining or leaving, a key or endpoint report) runs the same
 * `recompute`, so "exactly the affected nodes get events" holds by construction: a node whose view
 * did not change gets nothing.
 */

export interface MeshOptions {
  /** Mesh range (default MESHLINK_MESH_CIDR, else 10.100.0.0/16). */
  cidr?: string;
  /** Passphrase sealing the mesh master key: the CA's (the feature passes ctx.passphrase); default MESHLINK_CA_PASSPHRASE. */
  passphrase?: string;
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

/** What the events sent so far told a node about one peer; the PSK only as a fingerprint. */
interface AnnouncedPeer {
  meshIp: string;
  publicKey: string;
  endpoints: string[];
  pskTag: string;
}

/** What the events sent so far told a node (persisted: mesh_nodes.announced + mesh_announced_peers). */
interface Announced {
  meshIp: string;
  cidr: string;
  peers: Map<string, AnnouncedPeer>;
}

/** The events that bring a node's view in line with its desired state, and how its view changes. */
interface ViewChange {
  events: Array<[EventType, unknown]>;
  /** A full state replaces the whole view (first contact, a new address or range). */
  snapshot: MeshState | null;
  upserts: PeerInfo[];
  removed: string[];
}

interface ModelNode {
  id: string;
  hostname: string;
  tags: string[];
  meshIp: number;
  publicKey: string | null;
  endpoints: string[];
  observedAddr: string | null;
  lastSeq: number;
  announced: Announced | null;
  ackedSeq: number;
}

export interface FeedEntry {
  id: number;
  ts: string;
  nodeId: string | null;
  kind: 'event' | 'drift';
  type: string;
  seq: number | null;
  detail: unknown;
}

type Outgoing = { nodeId: string; event: StoredEvent; bytes: Uint8Array };

/** Live delivery: the node's current session, if it has asked for its replay already (see `ready`). */
export interface Delivery {
  sessionOf(nodeId: string): Session | undefined;
}

/** Event types whose payload carries PSKs: stored sealed. */
const CARRIES_SECRETS: ReadonlySet<EventType> = new Set(['peer_added', 'node_state_updated']);
const SEALED = Buffer.from([1]);
const PLAIN = Buffer.from([0]);

const pairKey = (a: string, b: string): string => (a < b ? `${a}\u0000${b}` : `${b}\u0000${a}`);
const pskTag = (psk: Buffer): string => createHash('sha256').update(psk).digest('hex').slice(0, 16);

/**
 * A recompute visits every (node, peer) pair, twice needing the PSK's tag and once its base64 form:
 * for 1,000 nodes that was millions of hashes and conversions per policy change. Both are derived
 * from the PSK alone, so they are computed once per PSK (the caches are bounded; PSKs are in memory
 * anyway).
 */
const pskTagCache = new Map<string, string>();
function pskTagOf(pskBase64: string): string {
  let tag = pskTagCache.get(pskBase64);
  if (tag === undefined) {
    if (pskTagCache.size >= 1_000_000) pskTagCache.clear();
    tag = pskTag(Buffer.from(pskBase64, 'base64'));
    pskTagCache.set(pskBase64, tag);
  }
  return tag;
}
const pskBase64Cache = new WeakMap<Buffer, string>();
function base64Of(psk: Buffer): string {
  let b64 = pskBase64Cache.get(psk);
  if (b64 === undefined) {
    b64 = psk.toString('base64');
    pskBase64Cache.set(psk, b64);
  }
  return b64;
}
/** zod's Uint8Array is over an ArrayBuffer; Buffers from node:crypto and the codec are. */
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

const bin = (b: Uint8Array): Uint8Array<ArrayBuffer> => b as Uint8Array<ArrayBuffer>;
const sameList = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

export class MeshService {
  readonly range: MeshRange;
  readonly #db: MeshStore;
  readonly #box: SecretBox;
  readonly #log: Logger;
  readonly #opts: Required<Omit<MeshOptions, 'cidr' | 'passphrase'>>;
  readonly #nodes = new Map<string, ModelNode>();
  readonly #psks = new Map<string, Buffer>();
  #permitted = new Map<string, Set<string>>();
  #policy: Policy | null;
  #signing: SigningKey[];
  #previousKeyUntil: number;
  #delivery: Delivery | null = null;
  /** Sessions that asked for their replay (their first state.request): only these get live events. */
  readonly #ready = new WeakSet<Session>();
  readonly #feedWaiters = new Set<() => void>();
  #feedInserts = 0;
  /** Recomputes run one at a time, in call order (each yields between its delivery batches). */
  #serial: Promise<unknown> = Promise.resolve();
  /** Set by a policy or tag change; the next full recompute sends policy_updated with its changes. */
  #policyDirty = false;
  /**
   * Nodes whose own facts changed since the queued recompute for them was scheduled. A burst of
   * connects (a fleet joining, a restart) is coalesced into one recompute: a peer learns of the k
   * nodes that joined meanwhile in one peer_added, not in k signed events.
   */
  #changed = new Set<string>();
  #changedRun: Promise<string[]> | null = null;
  /** Nodes the running recompute has yet to reach: their events are still to come (see stateFor). */
  readonly #pending = new Set<string>();
  #closed = false;

  private constructor(db: MeshStore, box: SecretBox, range: MeshRange, signing: SigningKey[], logger: Logger, options: MeshOptions) {
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
    const stored = db.getSetting(SETTING_POLICY);
    this.#policy = stored === undefined ? null : validatePolicy(JSON.parse(stored));
    this.#previousKeyUntil = Number(db.getSetting(SETTING_PREVIOUS_KEY_UNTIL) ?? 0);
  }

  /** Opens the mesh state of a store: master key, signing key, range, model; then one recompute. */
  static async open(store: Store, logger: Logger, options: MeshOptions = {}): Promise<MeshService> {
    const db = new MeshStore(store.database);
    const passphrase = options.passphrase ?? process.env.MESHLINK_CA_PASSPHRASE ?? '';
    let box: SecretBox;
    const master = db.getMaster();
    if (master) box = await SecretBox.openMaster(master.blob, master.salt, store.path, passphrase);
    else {
      const created = await SecretBox.createMaster(store.path, passphrase);
      db.insertMaster(created.blob, created.salt);
      box = created.box;
    }
    const signing = db.signingKeys().map((k) => signingKeyFromPkcs8(box.open(k.sealedPkcs8, `signing:${k.keyId}`), k.createdAt));
    if (signing.length === 0) {
      const k = generateSigningKey();
      db.insertSigningKey(k.keyId, k.publicKey, box.seal(k.pkcs8, `signing:${k.keyId}`), k.createdAt);
      signing.push(k);
    }
    const range = parseMeshRange(options.cidr ?? process.env.MESHLINK_MESH_CIDR ?? db.getSetting(SETTING_CIDR) ?? '10.100.0.0/16');
    const service = new MeshService(db, box, range, signing, logger, options);
    service.#load();
    db.setSetting(SETTING_CIDR, range.cidr);
    service.sweep();
    await service.recompute();
    return service;
  }

  setDelivery(delivery: Delivery): void {
    this.#delivery = delivery;
  }

  #load(): void {
    for (const row of this.#db.meshNodes()) {
      if (!inRange(this.range, row.meshIp)) {
        throw new MeshError('ML_ERR_MESH_CIDR', `the mesh range ${this.range.cidr} does not hold ${intToIp(row.meshIp)}, already assigned to node ${row.nodeId}`);
      }
      this.#nodes.set(row.nodeId, this.#modelOf(row));
    }
    for (const r of this.#db.announcedPeers()) {
      this.#nodes.get(r.nodeId)?.announced?.peers.set(r.peerId, { meshIp: r.meshIp, publicKey: r.publicKey, endpoints: r.endpoints, pskTag: r.pskTag });
    }
    for (const p of this.#db.psks()) this.#psks.set(pairKey(p.a, p.b), this.#box.open(p.sealed, `psk:${pairKey(p.a, p.b)}`));
  }

  #modelOf(row: MeshNodeRow): ModelNode {
    return {
      id: row.nodeId,
      hostname: row.hostname,
      tags: row.tags,
      meshIp: row.meshIp,
      publicKey: row.wgPublicKey,
      endpoints: row.endpoints,
      observedAddr: row.observedAddr,
      lastSeq: row.lastSeq,
      announced: announcedHead(row.announced),
      ackedSeq: 0,
    };
  }

  // ------------------------------------------------------------------ membership

  /**
   * Brings the model in line with the node table: live nodes without an address get one (enrollment),
   * removed nodes lose theirs (freed) with their PSKs and event log. Returns true when something
   * changed; the caller recomputes.
   */
  sweep(): boolean {
    const added = this.#db.nodesWithoutMesh();
    const removed = this.#db.removedMeshNodes();
    if (added.length === 0 && removed.length === 0) return false;
    this.#db.transaction(() => {
      for (const id of removed) {
        this.#db.deleteMeshNode(id);
        this.#nodes.delete(id);
        for (const key of [...this.#psks.keys()]) if (key.startsWith(`${id}\u0000`) || key.endsWith(`\u0000${id}`)) this.#psks.delete(key);
      }
      if (added.length > 0) {
        const used = this.#db.usedAddresses();
        for (const id of added) {
          const ip = allocateAddress(this.range, used);
          used.add(ip);
          this.#db.insertMeshNode(id, ip);
        }
      }
    });
    // Reload the rows of the added nodes (hostname, tags come from the node table).
    if (added.length > 0) {
      const wanted = new Set(added);
      for (const row of this.#db.meshNodes()) if (wanted.has(row.nodeId)) this.#nodes.set(row.nodeId, this.#modelOf(row));
    }
    if (removed.length > 0) this.#log.info({ removed }, 'nodes left the mesh; addresses freed');
    if (added.length > 0) this.#log.info({ added: added.length }, 'mesh addresses assigned');
    return true;
  }

  // ------------------------------------------------------------------ desired state and events

  #peerInfo(peer: ModelNode, psk: Buffer): PeerInfo {
    return { nodeId: peer.id, meshIp: intToIp(peer.meshIp), publicKey: peer.publicKey!, endpoints: [...peer.endpoints], psk: base64Of(psk) };
  }

  /**
   * Ensures a PSK for every permitted pair whose two nodes have reported a WireGuard key (only those
   * appear in a desired state), and drops the PSKs of pairs no longer permitted. Pairs of nodes that
   * never connected get none: a burst of enrollments into a large mesh would otherwise create
   * (and seal and store) n² keys nobody can use yet, blocking the server for seconds.
   */
  #syncPsks(now: number, onlyNodes?: ReadonlySet<string>): void {
    const wanted = new Set<string>();
    const keyed = (id: string): boolean => Boolean(this.#nodes.get(id)?.publicKey);
    if (onlyNodes !== undefined) {
      // Some nodes' keys appeared or changed: only their pairs can need a new PSK, and none is dropped.
      for (const a of onlyNodes) {
        if (!keyed(a)) continue;
        for (const b of this.#permitted.get(a) ?? []) if (keyed(b)) wanted.add(pairKey(a, b));
      }
    } else {
      for (const [a, set] of this.#permitted) {
        if (!keyed(a)) continue;
        for (const b of set) if (a < b && keyed(b)) wanted.add(pairKey(a, b));
      }
    }
    if (onlyNodes === undefined) for (const key of [...this.#psks.keys()]) {
      if (!wanted.has(key)) {
        const [a, b] = key.split('\u0000') as [string, string];
        this.#db.deletePsk(a, b);
        this.#psks.delete(key);
      }
    }
    for (const key of wanted) {
      if (this.#psks.has(key)) continue;
      const psk = randomBytes(32);
      const [a, b] = key.split('\u0000') as [string, string];
      this.#db.insertPsk(a, b, this.#box.seal(psk, `psk:${key}`), now);
      this.#psks.set(key, psk);
    }
  }

  /** What `viewerId` should know about `peerId`: nothing unless permitted, keyed and with a PSK. */
  #peerEntry(viewerId: string, peerId: string): PeerInfo | null {
    if (!this.#permitted.get(viewerId)?.has(peerId)) return null;
    const peer = this.#nodes.get(peerId);
    const psk = this.#psks.get(pairKey(viewerId, peerId));
    return peer && peer.publicKey && psk ? this.#peerInfo(peer, psk) : null;
  }

  /** The full desired state of a node: only permitted peers that have reported a WireGuard key. */
  desiredState(nodeId: string): MeshState | null {
    const node = this.#nodes.get(nodeId);
    if (!node) return null;
    const peers: PeerInfo[] = [];
    for (const pid of this.#permitted.get(nodeId) ?? []) {
      const entry = this.#peerEntry(nodeId, pid);
      if (entry) peers.push(entry);
    }
    peers.sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1));
    return { nodeId, meshIp: intToIp(node.meshIp), cidr: this.range.cidr, peers };
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

  /** Runs `work` after every recompute queued before it (and before any queued after it). */
  #inTurn<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(() => {
      if (this.#closed) throw new MeshError('ML_ERR_MESH_CLOSED', 'the mesh service is shutting down');
      return work();
    });
    this.#serial = run.catch(() => undefined);
    return run;
  }

  async #recomputeNow(scope: RecomputeScope): Promise<string[]> {
    const now = Date.now();
    // Each target: a node, and the peers its view is checked for (null: all of its peers).
    let targets: Array<[string, Set<string> | null]>;
    let policyChanged = false;
    if (scope.changedNodes === undefined) {
      this.#permitted = permittedPeers([...this.#nodes.values()], this.#policy);
      policyChanged = this.#policyDirty;
      this.#db.transaction(() => this.#syncPsks(now));
      targets = [...this.#nodes.keys()].map((id) => [id, null]);
    } else {
      const changed = scope.changedNodes;
      this.#db.transaction(() => this.#syncPsks(now, changed));
      const about = new Map<string, Set<string> | null>();
      for (const id of changed) about.set(id, null);
      for (const id of changed) {
        for (const peer of this.#permitted.get(id) ?? []) {
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
        if (this.#closed) throw new MeshError('ML_ERR_MESH_CLOSED', 'the mesh service shut down during a recompute');
        const batch = targets.slice(i, i + DELIVERY_BATCH_NODES);
        const outgoing: Outgoing[] = [];
        this.#db.transaction(() => {
          for (const [id, about] of batch) {
            const node = this.#nodes.get(id);
            if (!node) continue; // removed by a sweep while an earlier batch was out
            const change = this.#viewChange(node, about, policyChanged);
            if (change === null) continue;
            affected.push(id);
            for (const [type, payload] of change.events) outgoing.push(this.#append(node, type, payload, now));
            this.#applyView(node, change);
          }
        });
        for (const [id] of batch) this.#pending.delete(id);
        this.#deliver(outgoing);
      }
      // Only a full recompute that reached every node has told them all of the policy change.
      if (scope.changedNodes === undefined) this.#policyDirty = false;
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

  /** Sweeps and, when membership changed, recomputes; errors are logged (for timers and events). */
  sweepAndRecompute(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    try {
      if (!this.sweep()) return Promise.resolve();
    } catch (err) {
      this.#log.error({ err }, 'mesh sweep failed');
      return Promise.resolve();
    }
    return this.#background(this.recompute());
  }

  #background(work: Promise<unknown>): Promise<void> {
    return work.then(
      () => undefined,
      (err: unknown) => {
        if (err instanceof MeshError && err.code === 'ML_ERR_MESH_CLOSED') this.#log.debug('mesh recompute skipped: shutting down');
        else this.#log.error({ err }, 'mesh recompute failed');
      },
    );
  }

  /**
   * The events that bring `node`'s view in line with its desired state: for all of its peers
   * (about = null), or only for the peers in `about`, whose own facts changed (nothing else in the
   * view can have: that check costs O(|about|) instead of rebuilding the node's whole desired state).
   * Null when the node already knows everything.
   */
  #viewChange(node: ModelNode, about: ReadonlySet<string> | null, policyChanged: boolean): ViewChange | null {
    const before = node.announced;
    if (before === null || before.meshIp !== intToIp(node.meshIp) || before.cidr !== this.range.cidr) {
      const state = this.desiredState(node.id)!;
      return { events: [['node_state_updated', { state }]], snapshot: state, upserts: [], removed: [] };
    }
    let desired: PeerInfo[];
    if (about === null) desired = this.desiredState(node.id)!.peers;
    else {
      desired = [];
      for (const id of about) {
        const entry = this.#peerEntry(node.id, id);
        if (entry) desired.push(entry);
      }
      desired.sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1));
    }
    const added: PeerInfo[] = [];
    const keys: Array<{ nodeId: string; publicKey: string }> = [];
    const endpoints: Array<{ nodeId: string; endpoints: string[] }> = [];
    const upserts: PeerInfo[] = [];
    const seen = new Set<string>();
    for (const p of desired) {
      seen.add(p.nodeId);
      const was = before.peers.get(p.nodeId);
      if (!was || was.meshIp !== p.meshIp || was.pskTag !== pskTagOf(p.psk)) {
        added.push(p);
        upserts.push(p);
        continue;
      }
      const keyChanged = was.publicKey !== p.publicKey;
      const endpointsChanged = !sameList(was.endpoints, p.endpoints);
      if (keyChanged) keys.push({ nodeId: p.nodeId, publicKey: p.publicKey });
      if (endpointsChanged) endpoints.push({ nodeId: p.nodeId, endpoints: p.endpoints });
      if (keyChanged || endpointsChanged) upserts.push(p);
    }
    const removed = [...(about ?? before.peers.keys())].filter((id) => before.peers.has(id) && !seen.has(id));
    const events: Array<[EventType, unknown]> = [];
    if (policyChanged && (added.length > 0 || removed.length > 0)) events.push(['policy_updated', { policyId: policyId(this.#policy), rules: this.#policy?.rules ?? null }]);
    if (removed.length > 0) events.push(['peer_removed', { nodeIds: removed }]);
    if (added.length > 0) events.push(['peer_added', { peers: added }]);
    if (keys.length > 0) events.push(['peer_key_rotated', { peers: keys }]);
    if (endpoints.length > 0) events.push(['peer_endpoint_changed', { peers: endpoints }]);
    return events.length === 0 ? null : { events, snapshot: null, upserts, removed };
  }

  /** Records what the events of `change` told the node (inside the caller's transaction). */
  #applyView(node: ModelNode, change: ViewChange): void {
    if (change.snapshot) {
      node.announced = { meshIp: change.snapshot.meshIp, cidr: change.snapshot.cidr, peers: new Map() };
      this.#db.deleteAnnouncedOf(node.id);
      for (const p of change.snapshot.peers) this.#rememberPeer(node, p);
    } else {
      for (const p of change.upserts) this.#rememberPeer(node, p);
      for (const id of change.removed) {
        node.announced!.peers.delete(id);
        this.#db.deleteAnnouncedPeer(node.id, id);
      }
    }
    this.#db.setAnnounced(node.id, JSON.stringify({ meshIp: node.announced!.meshIp, cidr: node.announced!.cidr }), node.lastSeq);
  }

  #rememberPeer(node: ModelNode, p: PeerInfo): void {
    const entry: AnnouncedPeer = { meshIp: p.meshIp, publicKey: p.publicKey, endpoints: p.endpoints, pskTag: pskTagOf(p.psk) };
    node.announced!.peers.set(p.nodeId, entry);
    this.#db.upsertAnnouncedPeer(node.id, p.nodeId, entry);
  }

  /** Appends one signed event to a node's log (inside the caller's transaction). */
  #append(node: ModelNode, type: EventType, payload: unknown, now: number): Outgoing {
    const seq = ++node.lastSeq;
    const bytes = encodeEnvelope({ seq, type, ts: now, payload } as never);
    const key = this.#signing[this.#signing.length - 1]!;
    const event: StoredEvent = {
      nodeId: node.id,
      seq,
      type,
      ts: now,
      // Only envelopes with PSKs need sealing; the rest are stored as sent (the first byte tells which).
      sealed: CARRIES_SECRETS.has(type) ? Buffer.concat([SEALED, this.#box.seal(bytes, `event:${node.id}:${seq}`)]) : Buffer.concat([PLAIN, bytes]),
      signature: signBytes(key, bytes),
      keyId: key.keyId,
    };
    this.#db.insertEvent(event);
    if (seq > this.#opts.retainEvents) this.#db.pruneEvents(node.id, seq - this.#opts.retainEvents);
    // last_seq is written by the caller, once per node (setAnnounced or setLastSeq).
    this.#db.insertFeed({ ts: now, nodeId: node.id, kind: 'event', type, seq, detail: JSON.stringify(redact(type, payload)) });
    this.#feedInserts++;
    return { nodeId: node.id, event, bytes };
  }

  /** Appends and delivers one event of any type to one node (operations features may use this). */
  publish<T extends EventType>(nodeId: string, type: T, payload: EventPayload<T>): number {
    const node = this.#nodes.get(nodeId);
    if (!node) throw new MeshError('ML_ERR_MESH_TAG', `node ${nodeId} is not in the mesh`);
    let out: Outgoing | undefined;
    this.#db.transaction(() => {
      out = this.#append(node, type, payload, Date.now());
      this.#db.setLastSeq(node.id, node.lastSeq);
    });
    this.#deliver([out!]);
    return out!.event.seq;
  }

  /**
   * Appends and delivers one event to every node in the mesh (each under its own seq, so a node that is
   * offline gets it by replay). Batched like a recompute: one transaction per DELIVERY_BATCH_NODES
   * nodes, sent, then the event loop runs. Resolves with the number of nodes.
   */
  publishAll<T extends EventType>(type: T, payload: EventPayload<T>): Promise<number> {
    return this.#inTurn(async () => {
      const ids = [...this.#nodes.keys()];
      const now = Date.now(); // one ts for all: when it was published, whichever batch carries it
      for (let i = 0; i < ids.length; i += DELIVERY_BATCH_NODES) {
        if (i > 0) await yieldToEventLoop();
        if (this.#closed) throw new MeshError('ML_ERR_MESH_CLOSED', 'the mesh service shut down during a publish');
        const outgoing: Outgoing[] = [];
        this.#db.transaction(() => {
          for (const id of ids.slice(i, i + DELIVERY_BATCH_NODES)) {
            const node = this.#nodes.get(id);
            if (!node) continue;
            outgoing.push(this.#append(node, type, payload, now));
            this.#db.setLastSeq(id, node.lastSeq);
          }
        });
        this.#deliver(outgoing);
      }
      return ids.length;
    });
  }

  #deliver(outgoing: Outgoing[]): void {
    if (this.#feedInserts > 1_000) this.#pruneFeed();
    for (const o of outgoing) {
      const session = this.#delivery?.sessionOf(o.nodeId);
      if (session && this.#ready.has(session) && session.state === 'open') {
        session.send('event', { envelope: bin(o.bytes), signature: bin(o.event.signature), keyId: o.event.keyId });
      }
    }
    if (outgoing.length > 0) for (const w of [...this.#feedWaiters]) w();
  }

  #pruneFeed(): void {
    this.#feedInserts = 0;
    const last = this.#db.lastFeedId();
    if (last > this.#opts.feedRetain) this.#db.pruneFeed(last - this.#opts.feedRetain);
  }

  #openEnvelope(e: StoredEvent): Buffer {
    return e.sealed[0] === SEALED[0] ? this.#box.open(e.sealed.subarray(1), `event:${e.nodeId}:${e.seq}`) : e.sealed.subarray(1);
  }

  // ------------------------------------------------------------------ agent sessions

  /**
   * A session opened: record the WireGuard key and endpoints it reported. Resolves when the events
   * that follow from it are sent (errors are logged, never thrown: this runs on every connect).
   */
  agentOpened(nodeId: string, hello: PayloadOf<'hello'>, remoteAddress: string | null): Promise<void> {
    // A node the model does not know yet has just enrolled: bring it in now rather than at the next
    // periodic sweep. A known node needs no sweep (its queries scan the node table: O(n) per connect
    // would be O(n²) in a reconnect storm).
    const membership = this.#nodes.has(nodeId) ? Promise.resolve() : this.sweepAndRecompute();
    const node = this.#nodes.get(nodeId);
    if (!node) return membership;
    const key = hello.wgPublicKey ?? node.publicKey;
    const endpoints = hello.endpoints ?? node.endpoints;
    if (key === node.publicKey && sameList(endpoints, node.endpoints) && remoteAddress === node.observedAddr) return membership;
    node.publicKey = key;
    node.endpoints = [...endpoints];
    node.observedAddr = remoteAddress;
    this.#db.updateWg(nodeId, key, node.endpoints, remoteAddress);
    return this.#background(this.#nodeChanged(nodeId));
  }

  /** Queues a recompute for a node whose own facts changed, coalesced with others (see #changed). */
  #nodeChanged(nodeId: string): Promise<string[]> {
    this.#changed.add(nodeId);
    this.#changedRun ??= this.#inTurn(() => {
      const changedNodes = this.#changed;
      this.#changed = new Set();
      this.#changedRun = null;
      return this.#recomputeNow({ changedNodes });
    });
    return this.#changedRun;
  }

  /**
   * The agent's first state.request on a session: replay what it missed since `lastEventSeq` (or a
   * snapshot when that reaches past what is retained), then deliver live events on this session.
   * Replay waits for this request because the agent attaches its handlers only once it is connected.
   */
  replay(nodeId: string, session: Session, lastEventSeq: number): void {
    const node = this.#nodes.get(nodeId);
    if (!node || this.#ready.has(session)) return;
    this.#ready.add(session);
    if (lastEventSeq === node.lastSeq) return;
    const oldest = this.#db.oldestSeq(nodeId);
    if (lastEventSeq < node.lastSeq && oldest !== null && oldest <= lastEventSeq + 1) {
      const events = this.#db.eventsAfter(nodeId, lastEventSeq);
      for (const e of events) {
        session.send('event', { envelope: bin(this.#openEnvelope(e)), signature: bin(e.signature), keyId: e.keyId });
      }
      this.#log.debug({ nodeId, from: lastEventSeq, events: events.length }, 'replayed missed events');
      return;
    }
    // Past retention, or the agent is ahead of us (store restored from a backup): a snapshot with a
    // seq above anything the agent has seen.
    if (lastEventSeq > node.lastSeq) node.lastSeq = lastEventSeq;
    const desired = this.desiredState(nodeId)!;
    let out: Outgoing | undefined;
    this.#db.transaction(() => {
      out = this.#append(node, 'node_state_updated', { state: desired }, Date.now());
      this.#applyView(node, { events: [], snapshot: desired, upserts: [], removed: [] });
    });
    this.#deliver([out!]);
    this.#log.info({ nodeId, lastEventSeq, oldestRetained: oldest }, 'sent a state snapshot (gap past retention)');
  }

  /** Reconciliation: in sync, or the full desired state with the seq it corresponds to. */
  stateFor(nodeId: string, digest: string | undefined): { inSync: boolean; state?: unknown } {
    // A node not told anything yet (its first snapshot is queued), or one the running recompute has
    // not reached: its events are on their way, and a state now would run ahead of them.
    if (this.#pending.has(nodeId) || this.#nodes.get(nodeId)?.announced === null) return { inSync: true };
    const desired = this.desiredState(nodeId);
    if (!desired) return { inSync: true };
    const d = stateDigest(desired);
    if (digest === d) return { inSync: true };
    const node = this.#nodes.get(nodeId)!;
    return { inSync: false, state: { ...desired, seq: node.lastSeq, digest: d } };
  }

  /**
   * event.ack: remembers the applied seq; an ack carrying a new WireGuard key finishes rotate_keys.
   * Resolves when the peers' peer_key_rotated events are sent (errors are logged).
   */
  acked(nodeId: string, ack: PayloadOf<'event.ack'>): Promise<void> {
    const node = this.#nodes.get(nodeId);
    if (!node) return Promise.resolve();
    node.ackedSeq = Math.max(node.ackedSeq, ack.seq);
    if (!ack.wgPublicKey || ack.wgPublicKey === node.publicKey) return Promise.resolve();
    node.publicKey = ack.wgPublicKey;
    this.#db.updateWg(nodeId, node.publicKey, node.endpoints, node.observedAddr);
    this.#log.info({ nodeId }, 'node reported a new WireGuard key');
    return this.#background(this.#nodeChanged(nodeId));
  }

  drift(nodeId: string, report: PayloadOf<'drift.report'>): void {
    if (!this.#nodes.has(nodeId)) return;
    this.#db.insertFeed({ ts: report.ts, nodeId, kind: 'drift', type: 'drift.report', seq: null, detail: JSON.stringify({ items: report.items }) });
    this.#log.warn({ nodeId, items: report.items.length, fields: report.items.slice(0, 10).map((i) => i.field) }, 'agent reported and corrected drift');
    for (const w of [...this.#feedWaiters]) w();
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
      if (policy === null) this.#db.deleteSetting(SETTING_POLICY);
      else this.#db.setSetting(SETTING_POLICY, JSON.stringify(policy));
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
      const node = this.#nodes.get(nodeId);
      if (node) node.tags = [...tags];
      this.#policyDirty = true;
      return this.#recomputeNow({});
    });
  }

  /** Asks a node to generate a new WireGuard key; its ack carries the new public key. */
  requestKeyRotation(nodeId: string, reason = 'operator request'): number {
    return this.publish(nodeId, 'rotate_keys', { reason });
  }

  /**
   * Signing-key rotation: a new key is created and announced to every node in an envelope signed by
   * the current key; from then on the new key signs. Agents keep the previous key for the transition.
   */
  rotateSigningKey(): { keyId: string; previousKeyId: string } {
    const previous = this.#signing[this.#signing.length - 1]!;
    const next = generateSigningKey();
    const now = Date.now();
    const outgoing: Outgoing[] = [];
    this.#db.transaction(() => {
      this.#db.insertSigningKey(next.keyId, next.publicKey, this.#box.seal(next.pkcs8, `signing:${next.keyId}`), next.createdAt);
      for (const node of this.#nodes.values()) {
        outgoing.push(this.#append(node, 'signing_key_rotated', { keyId: next.keyId, publicKey: next.publicKey, transitionMs: this.#opts.signingTransitionMs }, now));
        this.#db.setLastSeq(node.id, node.lastSeq);
      }
      this.#previousKeyUntil = now + this.#opts.signingTransitionMs;
      this.#db.setSetting(SETTING_PREVIOUS_KEY_UNTIL, String(this.#previousKeyUntil));
    });
    this.#signing = [previous, next];
    this.#deliver(outgoing);
    this.#log.info({ keyId: next.keyId, previousKeyId: previous.keyId }, 'event-signing key rotated');
    return { keyId: next.keyId, previousKeyId: previous.keyId };
  }

  /** Keys for `welcome.eventKeys`: the current one, plus the previous during its transition. */
  eventKeys(now = Date.now()): Array<{ keyId: string; publicKey: Uint8Array<ArrayBuffer> }> {
    const current = this.#signing[this.#signing.length - 1]!;
    const keys = [{ keyId: current.keyId, publicKey: bin(current.publicKey) }];
    const previous = this.#signing[this.#signing.length - 2];
    if (previous && now < this.#previousKeyUntil) keys.push({ keyId: previous.keyId, publicKey: bin(previous.publicKey) });
    return keys;
  }

  nodeInfo(nodeId: string): { meshIp: string; publicKey: string | null; endpoints: string[]; tags: string[]; lastSeq: number; ackedSeq: number } | null {
    const n = this.#nodes.get(nodeId);
    return n ? { meshIp: intToIp(n.meshIp), publicKey: n.publicKey, endpoints: [...n.endpoints], tags: [...n.tags], lastSeq: n.lastSeq, ackedSeq: n.ackedSeq } : null;
  }

  feed(after: number, nodeId: string | null, limit = 500): FeedEntry[] {
    return this.#db.feedAfter(after, nodeId, limit).map((r) => ({
      id: r.id,
      ts: new Date(r.ts).toISOString(),
      nodeId: r.nodeId,
      kind: r.kind as FeedEntry['kind'],
      type: r.type,
      seq: r.seq,
      detail: JSON.parse(r.detail) as unknown,
    }));
  }

  /** Resolves when the feed grows or after `ms`. */
  waitForFeed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#feedWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#feedWaiters.add(done);
    });
  }

  lastFeedId(): number {
    return this.#db.lastFeedId();
  }

  /**
   * Stops: no new recompute or publishAll starts, the running one stops after its current batch
   * (every batch is a whole transaction), and the promise resolves when it has. Call before the store
   * closes.
   */
  close(): Promise<void> {
    this.#closed = true;
    for (const w of [...this.#feedWaiters]) w();
    return this.#serial.then(() => undefined);
  }
}

/** mesh_nodes.announced: the node's own part of its view; its peers are loaded from their rows. */
function announcedHead(json: string): Announced | null {
  const head = JSON.parse(json) as { meshIp: string; cidr: string } | null;
  return head === null ? null : { meshIp: head.meshIp, cidr: head.cidr, peers: new Map() };
}

/** What the feed may show of a payload: never PSKs or key material beyond public keys. */
function redact(type: EventType, payload: unknown): unknown {
  const p = payload as Record<string, unknown>;
  const stripPeers = (peers: unknown): unknown =>
    Array.isArray(peers) ? peers.map((x: Record<string, unknown>) => ({ ...x, psk: x.psk === undefined ? undefined : '[redacted]' })) : peers;
  switch (type) {
    case 'peer_added':
      return { peers: stripPeers(p.peers) };
    case 'node_state_updated': {
      const s = p.state as Record<string, unknown>;
      return { state: { ...s, peers: stripPeers(s.peers) } };
    }
    case 'signing_key_rotated':
      return { keyId: p.keyId, publicKey: Buffer.from(p.publicKey as Uint8Array).toString('base64'), transitionMs: p.transitionMs };
    case 'node_secrets_updated':
      return { keys: p.keys };
    default:
      return payload;
  }
}
