import { z } from 'zod';
import { EVENT_PAYLOAD_SCHEMAS, natReportSchema, PEER_LINK_STATES, PEER_PATHS } from '../contract/mesh-events.js';
import { MAX_BUNDLE_BYTES as MAX_RELEASE_BUNDLE_BYTES, releaseManifestSchema } from '../contract/release.js';
import { POLICY_MAX_BYTES, policySchema } from './policy.js';
import { defineRoute } from './route.js';

/**
 * The operator API: every endpoint of the admin socket (`<dataDir>/admin.sock`, HTTP, mode 0600), with
 * the schema of its request and of its answer. docs/SERVER.md, MESH.md and OPERATIONS.md describe what
 * each does; errors come back as `{code, message}` with the status of the code in src/errors.ts.
 * Streaming operations (action, exec, logs, cp) run on the WebSocket of tunnel.ts instead.
 *
 * Answer schemas are not strict: a newer server may add fields, which an older client ignores.
 */

const nodeRef = z.string().min(1).max(253);
const ttlMs = z.number().int().min(1_000).max(30 * 86_400_000);
const nodeId = z.string().min(1).max(128);
const iso = z.string();
// Tags are checked by the mesh's handlers (ML_ERR_MESH_TAG names the bad one, policy.ts TAG_RE); here only their size.
const tagList = z.array(z.string().max(64)).max(64);

// --- core: health, tokens, nodes ---

export const health = defineRoute({
  name: 'health',
  method: 'GET',
  path: '/v1/health',
  input: z.object({}),
  output: z.object({ ok: z.literal(true), pid: z.number().int() }),
  offline: false,
});

export const serverStatus = defineRoute({
  name: 'server.status',
  method: 'GET',
  path: '/v1/server/status',
  input: z.object({}),
  output: z.object({
    version: z.string(),
    /** What enrollment commands name: the `--public-url` given (configured), else derived from the listen address. */
    publicUrl: z.string().nullable(),
    publicUrlSource: z.enum(['configured', 'derived']).nullable(),
    sans: z.array(z.string()),
    caPin: z.string().nullable(),
    nodes: z.number().int(),
    /** null when no server runs (the answer then comes from the store). */
    running: z.object({ pid: z.number().int(), listen: z.string(), startedAt: iso, onlineNodes: z.number().int() }).nullable(),
  }),
  offline: true,
});

/**
 * A consistent copy of the store written by the server to `path` (absolute; on the server's host),
 * atomically and with mode 0600. Online through the admin socket, offline on the store.
 */
export const backupStore = defineRoute({
  name: 'server.backup',
  method: 'POST',
  path: '/v1/server/backup',
  input: z.object({ path: z.string().min(2).max(4096).refine((p) => p.startsWith('/') && !p.includes('\u0000'), 'an absolute path') }).strict(),
  output: z.object({ path: z.string(), bytes: z.number().int() }),
  offline: true,
});

// --- core: CA rotation (docs/SERVER.md, "Rotating the CA"; src/server/ca-rotation.ts) ---

const caSummary = z.object({ pin: z.string(), fingerprint256: z.string(), nodes: z.number().int() });
export const caStatusSchema = z.object({
  /** none: one CA; started: the next CA is trusted and handed out; issuing: the next CA issues. */
  phase: z.enum(['none', 'started', 'issuing']),
  /** The CA (the old one during a rotation), with the count of live nodes whose newest certificate it signed. */
  current: caSummary,
  next: caSummary.nullable(),
  startedAt: iso.nullable(),
  otherNodes: z.number().int(),
});
export type CaStatus = z.infer<typeof caStatusSchema>;

export const caStatus = defineRoute({
  name: 'server.ca.status',
  method: 'GET',
  path: '/v1/server/ca',
  input: z.object({}),
  output: caStatusSchema,
  offline: false,
});

export const caRotate = defineRoute({
  name: 'server.ca.rotate',
  method: 'POST',
  path: '/v1/server/ca/rotate',
  input: z.object({ phase: z.enum(['start', 'issue', 'retire']), force: z.boolean().default(false) }).strict(),
  output: caStatusSchema.extend({ retiredPin: z.string().optional(), stranded: z.array(z.object({ nodeId: z.string(), hostname: z.string() })).optional() }),
  offline: false,
});

