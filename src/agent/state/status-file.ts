import { zodErrorText } from '../../util/zod-error.js';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../../util/atomic-file.js';

/**
 * `<stateDir>/status.json`: written by the running agent (`agent run`) at every connection state
 * change, read by `meshlink agent status`. One JSON object and a newline, mode 0644, replaced
 * atomically; the format is on disk at users' sites, so fields are only ever added (the schema is
 * loose: readers keep fields they do not know).
 */

const STATUS_FILE = 'status.json';

export const CONNECTION_STATES = ['connected', 'connecting', 'backoff', 'stopped'] as const;

/**
 * The server revoked the node (close 4401 session_revoked, or a connection refused with
 * ML_ERR_CERT_REVOKED): when, how, and the certificate it was for (a re-enrolled identity has
 * another serial, so `agent status` shows the revocation only while the revoked one is still held).
 */
export const revocationSchema = z.object({ at: z.string().datetime(), how: z.string().max(200), certSerial: z.string().max(128).nullable() });
export type Revocation = z.infer<typeof revocationSchema>;

export const agentStatusSchema = z.looseObject({
  state: z.enum(CONNECTION_STATES),
  since: z.string().datetime(),
  /** Process id of the writer, lets `status` tell a crashed agent's leftover file from a live one. */
  pid: z.number().int().positive().optional(),
  updatedAt: z.string().datetime().optional(),
  /** Only in the last file of an `agent run` that ended because the server revoked the node. */
  revoked: revocationSchema.optional(),
});
export type AgentStatus = z.infer<typeof agentStatusSchema>;

export type AgentStatusReading =
  | { readonly kind: 'absent' }
  | { readonly kind: 'invalid'; readonly message: string }
  | { readonly kind: 'present'; readonly status: AgentStatus; readonly writerAlive: boolean | null };

const STATUS_MAX_BYTES = 64 * 1024;

export async function writeAgentStatus(stateDir: string, status: AgentStatus): Promise<void> {
  const checked = agentStatusSchema.parse(status);
  await writeFileAtomic(join(stateDir, STATUS_FILE), `${JSON.stringify(checked)}\n`, { mode: 0o644 });
}

export async function readAgentStatus(stateDir: string): Promise<AgentStatusReading> {
  let raw: string;
  try {
    const handle = await open(join(stateDir, STATUS_FILE), 'r');
    try {
      const { size } = await handle.stat();
      if (size > STATUS_MAX_BYTES) return { kind: 'invalid', message: `status.json is larger than ${STATUS_MAX_BYTES} bytes` };
      raw = await handle.readFile('utf8');
    } finally {
      await handle.close();
    }
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { kind: 'absent' };
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    return { kind: 'invalid', message: 'status.json is not valid JSON' };
  }
  const parsed = agentStatusSchema.safeParse(json);
  if (!parsed.success) {
    return { kind: 'invalid', message: `status.json is invalid: ${zodErrorText(parsed.error, { all: true })}` };
  }
  return { kind: 'present', status: parsed.data, writerAlive: parsed.data.pid === undefined ? null : processAlive(parsed.data.pid) };
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return isErrno(err, 'EPERM');
  }
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}
