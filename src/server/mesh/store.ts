import { sql, type Generated, type Insertable, type Kysely, type Selectable } from 'kysely';
import { compiledStatement } from '../store/compiled-statement.js';
import type { Queryable, StoreDatabase } from '../store/database.js';

/**
 * All SQL of the mesh feature (tables in ./migrations.ts), on either backend (../store/database.ts).
 * Short indexed statements; fan-out writes for many nodes go in one transaction (see `transaction`).
 * Every method is async: on SQLite a query still runs synchronously inside better-sqlite3 and settles
 * in a microtask; on PostgreSQL it is a round trip.
 *
 * A MeshStore is either the root one (queries on the store's handle) or one bound to a transaction
 * (the `tx` that `transaction(fn)` gives `fn`): inside a transaction every call must go through
 * `tx`, because on SQLite a query on the root handle would wait for the transaction that runs it.
 *
 * The fan-out rows of a transaction (events, PSKs, what a node was told of each peer, feed rows) are
 * queued by the transaction's store and written just before the commit, several rows a statement:
 * a recompute writes a row per peer per node, and one statement each cost a builder compilation
 * (and on PostgreSQL a round trip) per row. A delete or prune issued meanwhile also drops the
 * matching queued rows, so the committed rows are those the statements in call order would leave.
 * Reads in a transaction do not see queued rows (none of the mesh's transactions reads what it wrote).
 */

export interface MeshNodeRow {
  nodeId: string;
  hostname: string;
  tags: string[];
  meshIp: number;
  wgPublicKey: string | null;
  endpoints: string[];
  /** JSON of the node's NAT report (parsed, unchecked: model.ts checks it), or null. */
  nat: unknown;
  observedAddr: string | null;
  lastSeq: number;
  /** JSON: {meshIp, cidr} the node was told, or null; its peers are in `announcedPeers`. */
  announced: string;
}

/** One row of what a node was told about a peer (mesh_announced_peers). */
export interface AnnouncedPeerRow {
  nodeId: string;
  peerId: string;
  meshIp: string;
  publicKey: string;
  endpoints: string[];
  pskTag: string;
  path: 'direct' | 'relay' | null;
}

export interface StoredEvent {
  nodeId: string;
  seq: number;
  type: string;
  ts: number;
  sealed: Buffer;
  signature: Buffer;
  keyId: string;
}

export interface FeedRow {
  id: number;
  ts: number;
  nodeId: string | null;
  kind: string;
  type: string;
  seq: number | null;
  detail: string;
}

/** Mesh fields of a live node, for `nodes list` and `nodes show`. */
export interface MeshListingRow {
  meshIp: number | null;
  wgPublicKey: string | null;
  tags: string[];
  endpoints: string[];
  observedAddr: string | null;
  nat: unknown;
}

/** Column types of the mesh's tables (and the core columns its queries join), as the query layer sees them. */
interface MeshTables {
  mesh_settings: { key: string; value: string };
  mesh_master: { id: number; key_blob: Buffer; kdf_salt: Buffer };
  mesh_signing_keys: { key_id: string; public_key: Buffer; sealed_pkcs8: Buffer; created_at: number; seq: Generated<number | null> };
  mesh_nodes: {
    node_id: string; mesh_ip: number; wg_public_key: string | null; endpoints: Generated<string>; observed_addr: string | null;
    last_seq: Generated<number>; announced: Generated<string>; nat: string | null;
  };
  mesh_announced_peers: { node_id: string; peer_id: string; mesh_ip: string; public_key: string; endpoints: string; psk_tag: string; path: 'direct' | 'relay' | null };
  mesh_psks: { node_a: string; node_b: string; sealed: Buffer; created_at: number };
  mesh_events: { node_id: string; seq: number; type: string; ts: number; sealed: Buffer; signature: Buffer; key_id: string };
  mesh_feed: { id: Generated<number>; ts: number; node_id: string | null; kind: string; type: string; seq: number | null; detail: string };
  mesh_token_tags: { token_hash: string; tags: string };
  mesh_node_tags: { node_id: string; tags: string };
  // The core's, read only (joins and the conditional inserts that check a node or token exists).
  nodes: { id: string; hostname: string; created_at: number; removed_at: number | null };
  tokens: { hash: string; consumed_at: number | null };
}

type Db = Kysely<MeshTables>;
type Row<T extends keyof MeshTables> = Insertable<MeshTables[T]>;

