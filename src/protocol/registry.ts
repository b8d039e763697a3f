import { z } from 'zod';

/**
 * The message registry: the one source of truth for every message kind on the wire.
 *
 * Each kind has
 * - `code`: the u16 in the frame header's `type` field. Codes are grouped by concern in blocks of 16
 *   (0x00xx session, 0x001x streams, 0x002x identity, 0x003x mesh, 0x004x operations,
 *   0x005x observability). Codes are never reused once published.
 * - `name`: a dotted name, used in logs, docs and `meshlink protocol messages`.
 * - `direction`: who may send it. A receiver treats a kind from the wrong role as a protocol error.
 * - `scope`: `control` kinds travel only on stream 0, `stream` kinds only on a stream id > 0,
 *   `any` on either.
 * - `schema`: the zod schema of the decoded MessagePack payload, applied before any handler runs.
 *   Unknown map keys are stripped, so peers can add optional fields without breaking older readers.
 * - `response`: for request kinds, the kind that answers them (matched by `rid`). A kind is a request
 *   when it has one, and a response when another kind names it; nothing else lists them.
 * - `payload`: `msgpack` (a MessagePack value checked by `schema`) or `bytes` (one MessagePack bin
 *   spanning the payload, read as a zero-copy view; PROTOCOL.md §3.2).
 * - `endStream`: whether a frame of this kind may carry END_STREAM (PROTOCOL.md §2.1); a frame of
 *   any other kind with the flag set is ML_ERR_BAD_PAYLOAD.
 * - `onStream`: for kinds that may travel on a stream, what they are there (PROTOCOL.md §6):
 *   `mux`, a frame of the multiplexer itself, valid on every stream and never a conversation;
 *   `opens`, a conversation kind, named in `stream.open.kind` with `meta` satisfying its schema;
 *   `any`, a typed message any conversation may carry; or the conversation kinds whose streams carry
 *   this typed message (§6.3.1). The lists are a declaration, not a receive check: §6.2 and §6.3 make
 *   no other pairing an error, so the receiver hands such a message to the stream's application.
 */

export type Direction = 'agent-to-server' | 'server-to-agent' | 'both';
export type Scope = 'control' | 'stream' | 'any';
export type Role = 'agent' | 'server';
export type PayloadEncoding = 'msgpack' | 'bytes';
/** See `onStream` above. */
export type StreamPart = 'mux' | 'opens' | 'any' | readonly string[];

export interface MessageKind<S extends z.ZodType = z.ZodType> {
  readonly code: number;
  readonly name: string;
  readonly direction: Direction;
  readonly scope: Scope;
  readonly schema: S;
  readonly response?: string;
  readonly payload: PayloadEncoding;
  readonly endStream: boolean;
  readonly onStream?: StreamPart;
  readonly description: string;
}

// ---------- shared field schemas ----------
const u32 = z.number().int().min(0).max(0xffff_ffff);
const u53 = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/** Request id: unique per sender among its outstanding requests. */
const rid = u32;
const shortText = z.string().max(1024);
/**
 * A short name or label the receiver shows to people (an agent version, a hostname, an audit
 * operation): no control characters (C0, DEL, C1), which could move a terminal's cursor or retitle its
 * window. Free text (messages, log lines) stays `text`; whoever prints it escapes it.
 */
// eslint-disable-next-line no-control-regex
const label = z.string().max(1024).regex(/^[^\u0000-\u001f\u007f-\u009f]*$/, 'no control characters');
const text = z.string().max(64 * 1024);
const errorCode = z.string().regex(/^[A-Z][A-Z0-9_]{1,63}$/);
const pem = z.string().max(16 * 1024).startsWith('-----BEGIN ');
const stringMap = z.record(z.string().max(256), z.string().max(4096));
const bytes = z.instanceof(Uint8Array);
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);

/**
 * An agent build on offer (welcome.upgrade, agent.upgrade). `buildId` is the SHA-256 of the bundle and
 * also names a file, so it is 64 hex digits and nothing else. `signature` is the release key's Ed25519
 * signature over the release statement of (version, buildId, size) (docs/OPERATIONS.md, "Agent
 * upgrade"); `keyId` names that key. `allowDowngrade` is set when the operator forced a lower version.
 * An offer without a signature is still well-formed, so that an agent can refuse it with its own code.
 */
