import { createHash, createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { Decoder, Encoder } from '@msgpack/msgpack';
import { z } from 'zod';

/**
 * The mesh event format both sides agree on (docs/MESH.md): event types and their payload schemas,
 * the envelope {seq, type, ts, payload} and the state digest used by reconciliation.
 *
 * It lives on the agent side because the agent is the party that must validate every byte it is
 * handed; the server imports it to build exactly what the agent will accept.
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
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** Base64 of 32 raw bytes, the way `wg genkey`/`wg pubkey`/`wg genpsk` print keys. */
export const wgKeySchema = z.string().regex(/^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/, 'a WireGuard key (base64 of 32 bytes)');
const nodeIdSchema = z.string().min(1).max(128);
const ipv4Schema = z.string().regex(/^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/, 'an IPv4 address');
const cidrSchema = z.string().regex(/^[0-9.]+\/\d{1,2}$/, 'an IPv4 CIDR');
/** `HOST:PORT` or `[v6]:PORT`. */
export const endpointSchema = z.string().min(3).max(300).regex(/^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'HOST:PORT');

export const peerSchema = z.object({
  nodeId: nodeIdSchema,
  meshIp: ipv4Schema,
  publicKey: wgKeySchema,
  endpoints: z.array(endpointSchema).max(32),
  psk: wgKeySchema,
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

export const EVENT_PAYLOAD_SCHEMAS = {
  peer_added: z.object({ peers: z.array(peerSchema).max(100_000) }),
  peer_removed: z.object({ nodeIds: z.array(nodeIdSchema).max(100_000) }),
  peer_key_rotated: z.object({ peers: z.array(z.object({ nodeId: nodeIdSchema, publicKey: wgKeySchema })).max(100_000) }),
  peer_endpoint_changed: z.object({ peers: z.array(z.object({ nodeId: nodeIdSchema, endpoints: z.array(endpointSchema).max(32) })).max(100_000) }),
  policy_updated: z.object({ policyId: z.string().max(64), rules: z.array(policyRuleSchema).max(10_000).nullable() }),
  rotate_keys: z.object({ reason: z.string().max(256).optional() }),
  /** The next signing key, inside an envelope signed by the current one. */
  signing_key_rotated: z.object({ keyId: z.string().max(64), publicKey: z.instanceof(Uint8Array), transitionMs: z.number().int().min(0).max(30 * 86_400_000) }),
  /** A full snapshot of the node's mesh state (replay past retention, first contact). */
  node_state_updated: z.object({ state: meshStateSchema }),
  node_secrets_updated: z.object({ keys: z.array(z.string().max(256)).max(1024) }),
  action_request: z.object({ action: z.string().max(128), args: z.record(z.string().max(256), z.string().max(4096)).optional() }),
  session_revoked: z.object({ sessionId: z.string().max(128).optional(), reason: z.string().max(1024) }),
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

export type DecodedEnvelope = { known: true; envelope: Envelope } | { known: false; seq: number; type: string; ts: number };

/** Decodes received envelope bytes (already verified) and validates the payload of known types. */
export function decodeEnvelope(bytes: Uint8Array): DecodedEnvelope {
  const raw = envelopeShape.parse(new Decoder({ maxStrLength: bytes.byteLength, maxBinLength: bytes.byteLength, maxArrayLength: bytes.byteLength, maxMapLength: bytes.byteLength }).decode(bytes));
  if (!(EVENT_TYPES as readonly string[]).includes(raw.type)) return { known: false, seq: raw.seq, type: raw.type, ts: raw.ts };
  const type = raw.type as EventType;
  const payload = EVENT_PAYLOAD_SCHEMAS[type].parse(raw.payload);
  return { known: true, envelope: { seq: raw.seq, type, ts: raw.ts, payload } as Envelope };
}

/** Key id of an Ed25519 public key: first 16 hex digits of SHA-256 over the raw 32 bytes. */
export function signingKeyId(rawPublicKey: Uint8Array): string {
  return createHash('sha256').update(rawPublicKey).digest('hex').slice(0, 16);
}

const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** A raw 32-byte Ed25519 public key as a KeyObject (build once per key: it costs more than a verify). */
export function ed25519PublicKey(rawPublicKey: Uint8Array): KeyObject {
  if (rawPublicKey.byteLength !== 32) throw new Error('an Ed25519 public key has 32 bytes');
  return createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, rawPublicKey]), format: 'der', type: 'spki' });
}

/** Verifies an Ed25519 signature over exactly `bytes` with a public key (raw 32 bytes or a KeyObject). */
export function verifyEd25519(key: Uint8Array | KeyObject, bytes: Uint8Array, signature: Uint8Array): boolean {
  if (signature.byteLength !== 64) return false;
  if (key instanceof Uint8Array && key.byteLength !== 32) return false;
  return cryptoVerify(null, bytes, key instanceof Uint8Array ? ed25519PublicKey(key) : key, signature);
}

export function rawEd25519PublicKey(spkiDer: Buffer): Buffer {
  if (spkiDer.length !== 44 || !spkiDer.subarray(0, 12).equals(ED25519_SPKI_PREFIX)) throw new Error('not an Ed25519 SPKI');
  return spkiDer.subarray(12);
}

/**
 * Digest of a mesh state, identical on both sides: SHA-256 over a canonical JSON (fixed key order,
 * peers sorted by node id, endpoints in their given order since the first one is used).
 */
export function stateDigest(state: MeshState): string {
  const peers = [...state.peers]
    .sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0))
    .map((p) => [p.nodeId, p.meshIp, p.publicKey, p.endpoints, p.psk]);
  return createHash('sha256').update(JSON.stringify([state.nodeId, state.meshIp, state.cidr, peers])).digest('hex');
}