/** The writes a transaction's store holds until its commit (see the class comment). */
interface Queued {
  psks: Map<string, Row<'mesh_psks'>>;
  events: Row<'mesh_events'>[];
  /** Per node: delete its events up to this seq, after the queued inserts. */
  prunes: Map<string, number>;
  announced: Map<string, Row<'mesh_announced_peers'>>;
  feed: Row<'mesh_feed'>[];
  /** Per node: its new last_seq, and its new `announced` head when it was set. */
  heads: Map<string, { announced?: string; lastSeq: number }>;
}

/**
 * Rows per multi-row statement. Every batch is one of these sizes, so each statement has at most
 * four SQL texts (the statement cache keeps one prepared statement per text); 64 rows of the widest
 * table bind 448 values, far below either backend's limit.
 */
const CHUNK_SIZES = [64, 16, 4, 1] as const;
function chunked<T>(rows: readonly T[]): T[][] {
  const out: T[][] = [];
  let i = 0;
  for (const size of CHUNK_SIZES) {
    while (rows.length - i >= size) {
      out.push(rows.slice(i, i + size));
      i += size;
    }
  }
  return out;
}
const peerKey = (nodeId: string, peerId: string): string => `${nodeId}\u0000${peerId}`;

function parseTags(text: unknown): string[] {
  try {
    const v = JSON.parse(String(text)) as unknown;
    return Array.isArray(v) ? v.filter((t): t is string => typeof t === 'string') : [];
  } catch {
    return [];
  }
}

/** Rows changed by an INSERT, UPDATE or DELETE (Kysely reports a bigint). */
const changed = (r: { numInsertedOrUpdatedRows?: bigint; numUpdatedRows?: bigint; numDeletedRows?: bigint } | undefined): number =>
  Number(r?.numInsertedOrUpdatedRows ?? r?.numUpdatedRows ?? r?.numDeletedRows ?? 0n);

// The statements every connect and enrollment runs (replay, a node's view reset, its tags), compiled
// once (../store/compiled-statement.ts: the builder's per-query cost is several times SQLite's).
const EVENTS_AFTER = compiledStatement(['node', 'seq'], (db, v) => (db as Db).selectFrom('mesh_events').selectAll().where('node_id', '=', v.node).where('seq', '>', v.seq).orderBy('seq'));
const OLDEST_SEQ = compiledStatement(['node'], (db, v) => (db as Db).selectFrom('mesh_events').select((eb) => eb.fn.min('seq').as('s')).where('node_id', '=', v.node));
const DELETE_ANNOUNCED_OF = compiledStatement(['node'], (db, v) => (db as Db).deleteFrom('mesh_announced_peers').where('node_id', '=', v.node));
const CLAIM_TOKEN_TAGS = compiledStatement(['node', 'hash'], (db, v) =>
  (db as Db).insertInto('mesh_node_tags').columns(['node_id', 'tags'])
    .expression((eb) => eb.selectFrom('mesh_token_tags').select((s) => [s.val(v.node).as('node_id'), 'tags']).where('token_hash', '=', v.hash).where('tags', '<>', '[]'))
    .onConflict((oc) => oc.column('node_id').doUpdateSet({ tags: (eb) => eb.ref('excluded.tags') })));

export class MeshStore {
  readonly #database: StoreDatabase;
  readonly #db: Db;
  /** The queued writes of a store bound to a transaction's handle; null for the root store. */
  readonly #queued: Queued | null;

  constructor(database: StoreDatabase, tx?: Queryable) {
    this.#database = database;
    this.#db = (tx ?? database.db) as Db;
    this.#queued = tx === undefined ? null : { psks: new Map(), events: [], prunes: new Map(), announced: new Map(), feed: [], heads: new Map() };
  }

  /**
   * Runs `fn` in one transaction (SQLite: BEGIN IMMEDIATE), with a MeshStore bound to it: every store
   * call inside `fn` goes through `tx`. The queued rows are written when `fn` resolves, then it
   * commits; a throw rolls everything back.
   */
  transaction<T>(fn: (tx: MeshStore) => Promise<T>): Promise<T> {
    if (this.#queued !== null) return Promise.reject(new Error('MeshStore.transaction: already inside a transaction (use the tx given)'));
    return this.#database.transaction(async (q) => {
      const tx = new MeshStore(this.#database, q);
      const result = await fn(tx);
      await tx.#flush();
      return result;
    });
  }