const upgradeOffer = z.object({
  version: shortText,
  buildId: sha256Hex,
  url: text,
  sha256: sha256Hex,
  size: u53.optional(),
  keyId: z.string().regex(/^[0-9a-f]{16}$/).optional(),
  signature: bytes.refine((b) => b.byteLength === 64, 'an Ed25519 signature has 64 bytes').optional(),
  allowDowngrade: z.boolean().optional(),
});

const helloSchema = z.object({
  /** Protocol versions the agent speaks, any order. */
  versions: z.array(z.number().int().min(1).max(0xffff)).min(1).max(32),
  agentVersion: label,
  buildId: label.optional(),
  hostname: label.optional(),
  /** Last mesh event seq the agent applied (for replay); 0 when none. */
  lastEventSeq: u53.optional(),
  wgPublicKey: z.string().max(64).optional(),
  endpoints: z.array(shortText).max(32).optional(),
  /** The STUN probe's result: reflexive endpoint and NAT mapping class (checked by the mesh: contract/mesh-events.ts). */
  nat: z.object({ reflexive: shortText.nullable(), mapping: shortText }).optional(),
});

const welcomeSchema = z.object({
  version: z.number().int().min(1).max(0xffff),
  nodeId: shortText,
  serverVersion: shortText,
  heartbeatIntervalMs: z.number().int().min(100).max(3_600_000),
  /** Present when the server holds an agent build the agent should move to. */
  upgrade: upgradeOffer.optional(),
  /** Ed25519 public keys (raw 32 bytes) that sign mesh events; two during a signing-key transition. */
  eventKeys: z.array(z.object({ keyId: shortText, publicKey: bytes })).max(8).optional(),
  /**
   * The server's configured public URL (`server start --public-url`), when the operator gave one: an
   * agent enrolled at another URL moves to it once it has reached it with its pinned CA.
   */
  serverUrl: shortText.optional(),
  /**
   * Every CA the server trusts (two during a CA rotation): the agent adds the ones it lacks to its
   * pins and its ca.pem, having received them over a session whose server certificate it verified.
   */
  caBundle: z.array(pem).min(1).max(4).optional(),
});

const metricSample = z.object({
  name: z.string().max(256),
  value: z.number(),
  labels: stringMap.optional(),
  ts: u53,
});
const logRecord = z.object({
  ts: u53,
  level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']),
  msg: text,
  fields: z.record(z.string().max(256), z.unknown()).optional(),
});
const auditRecord = z.object({
  ts: u53,
  action: label,
  actor: label.optional(),
  target: label.optional(),
  result: label,
  details: z.record(z.string().max(256), z.unknown()).optional(),
});

/** What a kind declares beyond the positional fields; absent means msgpack, no END_STREAM, no request. */
interface KindOptions {
  readonly response?: string;
  readonly payload?: PayloadEncoding;
  readonly endStream?: boolean;
  readonly onStream?: StreamPart;
}

// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- no options: the literal type of an empty options object
function kind<const N extends string, S extends z.ZodType, const O extends KindOptions = {}>(
  code: number,
  name: N,
  direction: Direction,
  scope: Scope,
  schema: S,
  description: string,
  options?: O,
): MessageKind<S> & { readonly name: N } & Readonly<O> {
  const { response, onStream, payload = 'msgpack', endStream = false }: KindOptions = options ?? {};
  // The cast restates the literal types of `options` (a request's response, a conversation list) for
  // the types derived below; the values are exactly those.
  return Object.freeze({
    code,
    name,
    direction,
    scope,
    schema,
    description,
    payload,
    endStream,
    ...(response ? { response } : {}),
    ...(onStream ? { onStream } : {}),
  }) as MessageKind<S> & { readonly name: N } & Readonly<O>;
}