export const tokenCreationSchema = z.object({
  token: z.string(),
  /** The token's public id (`tokens.list`, `tokens.revoke`); optional for answers of older servers. */
  id: z.string().optional(),
  expiresAt: iso,
  caPin: z.string(),
  enrollCommand: z.string(),
  nodeId: z.string().nullable(),
});
export type TokenCreation = z.infer<typeof tokenCreationSchema>;

export const createToken = defineRoute({
  name: 'tokens.create',
  method: 'POST',
  path: '/v1/tokens',
  input: z.object({ ttlMs, nodeId: nodeId.nullish() }).strict(),
  output: tokenCreationSchema,
  offline: true,
});

/** A public token id: 16 lower-case hex digits (random; neither the token nor its hash). */
const tokenId = z.string().regex(/^[0-9a-f]{16}$/, 'a token id: 16 hex digits (`server token list` shows them)');

/**
 * An enrollment token as listings show it: never the token or its hash. `uses` is 0 or 1 (tokens are
 * one-time); `tags` are there when the mesh feature runs (the tags the enrolling node gets).
 */
export const tokenListingSchema = z.object({
  id: z.string(),
  createdAt: iso,
  expiresAt: iso,
  state: z.enum(['usable', 'used', 'expired', 'revoked']),
  uses: z.number().int(),
  usedAt: iso.nullable(),
  revokedAt: iso.nullable(),
  /** A re-enrollment token keeps this node id. */
  nodeId: z.string().nullable(),
  tags: z.array(z.string()).optional(),
});
export type TokenListing = z.infer<typeof tokenListingSchema>;

export const listTokens = defineRoute({
  name: 'tokens.list',
  method: 'GET',
  path: '/v1/tokens',
  // Newest first, used, expired and revoked ones included (tokens are never deleted).
  input: z.object({ limit: z.coerce.number().int().min(1).max(10_000).default(100) }).strict(),
  output: z.array(tokenListingSchema),
  offline: true,
});

export const revokeToken = defineRoute({
  name: 'tokens.revoke',
  method: 'POST',
  path: '/v1/tokens/revoke',
  input: z.object({ id: tokenId }).strict(),
  output: tokenListingSchema,
  offline: true,
});

/** A node as `server nodes list` shows it; the mesh fields are there when the mesh feature runs. */
export const nodeListingSchema = z.object({
  id: z.string(),
  hostname: z.string(),
  online: z.boolean(),
  lastSeen: iso.nullable(),
  certSerial: z.string().nullable(),
  certNotAfter: iso.nullable(),
  agentVersion: z.string().nullable(),
  meshIp: z.string().nullable().optional(),
  wgPublicKey: z.string().nullable().optional(),
  tags: z.array(z.string()).optional(),
  endpoints: z.array(z.string()).optional(),
  observedAddress: z.string().nullable().optional(),
});
export type NodeListing = z.infer<typeof nodeListingSchema>;

export const listNodes = defineRoute({
  name: 'nodes.list',
  method: 'GET',
  path: '/v1/nodes',
  input: z.object({}),
  output: z.array(nodeListingSchema),
  offline: true,
});

export const removalSchema = z.object({ id: z.string(), hostname: z.string(), revokedSerials: z.array(z.string()), closedConnections: z.number().int() });
export type RemovalResult = z.infer<typeof removalSchema>;

export const removeNode = defineRoute({
  name: 'nodes.remove',
  method: 'POST',
  path: '/v1/nodes/remove',
  input: z.object({ node: nodeRef }).strict(),
  output: removalSchema,
  offline: true,
});

// --- observability ---

/**
 * A node's mesh details in `server nodes show`: the NAT report of its last hello, the address its
 * control connection came from (a hint only), and each peer as the events told the node: the pair's
 * path, the endpoint WireGuard uses (the first), whether the node reaches the peer there and the last
 * handshake (both null: not reported).
 */
