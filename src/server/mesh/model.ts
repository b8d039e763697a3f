import { MeshlinkError } from '../../errors.js';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../../util/logger.js';
import type { MeshNodeRow, MeshStore } from './store.js';
import { allocateAddress, inRange, intToIp, type MeshRange } from './addresses.js';
import { announcedPeerOf, pairKey, type Announced, type MeshInputs, type ViewChange } from './desired-state.js';
import type { Policy } from '../../admin-api/policy.js';
import { addJoinedPeers, permittedPeers } from './policy.js';
import type { SecretBox } from './secret-box.js';
import { endpointSchema, natReportSchema, wgKeySchema, type NatReport } from '../../contract/mesh-events.js';

/**
 * The mesh model in memory, kept in step with the store: the nodes (address, tags, WireGuard key,
 * endpoints, event seq, what each was told), who may talk to whom, and the pairs' PSKs. It is the
 * input of desired-state.ts; every write here also goes to the store, inside the caller's
 * transaction where there is one (the methods that write in one take its `tx`: on SQLite a query on
 * the root store inside a transaction would wait for itself).
 */

export interface ModelNode {
  id: string;
  hostname: string;
  tags: string[];
  meshIp: number;
  publicKey: string | null;
  endpoints: string[];
  /** The NAT report of its last hello (reflexive endpoint, mapping class); null: none. */
  nat: NatReport | null;
  /** The address its control connection came from: shown to the operator, never used as a UDP endpoint. */
  observedAddr: string | null;
  lastSeq: number;
  announced: Announced | null;
  ackedSeq: number;
}

export class MeshModel implements MeshInputs {
  readonly nodes = new Map<string, ModelNode>();
  readonly psks = new Map<string, Buffer>();
  /** Pairs held on the relay because their direct path failed (path-health.ts; set by the service; path.ts pairsByPath reads it). */
  forcedRelay: ReadonlySet<string> = new Set();
  /** Recomputed from tags and policy by a full recompute (`permit`). */
  permitted = new Map<string, Set<string>>();
  /**
   * Bumped by every change that can change a pair's path (path.ts): the permitted pairs, a node
   * joining or leaving, a key appearing or going, a NAT mapping class. What caches of paths key on.
   */
  #pathsVersion = 0;
  /** Which live node holds each WireGuard key: a key belongs to at most one (docs/MESH.md). */
  readonly #keyOwners = new Map<string, string>();
  readonly #db: MeshStore;
  readonly #box: SecretBox;
  readonly #range: MeshRange;
  readonly #log: Logger;

  constructor(db: MeshStore, box: SecretBox, range: MeshRange, log: Logger) {
    this.#db = db;
    this.#box = box;
    this.#range = range;
    this.#log = log;
  }

  get cidr(): string {
    return this.#range.cidr;
  }

  get pathsVersion(): number {
    return this.#pathsVersion;
  }