/** All kinds, in code order. */
export const MESSAGE_KINDS = [
  // ---- 0x0001.. session ----
  kind(0x0001, 'hello', 'agent-to-server', 'control', helloSchema,
    'First message of a session: the agent lists its protocol versions and identity facts.'),
  kind(0x0002, 'welcome', 'server-to-agent', 'control', welcomeSchema,
    'Handshake answer: the chosen version (the highest both speak) and session parameters.'),
  kind(0x0003, 'error', 'both', 'any',
    z.object({ code: errorCode, message: text, rid: rid.optional() }),
    'An error. With `rid` it answers a request; on stream 0 without `rid` it precedes a close.',
    { onStream: 'any' }),
  kind(0x0004, 'goaway', 'both', 'control',
    z.object({ reason: shortText, code: errorCode.optional() }),
    'The sender will open no new streams or requests and is about to close; finish and disconnect.'),
  kind(0x0005, 'ping', 'both', 'control', z.object({ nonce: u32 }),
    'Liveness and round-trip probe; the receiver answers pong with the same nonce.'),
  kind(0x0006, 'pong', 'both', 'control', z.object({ nonce: u32 }), 'Answer to ping.'),
  kind(0x0007, 'heartbeat', 'agent-to-server', 'control',
    z.object({ seq: u53, ts: u53, uptimeMs: u53.optional() }),
    'Agent liveness, every heartbeatIntervalMs (default 15 s). The server marks a silent node offline.'),
  kind(0x0008, 'heartbeat.ack', 'server-to-agent', 'control', z.object({ seq: u53, ts: u53 }),
    'Echoes a heartbeat’s seq and ts so the agent can measure the round trip.'),

  // ---- 0x0010.. streams ----
  kind(0x0010, 'stream.open', 'both', 'stream',
    z.object({ kind: z.string().max(64), meta: z.unknown().optional() }),
    'Opens the stream named in the frame header. `kind` names the registry kind whose schema `meta` must satisfy.',
    { onStream: 'mux' }),
  kind(0x0011, 'stream.accept', 'both', 'stream', z.object({}),
    'The receiver of stream.open accepts; data may flow both ways.', { onStream: 'mux' }),
  kind(0x0012, 'stream.reject', 'both', 'stream', z.object({ code: errorCode, message: text }),
    'The receiver of stream.open refuses; the stream id is spent.', { onStream: 'mux' }),
  kind(0x0013, 'stream.data', 'both', 'stream', bytes,
    'Stream bytes as one MessagePack bin. Counts against the receiver’s window. May carry END_STREAM.',
    { payload: 'bytes', endStream: true, onStream: 'mux' }),
  kind(0x0014, 'stream.window', 'both', 'stream', z.object({ credit: z.number().int().min(1).max(0x7fff_ffff) }),
    'Grants the peer `credit` more bytes of stream.data on this stream.', { onStream: 'mux' }),
  kind(0x0015, 'stream.close', 'both', 'stream', z.object({}),
    'Carries END_STREAM without data: the sender has finished writing (half-close).',
    { endStream: true, onStream: 'mux' }),
  kind(0x0016, 'stream.reset', 'both', 'stream', z.object({ code: errorCode, message: text }),
    'Aborts the stream in both directions; pending data is discarded.', { onStream: 'mux' }),

  // ---- 0x0020.. identity and lifecycle ----
  kind(0x0020, 'cert.renew', 'agent-to-server', 'control', z.object({ rid, csr: pem }),
    'Asks for a new certificate for a fresh key. Answered by cert.renewed or error.', { response: 'cert.renewed' }),
  kind(0x0021, 'cert.renewed', 'server-to-agent', 'control',
    z.object({ rid, certificate: pem, caCertificate: pem, caBundle: z.array(pem).min(1).max(4).optional(), notAfter: shortText }),
    'The renewed certificate; the agent uses it from its next connection.'),
  kind(0x0024, 'ca.bundle', 'server-to-agent', 'control',
    z.object({ caBundle: z.array(pem).min(1).max(4) }),
    'The CA certificates the server now trusts (a CA rotation started or ended); the agent adopts them as it does welcome.caBundle.'),
  kind(0x0022, 'agent.upgrade', 'server-to-agent', 'control',
    upgradeOffer,
    'A newer agent build is available; the checksum comes from the control plane, not the download, and the signature from the release key the agent pins.'),
  kind(0x0023, 'agent.upgrade.status', 'agent-to-server', 'control',
    z.object({ buildId: sha256Hex, state: z.enum(['downloading', 'verified', 'applied', 'failed']), code: errorCode.optional(), message: text.optional() }),
    'Progress or failure of an upgrade.'),

  // ---- 0x0030.. mesh ----
  kind(0x0030, 'event', 'server-to-agent', 'control',
    z.object({ envelope: bytes, signature: bytes, keyId: shortText }),
    'A signed mesh event. `envelope` is the MessagePack of {seq, type, ts, payload}; the signature is Ed25519 over exactly those bytes.'),
  kind(0x0031, 'event.ack', 'agent-to-server', 'control', z.object({ seq: u53, wgPublicKey: z.string().max(64).optional() }),
    'The highest event seq the agent has applied.'),
  kind(0x0032, 'state.request', 'agent-to-server', 'control',
    z.object({ rid, digest: z.string().max(128).optional() }),
    'Reconciliation: the agent’s digest of its applied state; answered with the full desired state on mismatch.', { response: 'state.response' }),
  kind(0x0033, 'state.response', 'server-to-agent', 'control',
    z.object({ rid, inSync: z.boolean(), snapshot: z.object({ bytes, signature: bytes, keyId: shortText }).optional() }),
    'Answer to state.request: inSync, or the full desired state as a snapshot signed with the event-signing key (docs/MESH.md, "Trust model").'),
  kind(0x0034, 'drift.report', 'agent-to-server', 'control',
    z.object({ ts: u53, items: z.array(z.object({ field: shortText, expected: text.optional(), actual: text.optional() })).max(1024) }),
    'Differences the agent found and corrected during reconciliation.'),
  kind(0x0035, 'peer.status', 'agent-to-server', 'control',
    z.object({ peers: z.array(z.object({ nodeId: shortText, state: shortText, endpoint: shortText.nullable(), handshakeAgeMs: u53.nullable() })).max(1024) }),
    'How the agent reaches its WireGuard peers now (up/down/pending, the endpoint in force, the last handshake’s age): sent when a peer’s state changes and once a minute; the server moves a direct pair that is down to the relay (docs/MESH.md, "Switching"). Each entry is checked by the mesh (contract/mesh-events.ts peerLinkSchema).'),

  // ---- 0x0040.. operations ----
  kind(0x0040, 'action.request', 'server-to-agent', 'stream',
    z.object({ action: z.string().max(128), args: stringMap.optional(), timeoutMs: z.number().int().min(1).max(86_400_000).optional() }),
    'Stream-opening kind: run a built-in or hook action. Output flows as stream.data.', { onStream: 'opens' }),
  kind(0x0041, 'action.ack', 'agent-to-server', 'stream', z.object({ startedAt: u53, queued: z.boolean().optional() }),
    'The agent has taken the action (it may be queued behind the concurrency cap).', { onStream: ['action.request'] }),
  kind(0x0042, 'action.output', 'agent-to-server', 'stream',
    z.object({ channel: z.enum(['stdout', 'stderr']), data: bytes }),
    'A chunk of an action’s output, when it must be told apart by channel.', { onStream: ['action.request'] }),
  kind(0x0043, 'action.result', 'agent-to-server', 'stream',
    z.object({ exitCode: z.number().int().nullable(), signal: shortText.nullable().optional(), durationMs: u53, truncated: z.boolean(), error: text.optional() }),
    'Final result of an action, sent before END_STREAM.', { onStream: ['action.request'] }),
  kind(0x0044, 'log.stream', 'server-to-agent', 'stream',
    z.object({ lines: z.number().int().min(0).max(100_000).optional(), follow: z.boolean().optional() }),
    'Stream-opening kind: tail the agent’s own log; closing the stream stops the tail.', { onStream: 'opens' }),
  kind(0x0045, 'exec.open', 'server-to-agent', 'stream',
    z.object({ command: z.string().min(1).max(4096), args: z.array(z.string().max(65536)).max(1024), env: stringMap.optional(), cwd: text.optional(), cols: z.number().int().min(1).max(1000).optional(), rows: z.number().int().min(1).max(1000).optional() }),
    'Stream-opening kind: run a command; stdin, stdout and stderr flow over the stream.', { onStream: 'opens' }),
  kind(0x0046, 'exec.resize', 'server-to-agent', 'stream',
    z.object({ cols: z.number().int().min(1).max(1000), rows: z.number().int().min(1).max(1000) }),
    'Terminal size change for an exec session.', { onStream: ['exec.open'] }),
  kind(0x0047, 'exec.exit', 'agent-to-server', 'stream',
    z.object({ exitCode: z.number().int().nullable(), signal: shortText.nullable() }),
    'The exec’d command ended; sent before END_STREAM.', { onStream: ['exec.open'] }),
  kind(0x0048, 'exec.stderr', 'agent-to-server', 'stream', bytes,
    'A chunk of an exec’d command’s standard error (stdout is stream.data).',
    { payload: 'bytes', onStream: ['exec.open'] }),
  kind(0x0049, 'file.open', 'both', 'stream',
    z.object({ path: z.string().min(1).max(4096), direction: z.enum(['push', 'pull']), size: u53.optional(), offset: u53.optional(), sha256: sha256Hex.optional() }),
    'Stream-opening kind: a file transfer; bytes flow as stream.data from `offset` (resume).', { onStream: 'opens' }),
  kind(0x004a, 'file.chunk', 'both', 'stream',
    z.object({ offset: u53, data: bytes }),
    'A file chunk at an explicit offset, for transfers that must place data out of band.', { onStream: ['file.open'] }),
  kind(0x004b, 'file.done', 'both', 'stream',
    z.object({ size: u53, sha256: sha256Hex }),
    'End of a transfer with the whole file’s SHA-256, checked by the receiver before it commits.', { onStream: ['file.open'] }),
  kind(0x004c, 'tunnel.open', 'server-to-agent', 'stream',
    z.object({ host: z.string().min(1).max(253), port: z.number().int().min(1).max(65535) }),
    'Stream-opening kind: a TCP connection from the agent to host:port (if its allowlist permits); bytes flow both ways as stream.data, END_STREAM is a FIN.', { onStream: 'opens' }),

  // ---- 0x0050.. observability ----
  kind(0x0050, 'stats', 'agent-to-server', 'control',
    z.object({ ts: u53, loadavg: z.array(z.number()).max(3).optional(), memFree: u53.optional(), memTotal: u53.optional(), uptimeSec: u53.optional() }),
    'A point-in-time host summary.'),
  kind(0x0051, 'metrics.batch', 'agent-to-server', 'control', z.object({ samples: z.array(metricSample).max(4096), dropped: u53.optional() }),
    'A batch of the agent’s own metrics.'),
  kind(0x0052, 'logs.batch', 'agent-to-server', 'control', z.object({ records: z.array(logRecord).max(4096), dropped: u53.optional() }),
    'A batch of the agent’s log lines at warning level and above.'),
  kind(0x0053, 'audit.batch', 'agent-to-server', 'control', z.object({ records: z.array(auditRecord).max(4096), dropped: u53.optional() }),
    'A batch of audit records: every action, exec and transfer the agent performed.'),
] as const;

