/**
 * Every error meshlink raises on purpose is a MeshlinkError with a stable string `code` from the
 * table below. Callers match on `err.code`, never on message text. The table is the one place a code
 * is defined: its description, the HTTP status an HTTP answer uses, the WebSocket close code a session
 * ends with, and the exit class the CLI turns into an exit number. docs/ERRORS.md lists it and
 * test/errors.test.ts keeps the two (and docs/PROTOCOL.md's close codes) in agreement.
 *
 * This module imports nothing, so every layer (protocol, agent, server, CLI) may use it.
 */

/**
 * How a failure ends a CLI command. The numbers are in EXIT_CODES; several classes share a number
 * where the documented exit codes of different command groups already do (3 is "node not found" for
 * `meshlink server` and "enrollment refused" for `meshlink agent enroll`).
 */
export type ExitClass =
  | 'internal'
  | 'usage'
  | 'nodeNotResolved'
  | 'enrollRefused'
  | 'passphrase'
  | 'pinMismatch'
  | 'notInitialized'
  | 'alreadyEnrolled'
  | 'serverRunning'
  | 'agentRunning'
  | 'serverUnavailable'
  | 'nodeOffline'
  | 'notEnrolled'
  | 'refused'
  | 'timeout'
  | 'transfer'
  | 'noServer'
  | 'upgradeRestart'
  | 'revoked'
  | 'certExpired';

/**
 * Exit numbers of every command (docs/ERRORS.md; docs/SERVER.md, AGENT.md, OPERATIONS.md per group).
 * They live here rather than in src/cli because `agent run` itself returns 75/78/79 to systemd
 * (packaging/systemd/meshlink-agent.service prevents a restart on 78 and 79), and the agent may not
 * import the CLI.
 */
export const EXIT_CODES = {
  ok: 0,
  internal: 1,
  usage: 2,
  nodeNotResolved: 3,
  enrollRefused: 3,
  passphrase: 4,
  pinMismatch: 4,
  notInitialized: 5,
  alreadyEnrolled: 5,
  serverRunning: 6,
  agentRunning: 6,
  serverUnavailable: 6,
  nodeOffline: 7,
  notEnrolled: 7,
  refused: 8,
  timeout: 9,
  transfer: 10,
  noServer: 11,
  upgradeRestart: 75,
  revoked: 78,
  certExpired: 79,
} as const satisfies Record<ExitClass | 'ok', number>;

export interface ErrorSpec {
  readonly description: string;
  /** HTTP status of an answer carrying this code; absent: the code is never an HTTP answer of its own (500 if it becomes one). */
  readonly status?: number;
  /** WebSocket close code sent when this error terminates a session; absent: it never does. */
  readonly closeCode?: number;
  readonly exit: ExitClass;
}

