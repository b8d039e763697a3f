import { createHash } from 'node:crypto';
import { Decoder, Encoder } from '@msgpack/msgpack';
import { z } from 'zod';
import { zodErrorText } from '../util/zod-error.js';

/**
 * The mesh event format both sides agree on (docs/MESH.md): event types and their payload schemas,
 * the envelope {seq, type, ts, payload} and the state digest used by reconciliation.
 *
 * Neither side owns it: the server builds exactly what the agent will accept, the agent validates every
 * byte it is handed against the same schemas. The Ed25519 signature over the envelope bytes is in
 * ./ed25519.ts.
 */

export const EVENT_TYPES = [
  'peer_added',
  'peer_removed',
  'peer_key_rotated',
  'peer_endpoint_changed',
  'policy_updated',
  'rotate_keys',
  'signing_key_rotated',
  'node_state_updated',
  'node_secrets_updated',
  'action_request',
  'session_revoked',
  'relay_session_assigned',
  'relay_session_revoked',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** Base64 of 32 raw bytes, the way `wg genkey`/`wg pubkey`/`wg genpsk` print keys. */
export const wgKeySchema = z.string().regex(/^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/, 'a WireGuard key (base64 of 32 bytes)');
const nodeIdSchema = z.string().min(1).max(128);
const ipv4Schema = z.string().regex(/^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/, 'an IPv4 address');
const cidrSchema = z.string().regex(/^[0-9.]+\/\d{1,2}$/, 'an IPv4 CIDR');
/** `HOST:PORT` or `[v6]:PORT`. */
export const endpointSchema = z.string().min(3).max(300).regex(/^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'HOST:PORT');

/**
 * The NAT mapping class of a node (agent/mesh/nat-probe.ts): `none` (reachable where it listens),
 * `endpoint-independent` (one public port for every destination), `endpoint-dependent` (a new one per
 * destination), `unknown` (the alternate STUN port did not answer).
 */
export const NAT_MAPPINGS = ['none', 'endpoint-independent', 'endpoint-dependent', 'unknown'] as const;
export type NatMappingClass = (typeof NAT_MAPPINGS)[number];

/** A node's NAT report: its reflexive (public) endpoint as the STUN responder saw it, and the class. */
export const natReportSchema = z.object({
  reflexive: endpointSchema.nullable(),
  mapping: z.enum(NAT_MAPPINGS),
});
export type NatReport = z.infer<typeof natReportSchema>;

/**
 * What a node reports about itself, in `hello` and `event.ack` (docs/MESH.md): the server checks it with
 * exactly the schemas its peers apply to the peer entries built from it, before storing anything, so a
 * value one node sends can never become a peer entry the others must reject.
 */
export const selfReportSchema = z.object({
  wgPublicKey: wgKeySchema.optional(),
  /** The node's local endpoints (its own addresses with the WireGuard listen port). */
  endpoints: z.array(endpointSchema).max(32).optional(),
  /** What the node's STUN probe learned (docs/MESH.md, "NAT traversal"); absent: it did not probe. */
  nat: natReportSchema.optional(),
});
export type SelfReport = z.infer<typeof selfReportSchema>;

/**
 * How a pair of peers reaches each other, chosen by the server (server/mesh/path.ts): `direct` (to
 * the endpoints in the peer entry, the reflexive one first) or `relay` (through a relay allocation;
 * until one is assigned, the entry carries the peer's local endpoints).
 */
export const PEER_PATHS = ['direct', 'relay'] as const;
export type PeerPath = (typeof PEER_PATHS)[number];

/**
 * How a node reaches one of its peers now, as its agent measures it from WireGuard's counters
 * (agent/mesh/peer-watch.ts; docs/MESH.md, "Switching"): `up` when something was received from the
 * peer on the endpoint in force within the last PEER_DOWN_AFTER_MS, `down` when nothing was for that
 * long since the endpoint took effect, `pending` before either can be said (a new endpoint).
 */
export const PEER_LINK_STATES = ['up', 'down', 'pending'] as const;
export type PeerLinkState = (typeof PEER_LINK_STATES)[number];

/**
 * Silence after which a peer is `down`. The agent makes a silent peer answer (agent/mesh/peer-watch.ts,
 * PEER_PROBE_AFTER_MS): a working path shows received bytes within about 10 + 5 + 10 + 5 s (silence
 * before the probe, a sample, WireGuard's passive keepalive, the next sample); the rest is slack for a
 * handshake retry and a loaded host.
 */
export const PEER_DOWN_AFTER_MS = 45_000;
export const PEER_SAMPLE_MS = 5_000;

/** One entry of `peer.status` (the server checks each with this schema, as the agent builds it). */
export const peerLinkSchema = z.object({
  nodeId: nodeIdSchema,
  state: z.enum(PEER_LINK_STATES),
  /** The endpoint WireGuard was given for the peer (the relay's while a relay session is in force); null: none. */
  endpoint: endpointSchema.nullable(),
  /** Milliseconds since the peer's last completed handshake, as of sending; null: none since the interface knew the peer. */
  handshakeAgeMs: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable(),
});
export type PeerLink = z.infer<typeof peerLinkSchema>;

/** Entries of one `peer.status` message; an agent with more peers sends several. */
export const PEER_STATUS_MAX_ENTRIES = 1024;

export const peerSchema = z.object({
  nodeId: nodeIdSchema,
  meshIp: ipv4Schema,
  publicKey: wgKeySchema,
  endpoints: z.array(endpointSchema).max(32),
  psk: wgKeySchema,
  /** The pair's path (absent from servers before it was chosen: then direct to the endpoints). */
  path: z.enum(PEER_PATHS).optional(),
});
export type PeerInfo = z.infer<typeof peerSchema>;

/** Everything a node needs to configure its side of the mesh. */
export const meshStateSchema = z.object({
  nodeId: nodeIdSchema,
  meshIp: ipv4Schema,
  cidr: cidrSchema,
  peers: z.array(peerSchema).max(100_000),
});
export type MeshState = z.infer<typeof meshStateSchema>;

const policyRuleSchema = z.object({ from: z.string().min(1).max(64), to: z.string().min(1).max(64) });

/** A relay session's id (the relay allocation's, e.g. `r12`): a revoke removes only the session it names. */
const relaySessionIdSchema = z.string().min(1).max(64);

const peerKeyEntrySchema = z.object({ nodeId: nodeIdSchema, publicKey: wgKeySchema });
const peerEndpointEntrySchema = z.object({ nodeId: nodeIdSchema, endpoints: z.array(endpointSchema).max(32), path: z.enum(PEER_PATHS).optional() });

export const EVENT_PAYLOAD_SCHEMAS = {
  peer_added: z.object({ peers: z.array(peerSchema).max(100_000) }),
  peer_removed: z.object({ nodeIds: z.array(nodeIdSchema).max(100_000) }),
  peer_key_rotated: z.object({ peers: z.array(peerKeyEntrySchema).max(100_000) }),
  peer_endpoint_changed: z.object({ peers: z.array(peerEndpointEntrySchema).max(100_000) }),
  policy_updated: z.object({ policyId: z.string().max(64), rules: z.array(policyRuleSchema).max(10_000).nullable() }),
  rotate_keys: z.object({ reason: z.string().max(256).optional() }),
  /** The next signing key, inside an envelope signed by the current one. */
  signing_key_rotated: z.object({ keyId: z.string().max(64), publicKey: z.instanceof(Uint8Array), transitionMs: z.number().int().min(0).max(30 * 86_400_000) }),
  /** A full snapshot of the node's mesh state (replay past retention, first contact). */
  node_state_updated: z.object({ state: meshStateSchema }),
  node_secrets_updated: z.object({ keys: z.array(z.string().max(256)).max(1024) }),
  action_request: z.object({ action: z.string().max(128), args: z.record(z.string().max(256), z.string().max(4096)).optional() }),
  session_revoked: z.object({ sessionId: z.string().max(128).optional(), reason: z.string().max(1024) }),
  /**
   * The pair (this node, `peerNodeId`) goes through the server's UDP relay: the node sends WireGuard to
   * `endpoint` (the relay's port for this node) instead of the peer's own endpoints, until a
   * `relay_session_revoked` naming the same session. `expiresAt` (ms) is when the allocation ends if idle.
   */
  relay_session_assigned: z.object({ sessionId: relaySessionIdSchema, peerNodeId: nodeIdSchema, endpoint: endpointSchema, expiresAt: z.number().int().min(0).optional() }),
  /** The relay session ended (released, expired, the pair went direct): the peer's own endpoints apply again. */
  relay_session_revoked: z.object({ sessionId: relaySessionIdSchema, peerNodeId: nodeIdSchema, reason: z.string().max(256).optional() }),
} as const satisfies Record<EventType, z.ZodType>;

export type EventPayload<T extends EventType> = z.infer<(typeof EVENT_PAYLOAD_SCHEMAS)[T]>;

export interface Envelope<T extends EventType = EventType> {
  seq: number;
  type: T;
  ts: number;
  payload: EventPayload<T>;
}

const envelopeShape = z.object({
  seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  type: z.string().max(64),
  ts: z.number().int().min(0),
  payload: z.unknown(),
});

const encoder = new Encoder({ ignoreUndefined: true });

/** The exact bytes that are signed and sent: MessagePack of {seq, type, ts, payload}, encoded once. */
export function encodeEnvelope<T extends EventType>(env: Envelope<T>): Uint8Array {
  return encoder.encode({ seq: env.seq, type: env.type, ts: env.ts, payload: env.payload });
}

/** A per-peer entry a receiver dropped instead of rejecting the whole event or state that carried it. */
export interface SkippedEntry {
  /** Where it was, e.g. `peer_added.peers[3]` or `state.peers[0]`. */
  where: string;
  /** The entry's node id when it had a readable one (a peer's node id is not a secret). */
  nodeId: string | null;
  /** The first schema issue, as zod-error text (never the value). */
  issue: string;
}

/**
 * One peer's bad entry costs that peer, never the event or the state around it: otherwise a single
 * value (a key that is not a key, an endpoint that is not HOST:PORT) would make every node that lists
 * the peer drop every event and reconciliation containing it, and a node joining later would get no
 * peers at all (issue 17). The list itself must still be a list within its cap; each entry is checked
 * with the schema a whole-list parse would apply to it.
 */
function keepValidEntries(list: unknown, entry: z.ZodType, where: string, skipped: SkippedEntry[]): unknown {
  if (!Array.isArray(list)) return list;
  const kept: unknown[] = [];
  list.forEach((item: unknown, i) => {
    const parsed = entry.safeParse(item);
    if (parsed.success) kept.push(item);
    else {
      const nodeId = (item as { nodeId?: unknown } | null)?.nodeId;
      skipped.push({ where: `${where}[${i}]`, nodeId: typeof nodeId === 'string' && nodeId.length <= 128 ? nodeId : null, issue: zodErrorText(parsed.error) });
    }
  });
  return kept;
}

/**
 * A mesh state (a snapshot, a reconciliation answer) with its invalid peer entries dropped and
 * recorded in `skipped`; anything that is not an object with a peer list is returned as it is, for
 * the caller's strict parse to refuse.
 */
export function dropInvalidPeers(state: unknown, where: string, skipped: SkippedEntry[]): unknown {
  if (typeof state !== 'object' || state === null || !('peers' in state)) return state;
  return { ...state, peers: keepValidEntries((state as { peers: unknown }).peers, peerSchema, `${where}.peers`, skipped) };
}

/** The per-peer lists of each event type, filtered entry by entry before the payload's strict parse. */
function dropInvalidEventEntries(type: EventType, payload: unknown, skipped: SkippedEntry[]): unknown {
  if (typeof payload !== 'object' || payload === null) return payload;
  const p = payload as Record<string, unknown>;
  switch (type) {
    case 'peer_added':
      return { ...p, peers: keepValidEntries(p.peers, peerSchema, `${type}.peers`, skipped) };
    case 'peer_key_rotated':
      return { ...p, peers: keepValidEntries(p.peers, peerKeyEntrySchema, `${type}.peers`, skipped) };
    case 'peer_endpoint_changed':
      return { ...p, peers: keepValidEntries(p.peers, peerEndpointEntrySchema, `${type}.peers`, skipped) };
    case 'node_state_updated':
      return { ...p, state: dropInvalidPeers(p.state, type, skipped) };
    default:
      return payload;
  }
}

export type DecodedEnvelope =
  | { known: true; envelope: Envelope; skipped: SkippedEntry[] }
  | { known: false; seq: number; type: string; ts: number };

/**
 * Decodes received envelope bytes (already verified) and validates the payload of known types; invalid
 * per-peer entries are dropped and listed in `skipped` (see keepValidEntries).
 */
export function decodeEnvelope(bytes: Uint8Array): DecodedEnvelope {
  const raw = envelopeShape.parse(new Decoder({ maxStrLength: bytes.byteLength, maxBinLength: bytes.byteLength, maxArrayLength: bytes.byteLength, maxMapLength: bytes.byteLength }).decode(bytes));
  if (!(EVENT_TYPES as readonly string[]).includes(raw.type)) return { known: false, seq: raw.seq, type: raw.type, ts: raw.ts };
  const type = raw.type as EventType;
  const skipped: SkippedEntry[] = [];
  const payload = EVENT_PAYLOAD_SCHEMAS[type].parse(dropInvalidEventEntries(type, raw.payload, skipped));
  return { known: true, envelope: { seq: raw.seq, type, ts: raw.ts, payload } as Envelope, skipped };
}

/**
 * Digest of a mesh state, identical on both sides: SHA-256 over a canonical JSON (fixed key order,
 * peers sorted by node id, endpoints in their given order since the first one is used).
 *
 * A peer's `path` is not digested. It describes the pair (direct/relay) and decides nothing WireGuard
 * is given that the digest does not already cover (the endpoints it chose are digested). Digesting it
 * would make every agent from before paths, which drops the unknown field, refuse each signed snapshot
 * ("digest does not match") and mismatch at every reconciliation, so a rolling upgrade would stall.
 */
export function stateDigest(state: MeshState): string {
  const peers = [...state.peers]
    .sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0))
    .map((p) => [p.nodeId, p.meshIp, p.publicKey, p.endpoints, p.psk]);
  return createHash('sha256').update(JSON.stringify([state.nodeId, state.meshIp, state.cidr, peers])).digest('hex');
}

