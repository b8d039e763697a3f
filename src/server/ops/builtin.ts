import { MAX_BUILTIN_OUTPUT, type runBuiltin } from '../../admin-api/routes.js';
import type { RouteResult } from '../../admin-api/route.js';
import { MeshlinkError } from '../../errors.js';
import type { PayloadOf } from '../../protocol/registry.js';
import type { AgentSessions } from '../agent-sessions.js';
import { resolveNode } from '../nodes.js';
import type { Store } from '../store/store.js';
import { describeError } from './tunnel.js';

/**
 * `ops.builtin`: one of the agent's read-only built-in actions (ping, diagnostics) as a plain JSON
 * request, for the console's Node page (a browser cannot open the ops tunnel, which lives on the admin
 * unix socket). It opens the same `action.request` stream the CLI's `server action` does, collects the
 * output up to MAX_BUILTIN_OUTPUT bytes and answers with the agent's result. The admin routes audit
 * it (a POST) with the operator's name; the agent audits the action it ran as for any action.
 */

/** An agent that takes longer than this to ping or report is treated as unresponsive. */
export const BUILTIN_TIMEOUT_MS = 30_000;

export async function runBuiltinAction(
  deps: { store: Store; sessions: AgentSessions },
  input: { node: string; action: 'ping' | 'diagnostics' },
  timeoutMs = BUILTIN_TIMEOUT_MS,
): Promise<RouteResult<typeof runBuiltin>> {
  const node = await resolveNode(deps.store, input.node);
  const agent = deps.sessions.current(node.id);
  if (!agent) throw new MeshlinkError('ML_ERR_OPS_NODE_OFFLINE', `node ${node.id} (${node.hostname}) is not connected`);
  const startedAt = performance.now();
  const stream = await deps.sessions.openStream(agent, 'action.request', { action: input.action, timeoutMs });
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let kept = 0;
    let truncated = false;
    let result: PayloadOf<'action.result'> | null = null;
    const timer = setTimeout(() => {
      stream.destroy(new MeshlinkError('ML_ERR_CANCELLED', 'the server gave up waiting'));
      reject(new MeshlinkError('ML_ERR_OPS_TIMEOUT', `${node.hostname} did not answer ${input.action} within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    timer.unref();
    stream.on('data', (c: Buffer) => {
      const room = MAX_BUILTIN_OUTPUT - kept;
      if (c.length > room) truncated = true;
      if (room > 0) {
        chunks.push(c.subarray(0, room));
        kept += Math.min(room, c.length);
      }
    });
    stream.on('message', ({ name, payload }) => {
      if (name === 'action.result') result = payload;
    });
    stream.on('end', () => {
      clearTimeout(timer);
      if (!stream.writableEnded) stream.end();
      if (!result) return reject(new MeshlinkError('ML_ERR_OPS_INTERRUPTED', 'the agent ended the action without a result'));
      const r: PayloadOf<'action.result'> = result;
      resolve({
        nodeId: node.id,
        action: input.action,
        exitCode: r.exitCode,
        output: Buffer.concat(chunks).toString('utf8'),
        truncated: truncated || r.truncated,
        durationMs: r.durationMs,
        roundTripMs: Math.round((performance.now() - startedAt) * 10) / 10,
        ...(r.error ? { error: r.error } : {}),
      });
    });
    stream.on('error', (err) => {
      clearTimeout(timer);
      const d = describeError(err);
      reject(MeshlinkError.fromWire(d.code, d.message));
    });
  });
}
