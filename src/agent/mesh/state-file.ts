import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../../util/atomic-file.js';
import { endpointSchema, meshStateSchema, type MeshState, type PeerLinkState } from '../../contract/mesh-events.js';

/**
 * What the agent has applied, persisted after every applied event so that `lastEventSeq` in hello is
 * never ahead of what really took effect:
 * - `mesh-state.json` (0600: it holds PSKs): last applied seq, mesh state, trusted signing keys.
 * - `mesh-status.json` (no secrets): what `meshlink agent status --json` shows.
 */

export const MESH_STATE_FILE = 'mesh-state.json';
export const MESH_STATUS_FILE = 'mesh-status.json';

/** A relay session applied to one peer (relay_session_assigned): WireGuard sends to `endpoint` instead of the peer's own. */
export const appliedRelaySchema = z.object({ peerNodeId: z.string().min(1).max(128), sessionId: z.string().min(1).max(64), endpoint: endpointSchema });
export type AppliedRelay = z.infer<typeof appliedRelaySchema>;

const trustedKeySchema = z.object({ keyId: z.string().max(64), publicKey: z.string().max(64), until: z.number().nullable() });

export const appliedFileSchema = z.object({
  version: z.literal(1),
  lastEventSeq: z.number().int().min(0),
  state: meshStateSchema.nullable(),
  trustedKeys: z.array(trustedKeySchema).max(8),
  policyId: z.string().max(64).nullable(),
  /** Relay sessions in force, by peer; kept apart from `state` so that the state digest stays the server's. A file from before relays has none. */
  relays: z.array(appliedRelaySchema).max(100_000).default([]),
});
export type AppliedFile = z.infer<typeof appliedFileSchema>;

export const EMPTY_APPLIED: AppliedFile = Object.freeze({ version: 1, lastEventSeq: 0, state: null, trustedKeys: [], policyId: null, relays: [] }) as AppliedFile;

export async function readApplied(stateDir: string): Promise<AppliedFile> {
  let text: string;
  try {
    text = await readFile(join(stateDir, MESH_STATE_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { ...EMPTY_APPLIED };
    throw err;
  }
  const parsed = appliedFileSchema.safeParse(JSON.parse(text));
  // A damaged file costs a snapshot (lastEventSeq 0), never a wrong configuration.
  return parsed.success ? parsed.data : { ...EMPTY_APPLIED };
}

export async function writeApplied(stateDir: string, applied: AppliedFile): Promise<void> {
  await writeFileAtomic(join(stateDir, MESH_STATE_FILE), JSON.stringify(applied), { mode: 0o600 });
}

export interface MeshStatus {
  meshIp: string | null;
  wgPublicKey: string;
  lastEventSeq: number;
  /**
   * `endpoints`: the peer's own. `path`: how the server chose the pair reaches each other (direct/relay;
   * null from a server before paths), `relay` while a relay session is in force. `relay`: the relay
   * endpoint in force, or null. `endpoint`: the one WireGuard uses (the relay's while one is in force).
   * `link`: whether the peer is reached on that endpoint (peer-watch.ts; null: not measured, without
   * --wireguard or before the first sample). `lastHandshake`: WireGuard's latest handshake, or null.
   */
  peers: Array<{ nodeId: string; meshIp: string; publicKey: string; endpoints: string[]; endpoint: string | null; path: 'direct' | 'relay' | null; relay: string | null; link: PeerLinkState | null; lastHandshake: string | null }>;
  /** This node's NAT report (the STUN probe at start), as sent in hello; null: no probe. */
  nat: { reflexive: string | null; mapping: string } | null;
  policyId: string | null;
  wireguard: { mode: 'render-only' | 'applied'; interface: string | null; configPath: string; lastError: string | null };
  /** Peer entries dropped since the agent started because they failed their schema (logged one by one). */
  skippedPeerEntries: number;
  updatedAt: string;
}

export function statusOf(
  state: MeshState | null,
  lastEventSeq: number,
  wgPublicKey: string,
  policyId: string | null,
  wireguard: MeshStatus['wireguard'],
  skippedPeerEntries = 0,
  relays: readonly AppliedRelay[] = [],
  nat: MeshStatus['nat'] = null,
  linkOf: (nodeId: string) => { state: PeerLinkState; handshakeAt: number | null } | undefined = () => undefined,
): MeshStatus {
  const relayOf = new Map(relays.map((r) => [r.peerNodeId, r.endpoint]));
  return {
    meshIp: state?.meshIp ?? null,
    wgPublicKey,
    lastEventSeq,
    peers: (state?.peers ?? []).map((p) => {
      const relay = relayOf.get(p.nodeId) ?? null;
      const link = linkOf(p.nodeId);
      return {
        nodeId: p.nodeId,
        meshIp: p.meshIp,
        publicKey: p.publicKey,
        endpoints: [...p.endpoints],
        endpoint: relay ?? p.endpoints[0] ?? null,
        path: relay ? ('relay' as const) : (p.path ?? null),
        relay,
        link: link?.state ?? null,
        lastHandshake: link?.handshakeAt == null ? null : new Date(link.handshakeAt).toISOString(),
      };
    }),
    nat,
    policyId,
    wireguard,
    skippedPeerEntries,
    updatedAt: new Date().toISOString(),
  };
}

export async function writeMeshStatus(stateDir: string, status: MeshStatus): Promise<void> {
  await writeFileAtomic(join(stateDir, MESH_STATUS_FILE), JSON.stringify(status), { mode: 0o600 });
}

/** For `agent status --json`: the mesh fields, or {} when the agent never ran with the mesh feature. */
export async function readMeshStatus(stateDir: string): Promise<Partial<MeshStatus>> {
  try {
    const s = JSON.parse(await readFile(join(stateDir, MESH_STATUS_FILE), 'utf8')) as MeshStatus;
    return { meshIp: s.meshIp, wgPublicKey: s.wgPublicKey, lastEventSeq: s.lastEventSeq, peers: s.peers, policyId: s.policyId, wireguard: s.wireguard, skippedPeerEntries: s.skippedPeerEntries ?? 0, nat: s.nat ?? null };
  } catch {
    return {};
  }
}