export const ERRORS = {
  // --- framing (decoder); docs/PROTOCOL.md is the wire spec of every close code ---
  ML_ERR_FRAME_TOO_LARGE: { closeCode: 1009, exit: 'internal', description: 'A frame header announces a payload longer than the receiver’s maximum frame size.' },
  ML_ERR_FRAME_TRUNCATED: { closeCode: 4001, exit: 'internal', description: 'A WebSocket message ended inside a frame; messages carry whole frames only.' },
  ML_ERR_RESERVED_FLAG: { closeCode: 4002, exit: 'internal', description: 'A frame has a reserved flag bit set.' },
  ML_ERR_UNKNOWN_TYPE: { closeCode: 4003, exit: 'internal', description: 'A frame carries a type code that is not in the registry.' },
  ML_ERR_BAD_PAYLOAD: { closeCode: 4004, exit: 'internal', description: 'A payload is not valid MessagePack, fails to inflate, or fails its schema.' },
  ML_ERR_WRONG_DIRECTION: { closeCode: 4005, exit: 'internal', description: 'A message kind arrived from a role that may not send it.' },
  ML_ERR_WRONG_STREAM: { closeCode: 4006, exit: 'internal', description: 'A control-only kind arrived on a stream, or a stream kind on stream 0.' },
  ML_ERR_NOT_TEXT: { closeCode: 4007, exit: 'internal', description: 'A text WebSocket message arrived; meshlink uses binary messages only.' },
  // --- handshake ---
  ML_ERR_NO_COMMON_VERSION: { closeCode: 4010, exit: 'internal', description: 'The agent and server share no protocol version.' },
  ML_ERR_HANDSHAKE: { closeCode: 4011, exit: 'internal', description: 'A message other than hello/welcome arrived before the handshake completed, or the handshake timed out.' },
  // --- streams and flow control ---
  ML_ERR_FLOW_CONTROL: { closeCode: 4020, exit: 'internal', description: 'A peer sent stream data beyond the credit it was granted.' },
  ML_ERR_STREAM_ID: { closeCode: 4021, exit: 'internal', description: 'A stream id has the wrong parity, is reused, or names no open stream where one is required.' },
  ML_ERR_TOO_MANY_STREAMS: { closeCode: 4022, exit: 'internal', description: 'A peer kept opening streams after being refused for exceeding the concurrent stream cap.' },
  ML_ERR_QUEUE_OVERFLOW: { closeCode: 4023, exit: 'internal', description: 'A bounded queue overflowed because a peer ignored backpressure.' },
  ML_ERR_DECODE_BUDGET: { closeCode: 4024, exit: 'internal', description: 'A peer made the receiver inflate and decode more than its budget, per WebSocket message or per second.' },
  ML_ERR_STREAM_REJECTED: { exit: 'internal', description: 'The peer refused to open a stream (stream.reject).' },
  ML_ERR_STREAM_RESET: { exit: 'internal', description: 'The stream was reset by the peer or locally (stream.reset).' },
  ML_ERR_STREAM_CLOSED: { exit: 'internal', description: 'A write or message on a stream that is already closed for writing.' },
  ML_ERR_CANCELLED: { exit: 'internal', description: 'Reset code: the application abandoned the stream (e.g. the operator ended the command).' },
  // `meshlink server action|exec|...` report it as a refusal by the agent (exit 8), like the ops refusals.
  ML_ERR_UNSUPPORTED: { exit: 'refused', description: 'Reject or error code: no handler for this stream kind or request here.' },
  // --- session ---
  ML_ERR_HEARTBEAT_TIMEOUT: { closeCode: 4030, exit: 'internal', description: 'The peer sent nothing for longer than the liveness timeout.' },
  ML_ERR_REQUEST_TIMEOUT: { exit: 'internal', description: 'A request got no response in time.' },
  ML_ERR_REMOTE: { exit: 'internal', description: 'The peer answered a request with an error message.' },
  ML_ERR_SESSION_CLOSED: { exit: 'internal', description: 'The session closed while an operation was pending.' },
  // A node has one live certificate: a session on a newer certificate of the node closes the older
  // sessions with 4409 (docs/SERVER.md, "Certificates of a node"); the agent that gets it reconnects.
  ML_ERR_SESSION_REPLACED: { closeCode: 4409, exit: 'internal', description: 'The node opened a session with a newer certificate; this older session is closed with 4409.' },
  ML_ERR_GOAWAY: { closeCode: 1001, exit: 'internal', description: 'The peer is going away (goaway); no new streams or requests.' },
  ML_ERR_INTERNAL: { status: 500, closeCode: 1011, exit: 'internal', description: 'An unexpected internal error.' },

  // --- authentication (gateway) ---
  // The same codes as the protocol's close codes 4401/4402, so an agent reads one vocabulary whether it
  // is refused before the upgrade (403 body) or disconnected after it (close code).
  ML_ERR_CERT_REVOKED: { status: 403, closeCode: 4401, exit: 'revoked', description: 'The client certificate is revoked (its node was removed); a live session is closed with 4401.' },
  ML_ERR_CERT_EXPIRED: {
    status: 403,
    closeCode: 4402,
    exit: 'certExpired',
    description: 'The client certificate has expired (for /v1/renew: longer ago than the renewal grace); a live session is closed with 4402 at its NotAfter.',
  },
  ML_ERR_CERT_FORBIDDEN: { status: 403, exit: 'internal', description: 'The client certificate may not be used here (not yet valid, or it does not match the request).' },
  ML_ERR_CLIENT_CERT: { status: 401, exit: 'internal', description: 'No client certificate, or one this CA did not issue.' },
  ML_ERR_OVERLOADED: {
    exit: 'internal',
    description: 'A connection was dropped before its TLS handshake because the admission queue was full (a refusal reason in the metrics; nothing is sent).',
  },

  // --- server: configuration, store, HTTP ---
  ML_ERR_SHUTTING_DOWN: { status: 503, exit: 'serverUnavailable', description: 'The server is shutting down: a request or WebSocket upgrade that arrives during its shutdown is refused (an agent retries with backoff, reaching the restarted server or another replica).' },
  ML_ERR_CONFIG: { status: 500, exit: 'usage', description: 'A configuration value or option is invalid (named field in the message).' },
  ML_ERR_CA_PASSPHRASE: {
    status: 500,
    exit: 'passphrase',
    description: 'The store’s secrets could not be decrypted: the server key file or MESHLINK_CA_PASSPHRASE is not the one that sealed them (or a store of an earlier release was moved before its first start with this one).',
  },
  ML_ERR_KEY_FILE: {
    status: 500,
    exit: 'passphrase',
    description: 'The server key file is missing for a store sealed with one, open to group or others, a symlink, owned by another user, malformed, or cannot be created.',
  },
  ML_ERR_BACKUP: { status: 500, exit: 'internal', description: 'A backup or restore failed: the target cannot be written, or the file to restore is not a meshlink store.' },
  ML_ERR_NOT_INITIALIZED: { status: 500, exit: 'notInitialized', description: 'The data dir has no CA yet; run `meshlink server start` once.' },
  ML_ERR_AGENT_RUNNING: { exit: 'agentRunning', description: 'Another `agent run` holds this state dir (agent.lock names its pid).' },
  ML_ERR_SERVER_RUNNING: { status: 500, exit: 'serverRunning', description: 'Another server already answers on this data dir’s admin socket.' },
  ML_ERR_SERVER_NOT_RUNNING: { exit: 'noServer', description: 'No server answers on the data dir’s admin socket (commands that need a running server).' },
  ML_ERR_STORE_UNAVAILABLE: { status: 503, exit: 'serverUnavailable', description: 'The store cannot be reached or did not answer (PostgreSQL down, a connection lost): a request that needs it is refused; live sessions stay up, and it succeeds again once the database is back.' },
  ML_ERR_STORE_SCHEMA: { status: 500, exit: 'internal', description: 'The store was written by a newer meshlink (unknown migration).' },
  ML_ERR_BAD_REQUEST: { status: 400, exit: 'usage', description: 'The request body is not valid JSON or fails its schema.' },
  ML_ERR_BODY_TOO_LARGE: { status: 413, exit: 'internal', description: 'The request body exceeds the endpoint’s cap.' },
  ML_ERR_NOT_FOUND: { status: 404, exit: 'internal', description: 'No such endpoint.' },
  ML_ERR_METHOD: { status: 405, exit: 'internal', description: 'Method not allowed on this endpoint.' },
  ML_ERR_RATE_LIMITED: { status: 429, exit: 'internal', description: 'Too many failed requests from this address, or renewals of this node; retry after the Retry-After seconds.' },
  ML_ERR_NODE_NOT_FOUND: { status: 404, exit: 'nodeNotResolved', description: 'No live node has this id or hostname.' },
  ML_ERR_NODE_AMBIGUOUS: { status: 409, exit: 'nodeNotResolved', description: 'Several live nodes share this hostname; use the node id.' },
  // The HTTP body code of an unexpected failure: agents and docs see this name, so it stays apart from
  // ML_ERR_INTERNAL (which is also close code 1011).
  ML_ERR_SERVER_INTERNAL: { status: 500, exit: 'internal', description: 'An unexpected server error (details in the server log).' },

  // --- enrollment (server side) ---
  ML_ERR_CSR_INVALID: { status: 400, exit: 'internal', description: 'The CSR cannot be parsed or its self-signature does not verify.' },
  ML_ERR_CSR_KEY: { status: 400, exit: 'internal', description: 'The CSR key is not acceptable (RSA shorter than 2048 bits, or an unsupported key type/curve).' },
  ML_ERR_TOKEN_INVALID: { status: 401, exit: 'internal', description: 'The enrollment token is unknown, already used, expired, or revoked.' },
  ML_ERR_TOKEN_NOT_FOUND: { status: 404, exit: 'nodeNotResolved', description: 'No enrollment token has this id (`server token list` shows them).' },
  ML_ERR_TOKEN_USED: { status: 409, exit: 'refused', description: 'The enrollment token was already used, so there is nothing to revoke: remove the node it enrolled instead.' },

  // --- enrollment (agent side) ---
  ML_ERR_PIN_FORMAT: { exit: 'usage', description: 'A CA pin is not `sha256:<64 lower-case hex>`.' },
  ML_ERR_CA_CERT: { exit: 'serverUnavailable', description: '`/v1/ca` answered with an HTTP error or not exactly one CA certificate.' },
  ML_ERR_CA_ROTATION_PHASE: {
    status: 409,
    exit: 'refused',
    description: 'The CA rotation step does not follow the current phase (`start`, then `issue`, then `retire`; `start` again only after `retire`).',
  },
  ML_ERR_CA_RETIRE_BLOCKED: {
    status: 409,
    exit: 'refused',
    description: 'Live nodes still hold a certificate of the old CA (listed in the message); wait until they renew, remove them, or retire with --force.',
  },
  ML_ERR_CA_PIN_MISMATCH: { exit: 'pinMismatch', description: 'The server’s CA pin is not among the pins given.' },
  ML_ERR_ALREADY_ENROLLED: { exit: 'alreadyEnrolled', description: 'The state dir holds an identity and `--force` was not given.' },
  ML_ERR_SERVER_UNREACHABLE: { exit: 'serverUnavailable', description: 'The server cannot be reached (connection refused, timeout, DNS failure…).' },
  ML_ERR_SERVER_TLS: { exit: 'serverUnavailable', description: 'The server’s certificate is not from the pinned CA or lacks the dialled name.' },
  ML_ERR_ENROLL_RESPONSE: {
    exit: 'serverUnavailable',
    description: 'The enrollment response is too large, not JSON, malformed, not for our key, or not signed by a pinned CA.',
  },
  ML_ERR_ENROLL_REFUSED: { exit: 'enrollRefused', description: 'The server answered HTTP 4xx without a JSON error body.' },
  ML_ERR_SERVER: { exit: 'serverUnavailable', description: 'The server answered HTTP 5xx without a JSON error body.' },
  ML_ERR_CONNECT_REFUSED: { exit: 'internal', description: 'The server refused the agent’s WebSocket upgrade (the message carries its HTTP status and code).' },
  ML_ERR_PROXY_UNREACHABLE: { exit: 'serverUnavailable', description: 'The HTTPS proxy the agent uses cannot be reached (connection refused, timeout, DNS failure…).' },
  ML_ERR_PROXY_REFUSED: { exit: 'serverUnavailable', description: 'The HTTPS proxy refused to open a CONNECT tunnel to the server (the message carries its status line).' },
  ML_ERR_PROXY_AUTH: { exit: 'serverUnavailable', description: 'The HTTPS proxy asks for authentication (407, or 401 from some proxies): no credentials in the proxy URL, or wrong ones.' },

  // --- agent state dir ---
  ML_ERR_NOT_ENROLLED: { exit: 'notEnrolled', description: 'No committed identity in the state dir; run `meshlink agent enroll` first.' },
  ML_ERR_STATE_ACCESS: { exit: 'notEnrolled', description: 'The state dir cannot be read or created (permissions, not a directory, or a non-empty directory open to other users).' },
  ML_ERR_STATE_CORRUPT: {
    exit: 'notEnrolled',
    description: 'The state dir’s files are inconsistent (key ≠ certificate, unpinned CA, bad JSON, `current` pointing outside `generations/`).',
  },

  // --- mesh ---
  ML_ERR_MESH_POLICY: { status: 400, exit: 'usage', description: 'The policy file is invalid; the message names the fault. The policy in force is kept.' },
  ML_ERR_MESH_CIDR: {
    status: 500,
    exit: 'internal',
    description: 'The mesh range (MESHLINK_MESH_CIDR) is not an IPv4 CIDR of /8 to /30, or does not hold the addresses already assigned.',
  },
  ML_ERR_MESH_EXHAUSTED: { status: 409, exit: 'internal', description: 'No free address is left in the mesh range.' },
  ML_ERR_MESH_TAG: { status: 400, exit: 'usage', description: 'A tag is not valid (letters, digits, . _ -; at most 64).' },
  ML_ERR_MESH_KEY_IN_USE: {
    closeCode: 4410,
    exit: 'internal',
    description: 'A node reported a WireGuard public key that another live node holds; the session is refused and the claim is written to the audit log.',
  },
  ML_ERR_MESH_CLOSED: { status: 503, exit: 'internal', description: 'The server is shutting down; mesh changes are no longer computed (the next start recomputes).' },
  // --- NAT traversal (STUN endpoint discovery; docs/MESH.md) ---
  ML_ERR_STUN_NO_ANSWER: { exit: 'timeout', description: 'The STUN responder did not answer a Binding request in time (UDP blocked, or the responder off).' },
  ML_ERR_STUN_ERROR: { exit: 'refused', description: 'The STUN responder answered a Binding request with an error (the message names its code).' },
  ML_ERR_STUN_PORT_BUSY: { exit: 'usage', description: 'A UDP port for STUN is in use: the responder’s listen port, or the local port of a probe (WireGuard holds its listen port while the interface is up).' },
  ML_ERR_RELAY_FULL: { exit: 'serverUnavailable', description: 'The UDP relay holds its maximum number of allocations (`--relay-max-allocations`), or every port of its range is in use; the pair keeps its peers’ own endpoints and is tried again at the next change.' },
  ML_ERR_RELAY_BAD_ALLOCATION: { exit: 'usage', description: 'A relay allocation request is malformed: a member IP that is not an IP address, no IP or more than 4 for a member, or the same node twice (the message names the field).' },
  ML_ERR_WIREGUARD: { exit: 'internal', description: 'An `ip` or `wg` command applying the mesh to the WireGuard interface failed (the message names it).' },

  // --- remote operations (agent codes in stream.reject / stream.reset / results; admin API answers) ---
  ML_ERR_OPS_BAD_REQUEST: { status: 400, exit: 'usage', description: 'The operation request is malformed (named field in the message).' },
  ML_ERR_OPS_NODE_OFFLINE: { status: 409, exit: 'nodeOffline', description: 'The node has no open session to the server right now.' },
  ML_ERR_OPS_UNKNOWN_ACTION: { status: 404, exit: 'refused', description: 'No built-in action and no executable hook has this name on the agent.' },
  ML_ERR_OPS_HOOK_UNSAFE: {
    status: 403,
    exit: 'refused',
    description: 'The hook or the hooks dir is owned by another user than root or the agent’s, is writable by group or others, or the hook is a symbolic link; it is not run.',
  },
  ML_ERR_OPS_BUSY: { status: 429, exit: 'refused', description: 'The agent runs its maximum of concurrent actions and its queue is full.' },
  ML_ERR_OPS_TIMEOUT: { status: 504, exit: 'timeout', description: 'The operation ran past its timeout; its whole process group was killed.' },
  ML_ERR_OPS_EXEC_DISABLED: { status: 403, exit: 'refused', description: 'Exec is off on this agent (start it with --allow-exec).' },
  ML_ERR_OPS_TRANSFER_DISABLED: { status: 403, exit: 'refused', description: 'File transfer is off on this agent (start it with --transfer-dir DIR).' },
  ML_ERR_OPS_PATH_FORBIDDEN: {
    status: 403,
    exit: 'refused',
    description: 'The path is not inside a directory the agent allows (--transfer-dir), or is not a regular file.',
  },
  ML_ERR_OPS_NOT_FOUND: { status: 404, exit: 'refused', description: 'The file (or bundle) does not exist.' },
  ML_ERR_OPS_IO: { status: 500, exit: 'transfer', description: 'Reading or writing the file failed (message names the cause).' },
  ML_ERR_OPS_CHECKSUM: { status: 422, exit: 'transfer', description: 'The SHA-256 of the received bytes does not match the sender’s; nothing was committed.' },
  ML_ERR_OPS_NO_LOG: { status: 404, exit: 'refused', description: 'The agent keeps no log file to tail (it was not started by `meshlink agent run`).' },
  ML_ERR_OPS_SPAWN: { status: 500, exit: 'refused', description: 'The command or hook could not be started (message names the cause).' },
  ML_ERR_OPS_UPGRADE: { status: 400, exit: 'internal', description: 'An agent upgrade could not be set or applied (message names the cause).' },
  // --- signed agent releases (docs/OPERATIONS.md, "Agent upgrade"): `upgrade set` answers, agent.upgrade.status codes ---
  ML_ERR_UPGRADE_NOT_BUNDLE: { status: 400, exit: 'usage', description: 'The file is not a meshlink agent bundle (header, UTF-8 text, at most 64 MiB; the message names what is wrong).' },
  ML_ERR_UPGRADE_KEY: { status: 400, exit: 'usage', description: 'A release key or release key file is malformed (expected ed25519:<base64 of 32 bytes>, or the PEM `release keygen` wrote).' },
  ML_ERR_UPGRADE_UNSIGNED: { status: 400, exit: 'refused', description: 'The build carries no release signature (sign it with `meshlink release sign`).' },
  ML_ERR_UPGRADE_SIGNATURE: { status: 422, exit: 'refused', description: 'The release signature does not verify, or the key that made it is not trusted here.' },
  ML_ERR_UPGRADE_NO_RELEASE_KEY: { status: 409, exit: 'refused', description: 'No release key is configured (server: --release-key on start; agent: --release-key at enroll or run), so no build can be verified.' },
  ML_ERR_UPGRADE_DOWNGRADE: { status: 409, exit: 'refused', description: 'The build’s version is lower than the current one; `upgrade set --allow-downgrade` forces it.' },
  ML_ERR_UPGRADE_BUILD_ID: { status: 400, exit: 'refused', description: 'A build id is not 64 lower-case hex digits, or the bytes or size do not match the signed build id.' },
  ML_ERR_UPGRADE_HEALTH: { exit: 'internal', description: 'The new build did not start and connect within the health deadline; the agent kept (rolled back to) its running build.' },
  ML_ERR_OPS_ENDED: { status: 409, exit: 'refused', description: 'Another operator ended this operation (`server ops end`, or the console’s Operations page; the message names who).' },
  ML_ERR_OPS_OPERATION_NOT_FOUND: { status: 404, exit: 'nodeNotResolved', description: 'No running operation has this id (`server ops list` shows them).' },
  ML_ERR_OPS_FILE_CHANGED: {
    status: 409,
    exit: 'transfer',
    description: 'The file changed size while it was pulled (bytes sent differ from its declared size); nothing was committed.',
  },
  ML_ERR_OPS_INTERRUPTED: { status: 502, exit: 'transfer', description: 'The operation was cut off (the connection dropped or the peer went away).' },

  // --- tunnels (agent codes in stream.reject / stream.reset, relayed to `server tunnel`) ---
  ML_ERR_TUNNEL_NOT_ALLOWED: { status: 403, exit: 'refused', description: 'The agent’s tunnel allowlist (--allow-tunnel) does not hold this host:port.' },
  ML_ERR_TUNNEL_CONNECT: { status: 502, exit: 'refused', description: 'The agent could not connect to the tunnel’s target (message names the cause).' },
  ML_ERR_TUNNEL_RESET: { status: 502, exit: 'transfer', description: 'A tunnelled TCP connection was reset by the target or the local client.' },
  // --- web console (docs/CONSOLE.md) ---
  ML_ERR_CONSOLE_OFF: { status: 409, exit: 'usage', description: 'The web console is off on this server (start it with --console-listen HOST:PORT).' },
  ML_ERR_CONSOLE_UNAUTHORIZED: { status: 401, exit: 'internal', description: 'No valid console session, or a login link that is unknown, used or expired.' },
  ML_ERR_CONSOLE_ORIGIN: { status: 403, exit: 'internal', description: 'A state-changing console request without the console’s own Origin.' },
  ML_ERR_CONSOLE_BUSY: { status: 429, exit: 'internal', description: 'The console holds its maximum of pending login links or live event streams.' },

  // --- command line ---
  // commander's own parse errors (unknown command or option, missing argument) are ML_ERR_USAGE too.
  ML_ERR_USAGE: { exit: 'usage', description: 'Missing, unknown or conflicting command-line input.' },
  ML_ERR_DURATION: { exit: 'usage', description: 'A duration is not whole numbers with units (ms, s, m, h, d), largest first, or is too large.' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

/** What a code received from elsewhere must look like to be kept; anything else becomes ML_ERR_INTERNAL. */
const WIRE_CODE = /^ML_ERR_[A-Z0-9_]{1,64}$/;
/** A peer's message is shown to operators: cap it. */
const MAX_WIRE_MESSAGE = 1000;

/**
 * A code received from a peer, for a constructor: kept when it looks like a code (it may be one this
 * build does not know: typed as ErrorCode only because the constructor handles codes outside the
 * table), else ML_ERR_INTERNAL. Subclasses that carry a peer's code use it; everything else calls fromWire.
 */
export function codeFromWire(code: unknown): ErrorCode {
  return typeof code === 'string' && WIRE_CODE.test(code) ? (code as ErrorCode) : 'ML_ERR_INTERNAL';
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERRORS, code);
}

export interface MeshlinkErrorOptions {
  cause?: unknown;
  /** Seconds for a Retry-After header (ML_ERR_RATE_LIMITED). */
  retryAfterSec?: number;
}

/**
 * The one error class. Status, close code and exit class come from the table; building one never
 * throws, even for a code that is not in it (fromWire keeps such codes with the internal defaults).
 */
export class MeshlinkError extends Error {
  readonly code: string;
  /** HTTP status of an answer carrying this error (the table's, else 500). */
  readonly status: number;
  /** Close code of a session this error ends, or null when it never ends one on its own. */
  readonly closeCode: number | null;
  readonly exit: ExitClass;
  readonly retryAfterSec: number | undefined;

  constructor(code: ErrorCode, message: string, options: MeshlinkErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MeshlinkError';
    const spec: ErrorSpec | undefined = isErrorCode(code) ? ERRORS[code] : undefined;
    this.code = typeof code === 'string' ? code : 'ML_ERR_INTERNAL';
    this.status = spec?.status ?? 500;
    this.closeCode = spec?.closeCode ?? null;
    this.exit = spec?.exit ?? 'internal';
    this.retryAfterSec = options.retryAfterSec;
  }

  /**
   * Rebuilds an error a peer or the admin socket reported as `{code, message}`. A well-formed code keeps
   * its name even when this build does not know it (a newer server), with the internal status and
   * exit class; a malformed one becomes ML_ERR_INTERNAL. A missing message is replaced by `fallback`.
   */
  static fromWire(code: unknown, message: unknown, extra: MeshlinkErrorOptions & { fallback?: string } = {}): MeshlinkError {
    const text = typeof message === 'string' && message !== '' ? message.slice(0, MAX_WIRE_MESSAGE) : (extra.fallback ?? 'no message');
    return new MeshlinkError(codeFromWire(code), text, extra);
  }
}

/** True for an error defined by the wire protocol: one that ends a session with its own close code. */
export function isProtocolError(err: unknown): err is MeshlinkError & { closeCode: number } {
  return err instanceof MeshlinkError && err.closeCode !== null;
}