type AnyKind = (typeof MESSAGE_KINDS)[number];
export type KindName = AnyKind['name'];
type KindByName<N extends KindName> = Extract<AnyKind, { name: N }>;
/** The decoded, validated payload type of kind N. */
export type PayloadOf<N extends KindName> = z.output<KindByName<N>['schema']>;
/** The payload type a sender must supply for kind N. */
export type InputOf<N extends KindName> = z.input<KindByName<N>['schema']>;

/**
 * A message of one of the kinds N, discriminated by `name`: `{ name: N; payload: PayloadOf<N> }` for
 * each N, so that testing `name` gives `payload` its type without a cast.
 */
export type TypedMessage<N extends KindName = KindName> = { [K in N]: { name: K; payload: PayloadOf<K> } }[N];

/** Request kinds: those that declare a response (PROTOCOL.md §8). */
export type RequestKindName = Extract<AnyKind, { response: string }>['name'];
/** The kind that answers request kind N. */
export type ResponseKindOf<N extends RequestKindName> = KindByName<N>['response'] & KindName;
/** Conversation kinds: declared `onStream: 'opens'`, the ones stream.open names (PROTOCOL.md §6.2). */
export type OpeningKindName = Extract<AnyKind, { onStream: 'opens' }>['name'];
/**
 * Kinds a stream hands its application as typed messages: every kind that travels on streams except
 * the multiplexer's own. Not narrowed by the `onStream` lists, which the receiver does not enforce.
 */