  /** Loads nodes, their announced views and the PSKs from the store. */
  async load(): Promise<void> {
    for (const row of await this.#db.meshNodes()) {
      if (!inRange(this.#range, row.meshIp)) {
        throw new MeshlinkError('ML_ERR_MESH_CIDR', `the mesh range ${this.#range.cidr} does not hold ${intToIp(row.meshIp)}, already assigned to node ${row.nodeId}`);
      }
      this.#add(modelOf(row, this.#log));
    }
    for (const r of await this.#db.announcedPeers()) {
      this.nodes.get(r.nodeId)?.announced?.peers.set(r.peerId, { meshIp: r.meshIp, publicKey: r.publicKey, endpoints: r.endpoints, pskTag: r.pskTag, path: r.path });
    }
    for (const p of await this.#db.psks()) this.psks.set(pairKey(p.a, p.b), this.#box.open(p.sealed, `psk:${pairKey(p.a, p.b)}`));
  }

  /**
   * Brings the model in line with the node table: live nodes without an address get one (enrollment),
   * removed nodes lose theirs (freed) with their PSKs and event log. Returns the nodes that joined and
   * left, or null when nothing changed; the caller recomputes.
   *
   * Not re-entrant: two sweeps at once would both see the same new nodes and allocate them twice.
   * The caller runs one at a time (MeshService runs it among its serialised writes).
   */
  async sweep(): Promise<{ added: string[]; removed: string[] } | null> {
    const added = await this.#db.nodesWithoutMesh();
    const removed = await this.#db.removedMeshNodes();
    if (added.length === 0 && removed.length === 0) return null;
    await this.#db.transaction(async (tx) => {
      for (const id of removed) await tx.deleteMeshNode(id);
      if (added.length > 0) {
        // Read in the transaction that inserts: the lowest free address, unique (mesh_nodes.mesh_ip).
        const used = await tx.usedAddresses();
        for (const id of added) {
          const ip = allocateAddress(this.#range, used);
          used.add(ip);
          await tx.insertMeshNode(id, ip);
        }
      }
    });
    // The model follows the commit (a rolled-back sweep leaves it as it was, and the next one retries).
    for (const id of removed) {
      this.#forget(id);
      for (const key of [...this.psks.keys()]) if (key.startsWith(`${id}\u0000`) || key.endsWith(`\u0000${id}`)) this.psks.delete(key);
    }
    // Reload the rows of the added nodes (hostname from the node table, tags from mesh_node_tags).
    if (added.length > 0) for (const row of await this.#db.meshNodes(added)) this.#add(modelOf(row, this.#log));
    if (removed.length > 0) this.#log.info({ removed }, 'nodes left the mesh; addresses freed');
    if (added.length > 0) this.#log.info({ added: added.length }, 'mesh addresses assigned');
    return { added, removed };
  }

  /** Who may talk to whom under `policy`, from the nodes' current tags (O(n²) for a full mesh). */
  permit(policy: Policy | null): void {
    this.permitted = permittedPeers([...this.nodes.values()], policy);
    this.#pathsVersion++;
  }

  /** Adds the permitted pairs of nodes that joined since the last `permit` (policy.ts addJoinedPeers). */
  permitJoined(policy: Policy | null, joined: ReadonlySet<string>): void {
    addJoinedPeers(this.permitted, [...this.nodes.values()], policy, joined);
    this.#pathsVersion++;
  }

  /**
   * Ensures a PSK for every permitted pair whose two nodes have reported a WireGuard key (only those
   * appear in a desired state), and drops the PSKs of pairs no longer permitted. Pairs of nodes that
   * never connected get none: a burst of enrollments into a large mesh would otherwise create
   * (and seal and store) n² keys nobody can use yet, blocking the server for seconds.
   * Writes through `tx`, the caller's transaction.
   */
  async syncPsks(tx: MeshStore, now: number, onlyNodes?: ReadonlySet<string>): Promise<void> {
    const wanted = new Set<string>();
    const keyed = (id: string): boolean => Boolean(this.nodes.get(id)?.publicKey);
    if (onlyNodes !== undefined) {
      // Some nodes' keys appeared or changed: only their pairs can need a new PSK, and none is dropped.
      for (const a of onlyNodes) {
        if (!keyed(a)) continue;
        for (const b of this.permitted.get(a) ?? []) if (keyed(b)) wanted.add(pairKey(a, b));
      }
    } else {
      for (const [a, set] of this.permitted) {
        if (!keyed(a)) continue;
        for (const b of set) if (a < b && keyed(b)) wanted.add(pairKey(a, b));
      }
    }
    if (onlyNodes === undefined) {
      const dropped: Array<[string, string]> = [];
      for (const key of [...this.psks.keys()]) {
        if (!wanted.has(key)) {
          dropped.push(key.split('\u0000') as [string, string]);
          this.psks.delete(key);
        }
      }
      await tx.deletePsks(dropped);
    }
    for (const key of wanted) {
      if (this.psks.has(key)) continue;
      const psk = randomBytes(32);
      const [a, b] = key.split('\u0000') as [string, string];
      await tx.insertPsk(a, b, this.#box.seal(psk, `psk:${key}`), now);
      this.psks.set(key, psk);
    }
  }

  /**
   * Records what the events of `change` told the node, with its seq (through `tx`, the caller's
   * transaction). The model's view changes at once, before the writes: the caller's events were
   * appended from it, and the next diff must start from it.
   */
  async recordView(tx: MeshStore, node: ModelNode, change: ViewChange): Promise<void> {
    const announced = applyViewChange(node.announced, change);
    node.announced = announced;
    const lastSeq = node.lastSeq;
    if (change.snapshot) await tx.deleteAnnouncedOf(node.id);
    else await tx.deleteAnnouncedPeers(node.id, change.removed);
    for (const p of change.snapshot?.peers ?? change.upserts) await tx.upsertAnnouncedPeer(node.id, p.nodeId, announced.peers.get(p.nodeId)!);
    await tx.setAnnounced(node.id, JSON.stringify({ meshIp: announced.meshIp, cidr: announced.cidr }), lastSeq);
  }

  /** Something outside the model moved a pair's path (the switching of path-health.ts). */
  pathsChanged(): void {
    this.#pathsVersion++;
  }

  /** The live node that holds WireGuard key `publicKey`, if any. */
  keyOwner(publicKey: string): string | undefined {
    return this.#keyOwners.get(publicKey);
  }

  #add(node: ModelNode): void {
    this.#forget(node.id);
    this.#pathsVersion++;
    this.nodes.set(node.id, node);
    // mesh_nodes has a unique index on the key (mesh migration 110): no two loaded rows share one.
    if (node.publicKey !== null) this.#keyOwners.set(node.publicKey, node.id);
  }

  #forget(id: string): void {
    const old = this.nodes.get(id);
    if (old?.publicKey && this.#keyOwners.get(old.publicKey) === id) this.#keyOwners.delete(old.publicKey);
    if (this.nodes.delete(id)) this.#pathsVersion++;
  }

  /**
   * Records the WireGuard facts a node reported (key, endpoints, the address it connected from),
   * checked by the caller against the schemas (MeshService.checkSelfReport). A key another live node
   * holds is refused here too: two sessions' hellos can pass their checks before either is recorded.
   * Changes the model at once (the key check and its claim are one step); `persistWg` stores it.
   */
  updateWg(node: ModelNode, publicKey: string | null, endpoints: readonly string[], observedAddr: string | null, nat: NatReport | null = node.nat): void {
    const owner = publicKey === null ? undefined : this.#keyOwners.get(publicKey);
    if (owner !== undefined && owner !== node.id) throw new MeshlinkError('ML_ERR_MESH_KEY_IN_USE', `node ${node.id} reported the WireGuard key of node ${owner}`);
    if (node.publicKey !== null && this.#keyOwners.get(node.publicKey) === node.id) this.#keyOwners.delete(node.publicKey);
    if (publicKey !== null) this.#keyOwners.set(publicKey, node.id);
    if ((node.publicKey === null) !== (publicKey === null) || (node.nat?.mapping ?? null) !== (nat?.mapping ?? null)) this.#pathsVersion++;
    node.publicKey = publicKey;
    node.endpoints = [...endpoints];
    node.observedAddr = observedAddr;
    node.nat = nat;
  }

  /** Stores the node's WireGuard facts as the model holds them now (after `updateWg`). */
  async persistWg(node: ModelNode): Promise<void> {
    await this.#db.updateWg(node.id, node.publicKey, node.endpoints, node.observedAddr, node.nat);
  }

  /** Writes a node's event seq (after appends that do not change its view), through `tx`. */
  async saveSeq(tx: MeshStore, node: ModelNode): Promise<void> {
    await tx.setLastSeq(node.id, node.lastSeq);
  }
}

/**
 * A node's view after the events of `change`: a snapshot replaces it; otherwise the upserts and
 * removals are applied to `view` in place (a view can hold thousands of peers; copying it for every
 * change of a recompute would cost O(n²) per recompute).
 */
export function applyViewChange(view: Announced | null, change: ViewChange): Announced {
  if (change.snapshot) {
    const fresh: Announced = { meshIp: change.snapshot.meshIp, cidr: change.snapshot.cidr, peers: new Map() };
    for (const p of change.snapshot.peers) fresh.peers.set(p.nodeId, announcedPeerOf(p));
    return fresh;
  }
  if (view === null) throw new Error('a view change without a snapshot needs a view to apply to');
  for (const p of change.upserts) view.peers.set(p.nodeId, announcedPeerOf(p));
  for (const id of change.removed) view.peers.delete(id);
  return view;
}

/**
 * A node as loaded. A key or endpoint that fails the schema its peers apply (stored by a server from
 * before the check, issue 17) is not used: the node reports its facts again on its next connection.
 */
function modelOf(row: MeshNodeRow, log: Logger): ModelNode {
  const publicKey = row.wgPublicKey !== null && !wgKeySchema.safeParse(row.wgPublicKey).success ? null : row.wgPublicKey;
  const endpoints = row.endpoints.filter((e) => endpointSchema.safeParse(e).success);
  const nat = row.nat === null ? null : (natReportSchema.safeParse(row.nat).data ?? null);
  if (publicKey !== row.wgPublicKey || endpoints.length !== row.endpoints.length) log.warn({ nodeId: row.nodeId }, 'stored WireGuard key or endpoint is invalid; ignored until the node reports it again');
  return {
    id: row.nodeId,
    hostname: row.hostname,
    tags: row.tags,
    meshIp: row.meshIp,
    publicKey,
    endpoints,
    nat,
    observedAddr: row.observedAddr,
    lastSeq: row.lastSeq,
    announced: announcedHead(row.announced),
    ackedSeq: 0,
  };
}

/** mesh_nodes.announced: the node's own part of its view; its peers are loaded from their rows. */
function announcedHead(json: string): Announced | null {
  const head = JSON.parse(json) as { meshIp: string; cidr: string } | null;
  return head === null ? null : { meshIp: head.meshIp, cidr: head.cidr, peers: new Map() };
}