export const meshNodeDetailsSchema = z.object({
  meshIp: z.string(),
  nat: natReportSchema.nullable(),
  observedAddress: z.string().nullable(),
  peers: z.array(
    z.object({
      nodeId: z.string(),
      hostname: z.string().nullable(),
      meshIp: z.string(),
      path: z.enum(PEER_PATHS).nullable(),
      endpoint: z.string().nullable(),
      /** What the node last reported of the peer (`peer.status`: up, down, pending); null: no report (no --wireguard, or the server is stopped). */
      link: z.enum(PEER_LINK_STATES).nullable(),
      lastHandshake: iso.nullable(),
    }),
  ),
});
export type MeshNodeDetails = z.infer<typeof meshNodeDetailsSchema>;

export const nodeDetailsSchema = z.object({
  id: z.string(),
  hostname: z.string(),
  online: z.boolean(),
  createdAt: iso,
  lastSeen: iso.nullable(),
  removedAt: iso.nullable(),
  agentVersion: z.string().nullable(),
  certSerial: z.string().nullable(),
  certNotAfter: iso.nullable(),
  metrics: z.array(z.object({ name: z.string(), labels: z.record(z.string(), z.string()), value: z.number(), ts: iso })),
  warnings: z.array(z.object({ ts: iso, level: z.string(), msg: z.string(), fields: z.record(z.string(), z.unknown()).nullable() })),
  audit: z.array(z.object({ ts: iso, operation: z.string(), actor: z.string().nullable(), target: z.string().nullable(), result: z.string(), source: z.string() })),
  dropped: z.record(z.string(), z.number()),
  /** The mesh's part, when the mesh feature runs (docs/MESH.md, "NAT traversal"). */
  mesh: meshNodeDetailsSchema.optional(),
});
export type NodeDetails = z.infer<typeof nodeDetailsSchema>;

export const showNode = defineRoute({
  name: 'nodes.show',
  method: 'GET',
  path: '/v1/nodes/show',
  input: z.object({ node: nodeRef }).strict(),
  output: nodeDetailsSchema,
  offline: true,
});

// --- mesh (docs/MESH.md) ---

export const createTaggedToken = defineRoute({
  name: 'mesh.tokens.create',
  method: 'POST',
  path: '/v1/mesh/tokens',
  input: z.object({ ttlMs, nodeId: nodeId.nullish(), tags: tagList }).strict(),
  output: tokenCreationSchema.extend({ tags: z.array(z.string()) }),
  offline: true,
});

const policyView = z.object({ policy: policySchema.nullable(), policyId: z.string() });

export const showPolicy = defineRoute({
  name: 'mesh.policy.show',
  method: 'GET',
  path: '/v1/mesh/policy',
  input: z.object({}),
  output: policyView,
  offline: true,
});

export const setPolicy = defineRoute({
  name: 'mesh.policy.set',
  method: 'POST',
  path: '/v1/mesh/policy',
  // null: no policy, every node sees every node. The document is checked by the handler (policy.ts), so
  // that its errors carry ML_ERR_MESH_POLICY and name the rule at fault.
  input: z.object({ policy: z.unknown() }).strict(),
  output: z.object({ policyId: z.string(), affectedNodes: z.array(z.string()) }),
  offline: true,
  maxBody: POLICY_MAX_BYTES + 1024,
});

export const tagNode = defineRoute({
  name: 'mesh.tags',
  method: 'POST',
  path: '/v1/mesh/tags',
  input: z.object({ node: nodeRef, tags: tagList, mode: z.enum(['set', 'add', 'remove']).default('set') }).strict(),
  output: z.object({ id: z.string(), hostname: z.string(), tags: z.array(z.string()), affectedNodes: z.array(z.string()) }),
  offline: true,
});

/** A node's mesh peers: what the server's events have told it (no PSKs, no keys). */
export const showPeers = defineRoute({
  name: 'mesh.peers',
  method: 'GET',
  path: '/v1/mesh/peers',
  input: z.object({ node: nodeRef }).strict(),
  output: z.object({
    nodeId: z.string(),
    // path: what the server told the node for the pair (null: told before paths existed).
    peers: z.array(z.object({ nodeId: z.string(), hostname: z.string().nullable(), meshIp: z.string(), endpoints: z.array(z.string()), path: z.enum(['direct', 'relay']).nullable() })),
  }),
  offline: true,
});

export const feedEntrySchema = z.object({
  id: z.number().int(),
  ts: iso,
  nodeId: z.string().nullable(),
  kind: z.enum(['event', 'drift']),
  type: z.string(),
  seq: z.number().int().nullable(),
  detail: z.unknown(),
});
export type FeedEntry = z.infer<typeof feedEntrySchema>;

