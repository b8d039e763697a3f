import { z } from 'zod';

/**
 * The operator's side of streaming operations: a WebSocket on the admin unix socket
 * (`ws+unix://<dataDir>/admin.sock:/v1/ops/stream`). The socket's file permission (0600, in a 0700
 * data dir) is the authentication, exactly as for the JSON admin endpoints.
 *
 * - The client's first message is text: one OpsRequest (JSON).
 * - Binary messages carry the operation's bytes: stdin / pushed file bytes from the client,
 *   stdout / output / log lines / pulled file bytes from the server. Flow control is end to end:
 *   the server stops reading the WebSocket while the agent's stream window is exhausted, and stops
 *   reading the agent's stream while the WebSocket is backed up.
 * - Other text messages are events (TunnelEvent from the server, ClientEvent from the client).
 * - A tunnel (`op: 'tunnel'`) is one TCP connection: `ack` once the agent is connected to the target
 *   (bytes before it are dropped), then bytes both ways; the client sends only within the `credit`
 *   the server grants (more is a bad request); `eof` each way carries a FIN, and after both the
 *   server sends `closed`.
 * - The server closes the WebSocket after the final event (result, exit, done, closed or error). A client
 *   that closes early cancels the operation: the agent's stream is reset and its work stops.
 */

export const OPS_STREAM_PATH = '/v1/ops/stream';

const node = z.string().min(1).max(253);
const actor = z.string().min(1).max(128);
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);
const argKey = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'argument names are letters, digits and _');
export const actionName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'action names are letters, digits, ".", "_" and "-"');
const absPath = z.string().min(1).max(4096).startsWith('/', 'the remote path must be absolute');

export const opsRequestSchema = z.discriminatedUnion('op', [
  z.object({
    op: z.literal('action'),
    node,
    actor,
    action: actionName,
    args: z.record(argKey, z.string().max(4096)).default({}),
    timeoutMs: z.number().int().min(1).max(86_400_000).optional(),
  }).strict(),
  z.object({
    op: z.literal('exec'),
    node,
    actor,
    command: z.string().min(1).max(4096),
    args: z.array(z.string().max(65_536)).max(1024).default([]),
    cwd: z.string().max(4096).optional(),
  }).strict(),
  z.object({ op: z.literal('logs'), node, actor, lines: z.number().int().min(0).max(100_000).default(100), follow: z.boolean().default(false) }).strict(),
  z.object({ op: z.literal('push'), node, actor, path: absPath, size: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER), sha256: sha256Hex }).strict(),
  z.object({ op: z.literal('pull'), node, actor, path: absPath, offset: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0) }).strict(),
  /** One TCP connection to host:port, made by the agent (`server tunnel`); bytes both ways, `eof` both ways for FIN. */
  z.object({ op: z.literal('tunnel'), node, actor, host: z.string().min(1).max(253), port: z.number().int().min(1).max(65535) }).strict(),
]);
export type OpsRequest = z.input<typeof opsRequestSchema>;
export type ParsedOpsRequest = z.output<typeof opsRequestSchema>;

/** Server → client events. */
export const tunnelEventSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('started'), auditId: z.number(), nodeId: z.string() }),
  z.object({ type: z.literal('ack'), startedAt: z.number(), queued: z.boolean() }),
  z.object({ type: z.literal('stderr'), data: z.string() }),
  z.object({ type: z.literal('resume'), offset: z.number() }),
  z.object({ type: z.literal('result'), exitCode: z.number().nullable(), signal: z.string().nullable().optional(), durationMs: z.number(), truncated: z.boolean(), error: z.string().optional() }),
  z.object({ type: z.literal('exit'), exitCode: z.number().nullable(), signal: z.string().nullable() }),
  z.object({ type: z.literal('done'), size: z.number(), sha256: z.string() }),
  z.object({ type: z.literal('error'), code: z.string(), message: z.string() }),
  /**
   * Tunnel: the client may send `bytes` more (after `ack`). Credit, not a paused socket, bounds what
   * the server buffers toward the agent, so the server keeps reading and sees a client that leaves.
   */
  z.object({ type: z.literal('credit'), bytes: z.number().int().min(1) }),
  /** Tunnel: the target finished sending (its FIN); bytes from the client still flow. */
  z.object({ type: z.literal('eof') }),
  /** Tunnel: both directions finished; the bytes each way, as the server counted them. */
  z.object({ type: z.literal('closed'), toTarget: z.number(), fromTarget: z.number(), durationMs: z.number() }),
]);
export type TunnelEvent = z.infer<typeof tunnelEventSchema>;

/** Client → server events. */
export const clientEventSchema = z.discriminatedUnion('type', [
  /** No more bytes from the client (stdin closed, or the pushed file is complete). */
  z.object({ type: z.literal('eof') }),
  z.object({ type: z.literal('resize'), cols: z.number().int().min(1).max(1000), rows: z.number().int().min(1).max(1000) }),
]);
export type ClientEvent = z.infer<typeof clientEventSchema>;