  /** Writes the queued rows, several a statement, in an order that leaves what the calls in order would. */
  async #flush(): Promise<void> {
    const q = this.#queued!;
    for (const rows of chunked([...q.psks.values()])) await this.#db.insertInto('mesh_psks').values(rows).execute();
    for (const rows of chunked(q.events)) await this.#db.insertInto('mesh_events').values(rows).execute();
    for (const [nodeId, upTo] of q.prunes) await this.#db.deleteFrom('mesh_events').where('node_id', '=', nodeId).where('seq', '<=', upTo).execute();
    for (const rows of chunked([...q.announced.values()])) {
      await this.#db.insertInto('mesh_announced_peers').values(rows)
        .onConflict((oc) => oc.columns(['node_id', 'peer_id']).doUpdateSet((eb) => ({
          mesh_ip: eb.ref('excluded.mesh_ip'), public_key: eb.ref('excluded.public_key'), endpoints: eb.ref('excluded.endpoints'), psk_tag: eb.ref('excluded.psk_tag'), path: eb.ref('excluded.path'),
        }))).execute();
    }
    // In the order they were queued: ids grow with it (a multi-row insert numbers its rows in order).
    for (const rows of chunked(q.feed)) await this.#db.insertInto('mesh_feed').values(rows).execute();
    // One UPDATE ... FROM (VALUES ...) per chunk of nodes: the builder has no VALUES list, so this one
    // is SQL, in what both accept (SQLite 3.33+ and PostgreSQL name the columns column1, column2, ...;
    // the CAST gives PostgreSQL the type its untyped parameters lack).
    const heads = [...q.heads];
    const told = heads.filter(([, h]) => h.announced !== undefined);
    for (const rows of chunked(told)) {
      const values = sql.join(rows.map(([id, h]) => sql`(${id}, ${h.announced}, ${h.lastSeq})`));
      await sql`UPDATE mesh_nodes SET announced = v.column2, last_seq = CAST(v.column3 AS BIGINT) FROM (VALUES ${values}) AS v WHERE mesh_nodes.node_id = v.column1`.execute(this.#db);
    }
    for (const rows of chunked(heads.filter(([, h]) => h.announced === undefined))) {
      const values = sql.join(rows.map(([id, h]) => sql`(${id}, ${h.lastSeq})`));
      await sql`UPDATE mesh_nodes SET last_seq = CAST(v.column2 AS BIGINT) FROM (VALUES ${values}) AS v WHERE mesh_nodes.node_id = v.column1`.execute(this.#db);
    }
    q.heads.clear();
    q.psks.clear();
    q.events = [];
    q.prunes.clear();
    q.announced.clear();
    q.feed = [];
  }

  async getSetting(key: string): Promise<string | undefined> {
    return (await this.#db.selectFrom('mesh_settings').select('value').where('key', '=', key).executeTakeFirst())?.value;
  }
  async setSetting(key: string, value: string): Promise<void> {
    await this.#db.insertInto('mesh_settings').values({ key, value }).onConflict((oc) => oc.column('key').doUpdateSet({ value })).execute();
  }
  async deleteSetting(key: string): Promise<void> {
    await this.#db.deleteFrom('mesh_settings').where('key', '=', key).execute();
  }

  async getMaster(): Promise<{ blob: Buffer; salt: Buffer } | undefined> {
    const r = await this.#db.selectFrom('mesh_master').select(['key_blob', 'kdf_salt']).where('id', '=', 1).executeTakeFirst();
    return r ? { blob: Buffer.from(r.key_blob), salt: Buffer.from(r.kdf_salt) } : undefined;
  }
  async insertMaster(blob: Buffer, salt: Buffer): Promise<void> {
    await this.#db.insertInto('mesh_master').values({ id: 1, key_blob: blob, kdf_salt: salt }).execute();
  }
  /** Re-seals the master key (same key, new blob), only if the stored blob is still `previous`. */
  async replaceMaster(previous: Buffer, blob: Buffer, salt: Buffer): Promise<void> {
    await this.#db.updateTable('mesh_master').set({ key_blob: blob, kdf_salt: salt }).where('id', '=', 1).where('key_blob', '=', previous).execute();
  }

  /** Oldest first: by creation time, insertion order (`seq`, mesh migration 112) breaking ties. */
  async signingKeys(): Promise<Array<{ keyId: string; publicKey: Buffer; sealedPkcs8: Buffer; createdAt: number }>> {
    const rows = await this.#db.selectFrom('mesh_signing_keys').select(['key_id', 'public_key', 'sealed_pkcs8', 'created_at']).orderBy('created_at').orderBy('seq').execute();
    return rows.map((r) => ({ keyId: r.key_id, publicKey: Buffer.from(r.public_key), sealedPkcs8: Buffer.from(r.sealed_pkcs8), createdAt: r.created_at }));
  }
  async insertSigningKey(keyId: string, publicKey: Buffer, sealedPkcs8: Buffer, createdAt: number): Promise<void> {
    await this.#db.insertInto('mesh_signing_keys').values({ key_id: keyId, public_key: publicKey, sealed_pkcs8: sealedPkcs8, created_at: createdAt }).execute();
  }

  /** The live nodes' mesh rows, by address; only those of `ids` when given (a sweep's new nodes). */
  async meshNodes(ids?: readonly string[]): Promise<MeshNodeRow[]> {
    const query = this.#db.selectFrom('mesh_nodes as m').innerJoin('nodes as n', 'n.id', 'm.node_id').leftJoin('mesh_node_tags as t', 't.node_id', 'm.node_id')
      .selectAll('m').select(['n.hostname', 't.tags'])
      .where('n.removed_at', 'is', null).orderBy('m.mesh_ip');
    let rows;
    if (ids === undefined) rows = await query.execute();
    else {
      rows = [];
      for (const chunk of chunked(ids)) rows.push(...(await query.where('m.node_id', 'in', chunk).execute()));
      rows.sort((x, y) => x.mesh_ip - y.mesh_ip);
    }
    return rows.map((r) => ({
      nodeId: r.node_id,
      hostname: r.hostname,
      tags: parseTags(r.tags),
      meshIp: r.mesh_ip,
      wgPublicKey: r.wg_public_key ?? null,
      endpoints: parseTags(r.endpoints),
      nat: parseJson(r.nat),
      observedAddr: r.observed_addr ?? null,
      lastSeq: r.last_seq,
      announced: r.announced,
    }));
  }
  async nodesWithoutMesh(): Promise<string[]> {
    const rows = await this.#db.selectFrom('nodes').select('id')
      .where('removed_at', 'is', null).where('id', 'not in', (eb) => eb.selectFrom('mesh_nodes').select('node_id'))
      .orderBy('created_at').orderBy('id').execute();
    return rows.map((r) => r.id);
  }
  async removedMeshNodes(): Promise<string[]> {
    const rows = await this.#db.selectFrom('mesh_nodes as m').innerJoin('nodes as n', 'n.id', 'm.node_id').select('m.node_id').where('n.removed_at', 'is not', null).execute();
    return rows.map((r) => r.node_id);
  }
  async usedAddresses(): Promise<Set<number>> {
    return new Set((await this.#db.selectFrom('mesh_nodes').select('mesh_ip').execute()).map((r) => r.mesh_ip));
  }
  async insertMeshNode(nodeId: string, meshIp: number): Promise<void> {
    await this.#db.insertInto('mesh_nodes').values({ node_id: nodeId, mesh_ip: meshIp, wg_public_key: null, observed_addr: null, nat: null }).execute();
  }
  /**
   * Drops everything the mesh holds for a node: its address (freed), PSKs, event log and its own view.
   * Other nodes' rows about it stay until their peer_removed is sent (the recompute deletes them).
   * Several statements: call it on a transaction's store.
   */
  async deleteMeshNode(nodeId: string): Promise<void> {
    const q = this.#queued;
    if (q) {
      for (const [key, r] of q.announced) if (r.node_id === nodeId) q.announced.delete(key);
      q.events = q.events.filter((e) => e.node_id !== nodeId);
      q.prunes.delete(nodeId);
      for (const [key, r] of q.psks) if (r.node_a === nodeId || r.node_b === nodeId) q.psks.delete(key);
      q.heads.delete(nodeId);
    }
    await this.#db.deleteFrom('mesh_announced_peers').where('node_id', '=', nodeId).execute();
    await this.#db.deleteFrom('mesh_events').where('node_id', '=', nodeId).execute();
    await this.#db.deleteFrom('mesh_psks').where((eb) => eb.or([eb('node_a', '=', nodeId), eb('node_b', '=', nodeId)])).execute();
    await this.#db.deleteFrom('mesh_nodes').where('node_id', '=', nodeId).execute();
  }
  async updateWg(nodeId: string, wgPublicKey: string | null, endpoints: string[], observedAddr: string | null, nat: unknown): Promise<void> {
    await this.#db.updateTable('mesh_nodes')
      .set({ wg_public_key: wgPublicKey, endpoints: JSON.stringify(endpoints), observed_addr: observedAddr, nat: nat === null || nat === undefined ? null : JSON.stringify(nat) })
      .where('node_id', '=', nodeId).execute();
  }
  /** In a transaction: queued until its commit (the last value per node wins). */
  async setAnnounced(nodeId: string, announced: string, lastSeq: number): Promise<void> {
    if (this.#queued) {
      this.#queued.heads.set(nodeId, { announced, lastSeq });
      return;
    }
    await this.#db.updateTable('mesh_nodes').set({ announced, last_seq: lastSeq }).where('node_id', '=', nodeId).execute();
  }
  async announcedPeers(): Promise<AnnouncedPeerRow[]> {
    return (await this.#db.selectFrom('mesh_announced_peers').selectAll().execute()).map(announcedFromRow);
  }
  /** What the events sent so far told one node about its peers, by peer id. */
  async announcedPeersOf(nodeId: string): Promise<AnnouncedPeerRow[]> {
    return (await this.#db.selectFrom('mesh_announced_peers').selectAll().where('node_id', '=', nodeId).orderBy('peer_id').execute()).map(announcedFromRow);
  }
  /** In a transaction: queued until its commit (the last one for a pair wins). */
  async upsertAnnouncedPeer(nodeId: string, peerId: string, p: { meshIp: string; publicKey: string; endpoints: string[]; pskTag: string; path: 'direct' | 'relay' | null }): Promise<void> {
    const row = { mesh_ip: p.meshIp, public_key: p.publicKey, endpoints: JSON.stringify(p.endpoints), psk_tag: p.pskTag, path: p.path };
    if (this.#queued) {
      this.#queued.announced.set(peerKey(nodeId, peerId), { node_id: nodeId, peer_id: peerId, ...row });
      return;
    }
    await this.#db.insertInto('mesh_announced_peers').values({ node_id: nodeId, peer_id: peerId, ...row })
      .onConflict((oc) => oc.columns(['node_id', 'peer_id']).doUpdateSet(row)).execute();
  }
  /** Forgets what a node was told of these peers (queued rows for them too), up to 64 a statement. */
  async deleteAnnouncedPeers(nodeId: string, peerIds: readonly string[]): Promise<void> {
    for (const id of peerIds) this.#queued?.announced.delete(peerKey(nodeId, id));
    for (const ids of chunked(peerIds)) await this.#db.deleteFrom('mesh_announced_peers').where('node_id', '=', nodeId).where('peer_id', 'in', ids).execute();
  }
  /** Forgets a node's whole view of its peers (before a snapshot replaces it). */
  async deleteAnnouncedOf(nodeId: string): Promise<void> {
    const q = this.#queued;
    if (q) for (const [key, r] of q.announced) if (r.node_id === nodeId) q.announced.delete(key);
    await DELETE_ANNOUNCED_OF(this.#db, { node: nodeId });
  }
  /** In a transaction: queued until its commit (the last value per node wins). */
  async setLastSeq(nodeId: string, lastSeq: number): Promise<void> {
    const q = this.#queued;
    if (q) {
      const head = q.heads.get(nodeId);
      q.heads.set(nodeId, head?.announced !== undefined ? { announced: head.announced, lastSeq } : { lastSeq });
      return;
    }
    await this.#db.updateTable('mesh_nodes').set({ last_seq: lastSeq }).where('node_id', '=', nodeId).execute();
  }
  /** Sets a live node's tags; false when there is no such live node. */
  async setTags(nodeId: string, tags: string[]): Promise<boolean> {
    const text = JSON.stringify(tags);
    const r = await this.#db.insertInto('mesh_node_tags').columns(['node_id', 'tags'])
      .expression((eb) => eb.selectFrom('nodes').select((s) => [s.ref('id').as('node_id'), s.val(text).as('tags')]).where('id', '=', nodeId).where('removed_at', 'is', null))
      .onConflict((oc) => oc.column('node_id').doUpdateSet({ tags: (eb) => eb.ref('excluded.tags') })).executeTakeFirst();
    return changed(r) === 1;
  }

  async psks(): Promise<Array<{ a: string; b: string; sealed: Buffer }>> {
    return (await this.#db.selectFrom('mesh_psks').select(['node_a', 'node_b', 'sealed']).execute()).map((r) => ({ a: r.node_a, b: r.node_b, sealed: Buffer.from(r.sealed) }));
  }
  /** In a transaction: queued until its commit. */
  async insertPsk(a: string, b: string, sealed: Buffer, now: number): Promise<void> {
    if (this.#queued) {
      this.#queued.psks.set(peerKey(a, b), { node_a: a, node_b: b, sealed, created_at: now });
      return;
    }
    await this.#db.insertInto('mesh_psks').values({ node_a: a, node_b: b, sealed, created_at: now }).execute();
  }
  /** Deletes the PSKs of these pairs (queued ones too), up to 64 pairs a statement. */
  async deletePsks(pairs: ReadonlyArray<readonly [a: string, b: string]>): Promise<void> {
    for (const [a, b] of pairs) this.#queued?.psks.delete(peerKey(a, b));
    for (const rows of chunked(pairs)) {
      await this.#db.deleteFrom('mesh_psks').where((eb) => eb.or(rows.map(([a, b]) => eb.and([eb('node_a', '=', a), eb('node_b', '=', b)])))).execute();
    }
  }


  /** In a transaction: queued until its commit. */
  async insertEvent(e: StoredEvent): Promise<void> {
    const row = { node_id: e.nodeId, seq: e.seq, type: e.type, ts: e.ts, sealed: e.sealed, signature: e.signature, key_id: e.keyId };
    if (this.#queued) {
      this.#queued.events.push(row);
      return;
    }
    await this.#db.insertInto('mesh_events').values(row).execute();
  }
  async eventsAfter(nodeId: string, seq: number): Promise<StoredEvent[]> {
    const rows = (await EVENTS_AFTER(this.#db, { node: nodeId, seq })).rows as Array<Row<'mesh_events'>>;
    return rows.map((r) => ({ nodeId: r.node_id, seq: r.seq, type: r.type, ts: r.ts, sealed: r.sealed, signature: r.signature, keyId: r.key_id }));
  }
  /** When the node's event `seq` was created, if it is still kept. */
  async eventTs(nodeId: string, seq: number): Promise<number | undefined> {
    return (await this.#db.selectFrom('mesh_events').select('ts').where('node_id', '=', nodeId).where('seq', '=', seq).executeTakeFirst())?.ts;
  }
  async oldestSeq(nodeId: string): Promise<number | null> {
    const r = (await OLDEST_SEQ(this.#db, { node: nodeId })).rows[0] as { s: number | bigint | null } | undefined;
    return r?.s === null || r?.s === undefined ? null : Number(r.s);
  }
  /** In a transaction: drops the queued events it covers now, and the stored ones at the commit. */
  async pruneEvents(nodeId: string, upToSeq: number): Promise<void> {
    const q = this.#queued;
    if (q) {
      if (q.events.some((e) => e.node_id === nodeId && e.seq <= upToSeq)) q.events = q.events.filter((e) => e.node_id !== nodeId || e.seq > upToSeq);
      q.prunes.set(nodeId, Math.max(upToSeq, q.prunes.get(nodeId) ?? upToSeq));
      return;
    }
    await this.#db.deleteFrom('mesh_events').where('node_id', '=', nodeId).where('seq', '<=', upToSeq).execute();
  }

  /** Appends a feed row: in a transaction, queued until its commit (in order, after its events). */
  async queueFeed(row: Omit<FeedRow, 'id'>): Promise<void> {
    const r = { ts: row.ts, node_id: row.nodeId, kind: row.kind, type: row.type, seq: row.seq, detail: row.detail };
    if (this.#queued) {
      this.#queued.feed.push(r);
      return;
    }
    await this.#db.insertInto('mesh_feed').values(r).execute();
  }

  /** Appends a feed row now; its id (ids grow with insertion). */
  async insertFeed(row: Omit<FeedRow, 'id'>): Promise<number> {
    const r = await this.#db.insertInto('mesh_feed').values({ ts: row.ts, node_id: row.nodeId, kind: row.kind, type: row.type, seq: row.seq, detail: row.detail })
      .returning('id').executeTakeFirstOrThrow();
    return Number(r.id);
  }
  async feedAfter(id: number, nodeId: string | null, limit: number): Promise<FeedRow[]> {
    let q = this.#db.selectFrom('mesh_feed').selectAll().where('id', '>', id);
    if (nodeId !== null) q = q.where('node_id', '=', nodeId);
    const rows = await q.orderBy('id').limit(limit).execute();
    return rows.map((r) => ({ id: Number(r.id), ts: r.ts, nodeId: r.node_id ?? null, kind: r.kind, type: r.type, seq: r.seq ?? null, detail: r.detail }));
  }
  async lastFeedId(): Promise<number> {
    const r = await this.#db.selectFrom('mesh_feed').select((eb) => eb.fn.coalesce(eb.fn.max('id'), eb.lit(0)).as('id')).executeTakeFirst();
    return Number(r?.id ?? 0);
  }
  async pruneFeed(upToId: number): Promise<void> {
    await this.#db.deleteFrom('mesh_feed').where('id', '<=', upToId).execute();
  }

  /** The tags a token gives the node that enrolls with it (by its SHA-256; none: []). */
  async tokenTags(hash: string): Promise<string[]> {
    const r = await this.#db.selectFrom('mesh_token_tags').select('tags').where('token_hash', '=', hash).executeTakeFirst();
    return r ? parseTags(r.tags) : [];
  }
  /** The tags of every tagged token by its SHA-256 (one query for a whole `token list`). */
  async allTokenTags(): Promise<Map<string, string[]>> {
    const rows = await this.#db.selectFrom('mesh_token_tags').select(['token_hash', 'tags']).execute();
    return new Map(rows.map((r) => [r.token_hash, parseTags(r.tags)]));
  }

  /** Sets the tags of a not yet used token (by its SHA-256). */
  async tagToken(hash: string, tags: string[]): Promise<boolean> {
    const text = JSON.stringify(tags);
    const r = await this.#db.insertInto('mesh_token_tags').columns(['token_hash', 'tags'])
      .expression((eb) => eb.selectFrom('tokens').select((s) => [s.ref('hash').as('token_hash'), s.val(text).as('tags')]).where('hash', '=', hash).where('consumed_at', 'is', null))
      .onConflict((oc) => oc.column('token_hash').doUpdateSet({ tags: (eb) => eb.ref('excluded.tags') })).executeTakeFirst();
    return changed(r) === 1;
  }

  /**
   * The enrollment commit's part for the mesh, run inside its transaction (`tx`, the enrollment
   * hook's handle): the node takes the tags of the token it enrolled with. A token without tags gives
   * a new node none and leaves a re-enrolled node's tags as they were.
   */
  async claimTokenTags(tokenHash: string, nodeId: string, tx: Queryable): Promise<void> {
    await CLAIM_TOKEN_TAGS(tx, { node: nodeId, hash: tokenHash });
  }

  /** Mesh fields of every live node, for `nodes list`; `nodeId`: of that node only. */
  async listing(nodeId?: string): Promise<Map<string, MeshListingRow>> {
    let q = this.#db.selectFrom('nodes as n').leftJoin('mesh_nodes as m', 'm.node_id', 'n.id').leftJoin('mesh_node_tags as t', 't.node_id', 'n.id')
      .select(['n.id', 't.tags', 'm.mesh_ip', 'm.wg_public_key', 'm.endpoints', 'm.observed_addr', 'm.nat'])
      .where('n.removed_at', 'is', null);
    if (nodeId !== undefined) q = q.where('n.id', '=', nodeId);
    const out = new Map<string, MeshListingRow>();
    for (const r of await q.execute()) {
      out.set(r.id, {
        meshIp: r.mesh_ip ?? null,
        wgPublicKey: r.wg_public_key ?? null,
        tags: parseTags(r.tags),
        endpoints: r.endpoints === null || r.endpoints === undefined ? [] : parseTags(r.endpoints),
        observedAddr: r.observed_addr ?? null,
        nat: parseJson(r.nat),
      });
    }
    return out;
  }
}

function announcedFromRow(r: Selectable<MeshTables['mesh_announced_peers']>): AnnouncedPeerRow {
  return {
    nodeId: r.node_id,
    peerId: r.peer_id,
    meshIp: r.mesh_ip,
    publicKey: r.public_key,
    endpoints: parseTags(r.endpoints),
    pskTag: r.psk_tag,
    path: r.path === 'direct' || r.path === 'relay' ? r.path : null,
  };
}

function parseJson(text: unknown): unknown {
  if (typeof text !== 'string') return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return null;
  }
}