export const meshFeed = defineRoute({
  name: 'mesh.feed',
  method: 'GET',
  path: '/v1/mesh/feed',
  // after: entries after this id; last: the N newest instead (of all nodes: the node filter applies
  // after); waitMs: hold the request up to this long while there is nothing new (long poll).
  input: z
    .object({
      after: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
      last: z.coerce.number().int().min(0).max(99_999).optional(),
      node: nodeRef.optional(),
      waitMs: z.coerce.number().int().min(0).max(30_000).default(0),
    })
    .strict(),
  output: z.object({ entries: z.array(feedEntrySchema), last: z.number().int() }),
  offline: true,
});

export const rotateNodeKey = defineRoute({
  name: 'mesh.rotate-keys',
  method: 'POST',
  path: '/v1/mesh/rotate-keys',
  input: z.object({ node: nodeRef }).strict(),
  output: z.object({ nodeId: z.string(), seq: z.number().int() }),
  offline: false,
});

/** Events an operator may send (the others follow from policy, keys and membership). */
export const notify = defineRoute({
  name: 'mesh.notify',
  method: 'POST',
  path: '/v1/mesh/notify',
  input: z.discriminatedUnion('type', [
    z.object({ type: z.literal('action_request'), node: nodeRef.optional(), payload: EVENT_PAYLOAD_SCHEMAS.action_request }).strict(),
    z.object({ type: z.literal('node_secrets_updated'), node: nodeRef.optional(), payload: EVENT_PAYLOAD_SCHEMAS.node_secrets_updated }).strict(),
  ]),
  output: z.object({ type: z.string(), nodes: z.number().int(), nodeId: z.string().optional(), seq: z.number().int().optional() }),
  offline: false,
});

export const rotateSigningKey = defineRoute({
  name: 'mesh.signing-key.rotate',
  method: 'POST',
  path: '/v1/mesh/signing-key/rotate',
  input: z.object({}).strict(),
  output: z.object({ keyId: z.string(), previousKeyId: z.string() }),
  offline: false,
});

// --- ops (docs/OPERATIONS.md) ---

export const auditRecordSchema = z.object({
  id: z.number().int(),
  ts: z.number(),
  finishedAt: z.number().nullable(),
  source: z.enum(['admin', 'agent']),
  actor: z.string().nullable(),
  operation: z.string(),
  nodeId: z.string().nullable(),
  target: z.string().nullable(),
  result: z.string(),
  details: z.record(z.string(), z.unknown()).nullable(),
});
export type AuditRecord = z.infer<typeof auditRecordSchema>;

export const listAudit = defineRoute({
  name: 'ops.audit',
  method: 'GET',
  path: '/v1/ops/audit',
  input: z.object({ limit: z.coerce.number().int().min(1).max(10_000).default(100) }).strict(),
  output: z.array(auditRecordSchema),
  offline: true,
});

/** A streaming operation running now (exec, logs, cp's push and pull, a tunnel connection, an action). */
export const runningOperationSchema = z.object({
  /** Its audit record's id. */
  id: z.number().int(),
  op: z.enum(['action', 'exec', 'logs', 'push', 'pull', 'tunnel']),
  nodeId: z.string(),
  hostname: z.string(),
  /** The operator who started it. */
  actor: z.string(),
  /** The command, action, path or host:port (null for logs). */
  target: z.string().nullable(),
  startedAt: iso,
  /** Data bytes sent to the node and received from it so far. */
  toNode: z.number().int(),
  fromNode: z.number().int(),
});
export type RunningOperation = z.infer<typeof runningOperationSchema>;

export const listOperations = defineRoute({
  name: 'ops.list',
  method: 'GET',
  path: '/v1/ops/operations',
  input: z.object({}),
  output: z.array(runningOperationSchema),
  offline: false,
});

export const endOperation = defineRoute({
  name: 'ops.end',
  method: 'POST',
  path: '/v1/ops/operations/end',
  input: z.object({ id: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER) }).strict(),
  output: runningOperationSchema,
  offline: false,
});