/**
 * A signed state snapshot: the answer to a reconciliation mismatch (`state.response.snapshot`). Before,
 * the agent applied an unsigned `state` as its whole mesh state and took its `seq`, so anyone who could
 * answer `state.request` (a control plane with a certificate from the pinned CA, a bug in a proxy)
 * could rewrite the mesh without any event key. Now the server signs the snapshot with its current
 * event-signing key (docs/MESH.md, "Trust model") and the agent applies it only when it verifies with
 * a key it trusts, names this node, and is not older than what it has applied; its seq comes only from
 * these signed bytes.
 *
 * The signature covers SNAPSHOT_SIGNING_CONTEXT followed by the snapshot bytes, never the bytes
 * alone: event envelopes are signed bare, so neither can be replayed as the other.
 */
export const SNAPSHOT_SIGNING_CONTEXT = 'meshlink state snapshot v1\0';
const snapshotContextBytes = new TextEncoder().encode(SNAPSHOT_SIGNING_CONTEXT);

export const snapshotSchema = z.object({
  nodeId: nodeIdSchema,
  /** The event seq the state corresponds to: the agent's lastEventSeq once applied. */
  seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  /** stateDigest(state). */
  digest: z.string().regex(/^[0-9a-f]{64}$/),
  ts: z.number().int().min(0),
  state: meshStateSchema,
});
export type Snapshot = z.infer<typeof snapshotSchema>;

