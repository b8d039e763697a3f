import type Database from 'better-sqlite3';

/**
 * All SQL of the mesh feature (tables in ./migrations.ts). Synchronous, like ../store/store.ts: short
 * indexed statements; fan-out writes for many nodes go in one transaction (see `transaction`).
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

type Row = Record<string, unknown>;

function parseTags(text: unknown): string[] {
  try {
    const v = JSON.parse(String(text)) as unknown;
    return Array.isArray(v) ? v.filter((t): t is string => typeof t === 'string') : [];
  } catch {
    return [];
  }
}

export class MeshStore {
  private readonly s;

  constructor(private readonly db: Database.Database) {
    this.s = {
      getSetting: db.prepare('SELECT value FROM mesh_settings WHERE key = ?'),
      setSetting: db.prepare('INSERT INTO mesh_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      deleteSetting: db.prepare('DELETE FROM mesh_settings WHERE key = ?'),
      getMaster: db.prepare('SELECT key_blob, kdf_salt FROM mesh_master WHERE id = 1'),
      insertMaster: db.prepare('INSERT INTO mesh_master (id, key_blob, kdf_salt) VALUES (1, ?, ?)'),
      replaceMaster: db.prepare('UPDATE mesh_master SET key_blob = ?, kdf_salt = ? WHERE id = 1 AND key_blob = ?'),
      signingKeys: db.prepare('SELECT * FROM mesh_signing_keys ORDER BY created_at, rowid'),
      insertSigningKey: db.prepare('INSERT INTO mesh_signing_keys (key_id, public_key, sealed_pkcs8, created_at) VALUES (?, ?, ?, ?)'),
      meshNodes: db.prepare(`
        SELECT m.*, n.hostname, t.tags FROM mesh_nodes m JOIN nodes n ON n.id = m.node_id
        LEFT JOIN mesh_node_tags t ON t.node_id = m.node_id
        WHERE n.removed_at IS NULL ORDER BY m.mesh_ip`),
      nodesWithoutMesh: db.prepare(`
        SELECT id FROM nodes WHERE removed_at IS NULL AND id NOT IN (SELECT node_id FROM mesh_nodes) ORDER BY created_at, id`),
      removedMeshNodes: db.prepare(`
        SELECT m.node_id FROM mesh_nodes m JOIN nodes n ON n.id = m.node_id WHERE n.removed_at IS NOT NULL`),
      usedAddresses: db.prepare('SELECT mesh_ip FROM mesh_nodes'),
      insertMeshNode: db.prepare('INSERT INTO mesh_nodes (node_id, mesh_ip) VALUES (?, ?)'),
      deleteMeshNode: db.prepare('DELETE FROM mesh_nodes WHERE node_id = ?'),
      deleteEventsOf: db.prepare('DELETE FROM mesh_events WHERE node_id = ?'),
      deletePsksOf: db.prepare('DELETE FROM mesh_psks WHERE node_a = ? OR node_b = ?'),
      updateWg: db.prepare('UPDATE mesh_nodes SET wg_public_key = ?, endpoints = ?, observed_addr = ?, nat = ? WHERE node_id = ?'),
      setAnnounced: db.prepare('UPDATE mesh_nodes SET announced = ?, last_seq = ? WHERE node_id = ?'),
      announcedPeers: db.prepare('SELECT * FROM mesh_announced_peers'),
      announcedPeersOf: db.prepare('SELECT * FROM mesh_announced_peers WHERE node_id = ? ORDER BY peer_id'),
      tokenTags: db.prepare('SELECT tags FROM mesh_token_tags WHERE token_hash = ?'),
      upsertAnnouncedPeer: db.prepare(`
        INSERT INTO mesh_announced_peers (node_id, peer_id, mesh_ip, public_key, endpoints, psk_tag, path) VALUES (?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (node_id, peer_id) DO UPDATE SET mesh_ip = excluded.mesh_ip, public_key = excluded.public_key,
          endpoints = excluded.endpoints, psk_tag = excluded.psk_tag, path = excluded.path`),
      deleteAnnouncedPeer: db.prepare('DELETE FROM mesh_announced_peers WHERE node_id = ? AND peer_id = ?'),
      deleteAnnouncedOf: db.prepare('DELETE FROM mesh_announced_peers WHERE node_id = ?'),
      setLastSeq: db.prepare('UPDATE mesh_nodes SET last_seq = ? WHERE node_id = ?'),
      setTags: db.prepare(`
        INSERT INTO mesh_node_tags (node_id, tags) SELECT id, ? FROM nodes WHERE id = ? AND removed_at IS NULL
        ON CONFLICT (node_id) DO UPDATE SET tags = excluded.tags`),
      psks: db.prepare('SELECT node_a, node_b, sealed FROM mesh_psks'),
      insertPsk: db.prepare('INSERT INTO mesh_psks (node_a, node_b, sealed, created_at) VALUES (?, ?, ?, ?)'),
      deletePsk: db.prepare('DELETE FROM mesh_psks WHERE node_a = ? AND node_b = ?'),
      insertEvent: db.prepare('INSERT INTO mesh_events (node_id, seq, type, ts, sealed, signature, key_id) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      eventsAfter: db.prepare('SELECT * FROM mesh_events WHERE node_id = ? AND seq > ? ORDER BY seq'),
      oldestSeq: db.prepare('SELECT MIN(seq) AS s FROM mesh_events WHERE node_id = ?'),
      eventTs: db.prepare('SELECT ts FROM mesh_events WHERE node_id = ? AND seq = ?'),
      pruneEvents: db.prepare('DELETE FROM mesh_events WHERE node_id = ? AND seq <= ?'),
      insertFeed: db.prepare('INSERT INTO mesh_feed (ts, node_id, kind, type, seq, detail) VALUES (?, ?, ?, ?, ?, ?)'),
      feedAfter: db.prepare('SELECT * FROM mesh_feed WHERE id > ? ORDER BY id LIMIT ?'),
      feedAfterNode: db.prepare('SELECT * FROM mesh_feed WHERE id > ? AND node_id = ? ORDER BY id LIMIT ?'),
      lastFeedId: db.prepare('SELECT COALESCE(MAX(id), 0) AS id FROM mesh_feed'),
      pruneFeed: db.prepare('DELETE FROM mesh_feed WHERE id <= ?'),
      tagToken: db.prepare(`
        INSERT INTO mesh_token_tags (token_hash, tags) SELECT hash, ? FROM tokens WHERE hash = ? AND consumed_at IS NULL
        ON CONFLICT (token_hash) DO UPDATE SET tags = excluded.tags`),
      // A token without tags leaves the node's as they are (a re-enrollment keeps them).
      claimTokenTags: db.prepare(`
        INSERT INTO mesh_node_tags (node_id, tags) SELECT ?, tags FROM mesh_token_tags WHERE token_hash = ? AND tags <> '[]'
        ON CONFLICT (node_id) DO UPDATE SET tags = excluded.tags`),
      listing: db.prepare(`
        SELECT n.id, t.tags, m.mesh_ip, m.wg_public_key, m.endpoints, m.observed_addr, m.nat FROM nodes n
        LEFT JOIN mesh_nodes m ON m.node_id = n.id LEFT JOIN mesh_node_tags t ON t.node_id = n.id
        WHERE n.removed_at IS NULL`),
    };
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  getSetting(key: string): string | undefined {
    return (this.s.getSetting.get(key) as { value: string } | undefined)?.value;
  }
  setSetting(key: string, value: string): void {
    this.s.setSetting.run(key, value);
  }
  deleteSetting(key: string): void {
    this.s.deleteSetting.run(key);
  }

  getMaster(): { blob: Buffer; salt: Buffer } | undefined {
    const r = this.s.getMaster.get() as Row | undefined;
    return r ? { blob: r.key_blob as Buffer, salt: r.kdf_salt as Buffer } : undefined;
  }
  insertMaster(blob: Buffer, salt: Buffer): void {
    this.s.insertMaster.run(blob, salt);
  }
  /** Re-seals the master key (same key, new blob), only if the stored blob is still `previous`. */
  replaceMaster(previous: Buffer, blob: Buffer, salt: Buffer): void {
    this.s.replaceMaster.run(blob, salt, previous);
  }

  signingKeys(): Array<{ keyId: string; publicKey: Buffer; sealedPkcs8: Buffer; createdAt: number }> {
    return (this.s.signingKeys.all() as Row[]).map((r) => ({ keyId: r.key_id as string, publicKey: r.public_key as Buffer, sealedPkcs8: r.sealed_pkcs8 as Buffer, createdAt: r.created_at as number }));
  }
  insertSigningKey(keyId: string, publicKey: Buffer, sealedPkcs8: Buffer, createdAt: number): void {
    this.s.insertSigningKey.run(keyId, publicKey, sealedPkcs8, createdAt);
  }

  meshNodes(): MeshNodeRow[] {
    return (this.s.meshNodes.all() as Row[]).map((r) => ({
      nodeId: r.node_id as string,
      hostname: r.hostname as string,
      tags: parseTags(r.tags),
      meshIp: r.mesh_ip as number,
      wgPublicKey: (r.wg_public_key as string | null) ?? null,
      endpoints: parseTags(r.endpoints),
      nat: parseJson(r.nat),
      observedAddr: (r.observed_addr as string | null) ?? null,
      lastSeq: r.last_seq as number,
      announced: r.announced as string,
    }));
  }
  nodesWithoutMesh(): string[] {
    return (this.s.nodesWithoutMesh.all() as Row[]).map((r) => r.id as string);
  }
  removedMeshNodes(): string[] {
    return (this.s.removedMeshNodes.all() as Row[]).map((r) => r.node_id as string);
  }
  usedAddresses(): Set<number> {
    return new Set((this.s.usedAddresses.all() as Row[]).map((r) => r.mesh_ip as number));
  }
  insertMeshNode(nodeId: string, meshIp: number): void {
    this.s.insertMeshNode.run(nodeId, meshIp);
  }
  /**
   * Drops everything the mesh holds for a node: its address (freed), PSKs, event log and its own view.
   * Other nodes' rows about it stay until their peer_removed is sent (the recompute deletes them).
   */
  deleteMeshNode(nodeId: string): void {
    this.s.deleteAnnouncedOf.run(nodeId);
    this.s.deleteEventsOf.run(nodeId);
    this.s.deletePsksOf.run(nodeId, nodeId);
    this.s.deleteMeshNode.run(nodeId);
  }
  updateWg(nodeId: string, wgPublicKey: string | null, endpoints: string[], observedAddr: string | null, nat: unknown): void {
    this.s.updateWg.run(wgPublicKey, JSON.stringify(endpoints), observedAddr, nat === null || nat === undefined ? null : JSON.stringify(nat), nodeId);
  }
  setAnnounced(nodeId: string, announced: string, lastSeq: number): void {
    this.s.setAnnounced.run(announced, lastSeq, nodeId);
  }
  announcedPeers(): AnnouncedPeerRow[] {
    return (this.s.announcedPeers.all() as Row[]).map(announcedFromRow);
  }
  /** What the events sent so far told one node about its peers, by peer id. */
  announcedPeersOf(nodeId: string): AnnouncedPeerRow[] {
    return (this.s.announcedPeersOf.all(nodeId) as Row[]).map(announcedFromRow);
  }
  upsertAnnouncedPeer(nodeId: string, peerId: string, p: { meshIp: string; publicKey: string; endpoints: string[]; pskTag: string; path: 'direct' | 'relay' | null }): void {
    this.s.upsertAnnouncedPeer.run(nodeId, peerId, p.meshIp, p.publicKey, JSON.stringify(p.endpoints), p.pskTag, p.path);
  }
  deleteAnnouncedPeer(nodeId: string, peerId: string): void {
    this.s.deleteAnnouncedPeer.run(nodeId, peerId);
  }
  /** Forgets a node's whole view of its peers (before a snapshot replaces it). */
  deleteAnnouncedOf(nodeId: string): void {
    this.s.deleteAnnouncedOf.run(nodeId);
  }
  setLastSeq(nodeId: string, lastSeq: number): void {
    this.s.setLastSeq.run(lastSeq, nodeId);
  }
  setTags(nodeId: string, tags: string[]): boolean {
    return this.s.setTags.run(JSON.stringify(tags), nodeId).changes === 1;
  }

  psks(): Array<{ a: string; b: string; sealed: Buffer }> {
    return (this.s.psks.all() as Row[]).map((r) => ({ a: r.node_a as string, b: r.node_b as string, sealed: r.sealed as Buffer }));
  }
  insertPsk(a: string, b: string, sealed: Buffer, now: number): void {
    this.s.insertPsk.run(a, b, sealed, now);
  }
  deletePsk(a: string, b: string): void {
    this.s.deletePsk.run(a, b);
  }

  insertEvent(e: StoredEvent): void {
    this.s.insertEvent.run(e.nodeId, e.seq, e.type, e.ts, e.sealed, e.signature, e.keyId);
  }
  eventsAfter(nodeId: string, seq: number): StoredEvent[] {
    return (this.s.eventsAfter.all(nodeId, seq) as Row[]).map((r) => ({
      nodeId: r.node_id as string,
      seq: r.seq as number,
      type: r.type as string,
      ts: r.ts as number,
      sealed: r.sealed as Buffer,
      signature: r.signature as Buffer,
      keyId: r.key_id as string,
    }));
  }
  /** When the node's event `seq` was created, if it is still kept. */
  eventTs(nodeId: string, seq: number): number | undefined {
    return (this.s.eventTs.get(nodeId, seq) as { ts: number } | undefined)?.ts;
  }
  oldestSeq(nodeId: string): number | null {
    return (this.s.oldestSeq.get(nodeId) as { s: number | null }).s;
  }
  pruneEvents(nodeId: string, upToSeq: number): void {
    this.s.pruneEvents.run(nodeId, upToSeq);
  }

  insertFeed(row: Omit<FeedRow, 'id'>): void {
    this.s.insertFeed.run(row.ts, row.nodeId, row.kind, row.type, row.seq, row.detail);
  }
  feedAfter(id: number, nodeId: string | null, limit: number): FeedRow[] {
    const rows = (nodeId === null ? this.s.feedAfter.all(id, limit) : this.s.feedAfterNode.all(id, nodeId, limit)) as Row[];
    return rows.map((r) => ({
      id: r.id as number,
      ts: r.ts as number,
      nodeId: (r.node_id as string | null) ?? null,
      kind: r.kind as string,
      type: r.type as string,
      seq: (r.seq as number | null) ?? null,
      detail: r.detail as string,
    }));
  }
  lastFeedId(): number {
    return (this.s.lastFeedId.get() as { id: number }).id;
  }
  pruneFeed(upToId: number): void {
    this.s.pruneFeed.run(upToId);
  }

  /** The tags a token gives the node that enrolls with it (by its SHA-256; none: []). */
  tokenTags(hash: string): string[] {
    const r = this.s.tokenTags.get(hash) as Row | undefined;
    return r ? parseTags(r.tags) : [];
  }

  /** Sets the tags of a not yet used token (by its SHA-256). */
  tagToken(hash: string, tags: string[]): boolean {
    return this.s.tagToken.run(JSON.stringify(tags), hash).changes === 1;
  }

  /**
   * The enrollment commit's part for the mesh (run inside its transaction): the node takes the tags of
   * the token it enrolled with. A token without tags gives a new node none and leaves a re-enrolled
   * node's tags as they were.
   */
  claimTokenTags(tokenHash: string, nodeId: string): void {
    this.s.claimTokenTags.run(nodeId, tokenHash);
  }

  /** Mesh fields of every live node, for `nodes list`. */
  listing(): Map<string, { meshIp: number | null; wgPublicKey: string | null; tags: string[]; endpoints: string[]; observedAddr: string | null; nat: unknown }> {
    const out = new Map<string, { meshIp: number | null; wgPublicKey: string | null; tags: string[]; endpoints: string[]; observedAddr: string | null; nat: unknown }>();
    for (const r of this.s.listing.all() as Row[]) {
      out.set(r.id as string, {
        meshIp: (r.mesh_ip as number | null) ?? null,
        wgPublicKey: (r.wg_public_key as string | null) ?? null,
        tags: parseTags(r.tags),
        endpoints: r.endpoints === null || r.endpoints === undefined ? [] : parseTags(r.endpoints),
        observedAddr: (r.observed_addr as string | null) ?? null,
        nat: parseJson(r.nat),
      });
    }
    return out;
  }
}

function announcedFromRow(r: Row): AnnouncedPeerRow {
  return {
    nodeId: r.node_id as string,
    peerId: r.peer_id as string,
    meshIp: r.mesh_ip as string,
    publicKey: r.public_key as string,
    endpoints: parseTags(r.endpoints),
    pskTag: r.psk_tag as string,
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