/** The built-in actions a JSON request may run (read-only ones; others go through the ops tunnel). */
export const BUILTIN_JSON_ACTIONS = ['ping', 'diagnostics'] as const;

export const runBuiltin = defineRoute({
  name: 'ops.builtin',
  method: 'POST',
  path: '/v1/ops/builtin',
  input: z.object({ node: nodeRef, action: z.enum(BUILTIN_JSON_ACTIONS) }).strict(),
  output: z.object({
    nodeId: z.string(),
    action: z.string(),
    exitCode: z.number().int().nullable(),
    /** The action's output (UTF-8; at most MAX_BUILTIN_OUTPUT bytes, `truncated` beyond). */
    output: z.string(),
    truncated: z.boolean(),
    /** How long the agent took, and the round trip as the server measured it. */
    durationMs: z.number(),
    roundTripMs: z.number(),
    error: z.string().optional(),
  }),
  offline: false,
});

/** Output of an `ops.builtin` action kept beyond this is cut (diagnostics are a few kB). */
export const MAX_BUILTIN_OUTPUT = 256 * 1024;

/** Agent bundles are refused above this size (the esbuild bundle is about 1 MiB). */
export const MAX_BUNDLE_BYTES = MAX_RELEASE_BUNDLE_BYTES;

/** A flag in the query string: the client sends `true`/`false`, the server reads those strings. */
const queryFlag = z.union([z.boolean(), z.enum(['true', 'false']).transform((v) => v === 'true')]).default(false);

/** The release signature file (`meshlink release sign`), JSON text in the query: the same schema on both ends. */
const manifestParam = z
  .string()
  .max(4096)
  .transform((text, ctx) => {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'the signature file is not JSON' });
      return z.NEVER;
    }
  })
  .pipe(releaseManifestSchema);

export const setUpgrade = defineRoute({
  name: 'ops.upgrade.set',
  method: 'POST',
  path: '/v1/ops/upgrade',
  // The body is the bundle's bytes; its build id is their SHA-256, its version the signed one.
  input: z
    .object({
      percent: z.coerce.number().int().min(0).max(100).default(100),
      manifest: manifestParam.optional(),
      allowDowngrade: queryFlag,
    })
    .strict(),
  output: z.object({ buildId: z.string(), sha256: z.string(), version: z.string(), size: z.number().int(), percent: z.number().int(), keyId: z.string(), allowDowngrade: z.boolean(), notified: z.number().int() }),
  offline: false,
  upload: MAX_BUNDLE_BYTES,
});

export const upgradeStatusSchema = z.object({ nodeId: z.string(), buildId: z.string(), state: z.string(), code: z.string().nullable(), message: z.string().nullable(), ts: z.number() });
export type UpgradeStatus = z.infer<typeof upgradeStatusSchema>;

export const showUpgrade = defineRoute({
  name: 'ops.upgrade.status',
  method: 'GET',
  path: '/v1/ops/upgrade',
  input: z.object({}),
  output: z.object({
    current: z.object({ buildId: z.string(), sha256: z.string(), version: z.string(), size: z.number().int(), percent: z.number().int(), createdAt: z.number(), keyId: z.string().nullable(), allowDowngrade: z.boolean() }).nullable(),
    nodes: z.array(upgradeStatusSchema),
  }),
  offline: true,
});

// --- web console (docs/CONSOLE.md) ---

/** A one-time link that opens a console session as the operator who asked (valid 60 s). */
export const consoleLogin = defineRoute({
  name: 'console.login',
  method: 'POST',
  path: '/v1/console/login',
  input: z.object({}).strict(),
  output: z.object({ url: z.string(), expiresAt: iso }),
  offline: false,
});

/** Every route of the operator API, for the docs test and the admin server's check that each is served. */
export const ADMIN_ROUTES = [
  health,
  serverStatus,
  backupStore,
  caStatus,
  caRotate,
  createToken,
  listTokens,
  revokeToken,
  listNodes,
  removeNode,
  showNode,
  createTaggedToken,
  showPolicy,
  setPolicy,
  tagNode,
  showPeers,
  meshFeed,
  rotateNodeKey,
  notify,
  rotateSigningKey,
  listAudit,
  listOperations,
  endOperation,
  runBuiltin,
  setUpgrade,
  showUpgrade,
  consoleLogin,
] as const;