/** The exact snapshot bytes sent (MessagePack of {nodeId, seq, digest, ts, state}). */
export function encodeSnapshot(snapshot: Snapshot): Uint8Array {
  return encoder.encode({ nodeId: snapshot.nodeId, seq: snapshot.seq, digest: snapshot.digest, ts: snapshot.ts, state: snapshot.state });
}

/** What is signed for a snapshot: the context string, then the snapshot bytes. */
export function snapshotSigningBytes(snapshotBytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(snapshotContextBytes.byteLength + snapshotBytes.byteLength);
  out.set(snapshotContextBytes, 0);
  out.set(snapshotBytes, snapshotContextBytes.byteLength);
  return out;
}

/** Decodes verified snapshot bytes; throws (a zod or MessagePack error) when they are not a snapshot. */
export function decodeSnapshot(bytes: Uint8Array, skipped: SkippedEntry[] = []): Snapshot {
  const raw: unknown = new Decoder({ maxStrLength: bytes.byteLength, maxBinLength: bytes.byteLength, maxArrayLength: bytes.byteLength, maxMapLength: bytes.byteLength }).decode(bytes);
  // One bad peer entry costs that peer only (as in events): dropped before the strict parse, listed in `skipped`.
  const filtered = typeof raw === 'object' && raw !== null && 'state' in raw ? { ...raw, state: dropInvalidPeers((raw as { state: unknown }).state, 'snapshot.state', skipped) } : raw;
  const snapshot = snapshotSchema.parse(filtered);
  // The digest covers the state as the server sent it; with entries dropped it cannot match, and the
  // agent keeps the server's digest so that reconciliation does not resend the same state forever.
  if (skipped.length === 0 && stateDigest(snapshot.state) !== snapshot.digest) throw new Error('the snapshot digest does not match its state');
  return snapshot;
}

/**
 * The event-signing keys in the enrollment response (`eventKeys`, JSON): the agent's first trusted
 * keys, delivered over the channel the CA pin protects (docs/MESH.md, "Trust model").
 */
export const enrollEventKeySchema = z.object({
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
  /** Base64 of the raw 32-byte Ed25519 public key. */
  publicKey: z.string().regex(/^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/),
});
export const enrollEventKeysSchema = z.array(enrollEventKeySchema).min(1).max(8);
export type EnrollEventKey = z.infer<typeof enrollEventKeySchema>;