export type StreamMessageKindName = Exclude<Extract<AnyKind, { onStream: StreamPart }>, { onStream: 'mux' }>['name'];
/** A typed message on a stream, discriminated by `name`. */
export type StreamMessage = TypedMessage<StreamMessageKindName>;

const byCode = new Map<number, MessageKind>();
const byName = new Map<string, MessageKind>();
for (const k of MESSAGE_KINDS) {
  if (byCode.has(k.code)) throw new Error(`duplicate message code 0x${k.code.toString(16)}`);
  if (byName.has(k.name)) throw new Error(`duplicate message name ${k.name}`);
  byCode.set(k.code, k);
  byName.set(k.name, k);
}
const responseKinds = new Set<string>();
// The declarations must agree with each other; a mistake here fails at load, in every test.
for (const k of MESSAGE_KINDS as readonly MessageKind[]) {
  if (k.response !== undefined) {
    const answer = byName.get(k.response);
    if (!answer || answer.scope !== k.scope || answer.response !== undefined) throw new Error(`${k.name}: bad response kind ${k.response}`);
    responseKinds.add(k.response);
  }
  if ((k.payload === 'bytes') !== (k.schema === bytes)) throw new Error(`${k.name}: a bytes payload is exactly a bin`);
  if (k.endStream && k.onStream !== 'mux') throw new Error(`${k.name}: only multiplexer frames end a stream`);
  if ((k.scope === 'control') !== (k.onStream === undefined)) throw new Error(`${k.name}: onStream is declared exactly for kinds that travel on streams`);
  if (Array.isArray(k.onStream)) {
    for (const o of k.onStream as readonly string[]) if (byName.get(o)?.onStream !== 'opens') throw new Error(`${k.name}: ${o} is not a conversation kind`);
  }
}

export function kindByCode(code: number): MessageKind | undefined {
  return byCode.get(code);
}

export function kindByName(name: string): MessageKind | undefined {
  return byName.get(name);
}

export function requireKind(name: KindName): MessageKind {
  const k = byName.get(name);
  if (!k) throw new Error(`unknown message kind ${name}`);
  return k;
}

/** Does this kind answer a request (some kind names it as its response)? */
export function isResponseKind(k: MessageKind): boolean {
  return responseKinds.has(k.name);
}

/** May a peer in `role` send this kind? */
export function maySend(k: MessageKind, role: Role): boolean {
  return k.direction === 'both' || (role === 'agent' ? k.direction === 'agent-to-server' : k.direction === 'server-to-agent');
}

/** The registry as plain data with JSON Schemas, for `meshlink protocol messages --json`. */
export function describeRegistry(): Array<{
  code: number;
  hex: string;
  name: string;
  direction: Direction;
  scope: Scope;
  response?: string;
  payload: PayloadEncoding;
  endStream: boolean;
  onStream?: StreamPart;
  description: string;
  schema: unknown;
}> {
  return MESSAGE_KINDS.map((k: MessageKind) => ({
    code: k.code,
    hex: `0x${k.code.toString(16).padStart(4, '0')}`,
    name: k.name,
    direction: k.direction,
    scope: k.scope,
    ...(k.response ? { response: k.response } : {}),
    payload: k.payload,
    endStream: k.endStream,
    ...(k.onStream ? { onStream: k.onStream } : {}),
    description: k.description,
    schema: toJsonSchema(k.schema),
  }));
}

function toJsonSchema(schema: z.ZodType): unknown {
  // Uint8Array payloads (MessagePack bin) have no JSON Schema equivalent; describe them explicitly.
  // `io: 'input'`: the schema of what a receiver accepts. Receivers ignore unknown keys (§3.1), so
  // no object says `additionalProperties: false`, as the output form of a zod object would.
  return z.toJSONSchema(schema, {
    io: 'input',
    unrepresentable: 'any',
    override: (ctx) => {
      const def = (ctx.zodSchema as { _zod?: { def?: { type?: string } } })._zod?.def;
      if (def?.type === 'custom') {
        Object.assign(ctx.jsonSchema, { type: 'string', contentEncoding: 'msgpack-bin', description: 'MessagePack bin (raw bytes)' });
      }
    },
  });
}
