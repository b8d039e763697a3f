import { MeshlinkError } from '../../errors.js';
import type { PayloadOf, StreamMessage } from '../../protocol/registry.js';
import type { MuxStream } from '../../protocol/stream.js';
import type { Logger } from '../../util/logger.js';
import { resolveNode } from '../nodes.js';
import type { AgentSessions } from '../agent-sessions.js';
import type { AuditLog } from '../audit-log.js';
import type { Store } from '../store/store.js';
import { PacedSocket, pipeReadableToWs, writeFromWs } from './bridge.js';
import { relayTcp } from './tcp-tunnel.js';
import type { RunningOperations } from './running.js';
import { describeError, type OperationHandler, type Tunnel } from './tunnel.js';
import type { ParsedOpsRequest, TunnelEvent } from '../../admin-api/tunnel.js';

/**
 * The server's half of every streaming operation: resolve the node, record the operation in the
 * audit log, open the agent stream, relay bytes and events between the operator's WebSocket and the
 * stream, and record the result. One operation = one agent stream; the operator ending the command
 * resets that stream, which stops the work on the agent.
 */

export interface OperationDeps {
  store: Store;
  audit: AuditLog;
  sessions: AgentSessions;
  logger: Logger;
  /** Where running operations are listed and ended from (ops.list, ops.end). */
  running: RunningOperations;
}

interface Relay {
  /**
   * Typed messages from the agent on the stream; `event` sends an event to the operator under the
   * same backpressure as the stream's bytes (bridge.ts), so a flood of stderr pauses the stream.
   */
  onMessage?(message: StreamMessage, event: (e: TunnelEvent) => void): void;
  /** Relay the agent's bytes to the operator (else they are discarded). */
  pipeData: boolean;
  /** At the agent's END_STREAM: the final event and the audit result. */
  final(): { event: TunnelEvent | null; result: string };
}

export function createOperations(deps: OperationDeps): OperationHandler {
  return async (t) => {
    const r = t.request;
    let nodeId: string | null = null;
    let auditId: number | null = null;
    let result = 'ok';
    let finalDetails: Record<string, unknown> | null = null;
    let tracked: ReturnType<RunningOperations['add']> | null = null;
    // Set when another operator ends it (ops.end): the audit record says who.
    const ended: { by: string | null } = { by: null };
    try {
      const node = await resolveNode(deps.store, r.node);
      nodeId = node.id;
      auditId = await deps.audit.start({ actor: r.actor, operation: r.op, nodeId, target: targetOf(r), details: detailsOf(r) });
      tracked = deps.running.add({ id: auditId, op: r.op, nodeId, hostname: node.hostname, actor: r.actor, target: targetOf(r), startedAt: new Date().toISOString() }, (by) => {
        ended.by = by;
        t.abort(new MeshlinkError('ML_ERR_OPS_ENDED', `${by} ended this operation`));
      });
      const entry = tracked.entry;
      t.event({ type: 'started', auditId, nodeId });
      const agent = deps.sessions.current(node.id);
      if (!agent) throw new MeshlinkError('ML_ERR_OPS_NODE_OFFLINE', `node ${node.id} (${node.hostname}) is not connected`);
      const outcome = await run(t, async (name, meta) => (entry.stream = await deps.sessions.openStream(agent, name, meta)));
      result = outcome.result;
      if (outcome.details) finalDetails = { ...detailsOf(r), ...outcome.details };
    } catch (err) {
      result = `error:${describeError(err).code}`;
      t.fail(err);
    } finally {
      tracked?.done();
      if (ended.by !== null) {
        result = 'ended';
        finalDetails = { ...(finalDetails ?? detailsOf(r)), endedBy: ended.by };
      }
      if (auditId !== null) await deps.audit.finish(auditId, result, finalDetails);
      else await deps.audit.record({ actor: r.actor, operation: r.op, nodeId, target: targetOf(r), details: detailsOf(r), result });
    }
  };
}

type Open = (name: 'action.request' | 'exec.open' | 'log.stream' | 'file.open' | 'tunnel.open', meta: never) => Promise<MuxStream>;

/** How an operation ended, for its audit record; `details` replace the request's when present. */
interface Outcome {
  result: string;
  details?: Record<string, unknown>;
}

async function run(t: Tunnel, open: Open): Promise<Outcome> {
  const r = t.request;
  switch (r.op) {
    case 'action': {
      const stream = await openChecked(t, open, 'action.request', { action: r.action, args: r.args, ...(r.timeoutMs ? { timeoutMs: r.timeoutMs } : {}) });
      let res: PayloadOf<'action.result'> | null = null;
      return relay(t, stream, {
        pipeData: true,
        onMessage({ name, payload: p }, event) {
          if (name === 'action.ack') {
            const a = p;
            event({ type: 'ack', startedAt: a.startedAt, queued: a.queued ?? false });
          } else if (name === 'action.output') {
            const o = p;
            if (o.channel === 'stderr') event({ type: 'stderr', data: Buffer.from(o.data).toString('base64') });
          } else if (name === 'action.result') res = p;
        },
        final() {
          if (!res) return interrupted('the agent ended the action without a result');
          const { exitCode, signal, durationMs, truncated, error } = res;
          return {
            event: { type: 'result', exitCode, signal: signal ?? null, durationMs, truncated, ...(error ? { error } : {}) },
            result: error ? `error:${/^ML_ERR_[A-Z_]+/.exec(error)?.[0] ?? 'ACTION'}` : `exit:${exitCode ?? signal ?? 'none'}`,
          };
        },
      });
    }
    case 'exec': {
      const stream = await openChecked(t, open, 'exec.open', { command: r.command, args: r.args, ...(r.cwd ? { cwd: r.cwd } : {}) });
      let exit: PayloadOf<'exec.exit'> | null = null;
      t.onData((chunk) => writeFromWs(t.ws, stream, chunk));
      // The command runs: the client may send stdin from now on (bytes before this would have nowhere to go).
      t.event({ type: 'ack', startedAt: Date.now(), queued: false });
      t.onClientEvent((e) => {
        if (stream.destroyed || stream.writableEnded) return;
        if (e.type === 'eof') stream.end();
        else if (e.type === 'resize') stream.sendMessage('exec.resize', { cols: e.cols, rows: e.rows });
      });
      return relay(t, stream, {
        pipeData: true,
        onMessage({ name, payload: p }, event) {
          if (name === 'exec.stderr') event({ type: 'stderr', data: Buffer.from(p).toString('base64') });
          else if (name === 'exec.exit') exit = p;
        },
        final() {
          if (!exit) return interrupted('the agent ended the exec stream without an exit status');
          return { event: { type: 'exit', exitCode: exit.exitCode, signal: exit.signal }, result: `exit:${exit.exitCode ?? exit.signal ?? 'none'}` };
        },
      });
    }
    case 'logs': {
      const stream = await openChecked(t, open, 'log.stream', { lines: r.lines, follow: r.follow });
      return relay(t, stream, { pipeData: true, final: () => ({ event: null, result: 'ok' }) });
    }
    case 'push': {
      const stream = await openChecked(t, open, 'file.open', { path: r.path, direction: 'push', size: r.size, sha256: r.sha256 });
      let done: PayloadOf<'file.done'> | null = null;
      let sent = -1;
      t.onData((chunk) => {
        if (sent < 0) return; // bytes before the resume point are a client bug; the checksum catches it anyway
        sent += chunk.length;
        writeFromWs(t.ws, stream, chunk);
      });
      t.onClientEvent((e) => {
        if (e.type !== 'eof' || stream.destroyed || stream.writableEnded) return;
        stream.sendMessage('file.done', { size: r.size, sha256: r.sha256 });
        stream.end();
      });
      return relay(t, stream, {
        pipeData: false,
        onMessage({ name, payload: p }, event) {
          if (name === 'file.chunk') {
            const c = p;
            sent = c.offset;
            event({ type: 'resume', offset: c.offset });
          } else if (name === 'file.done') done = p;
        },
        final() {
          if (!done) return interrupted('the agent ended the transfer without confirming it');
          return { event: { type: 'done', size: done.size, sha256: done.sha256 }, result: 'ok' };
        },
      });
    }
    case 'pull': {
      const stream = await openChecked(t, open, 'file.open', { path: r.path, direction: 'pull', offset: r.offset });
      let done: PayloadOf<'file.done'> | null = null;
      return relay(t, stream, {
        pipeData: true,
        onMessage({ name, payload: p }, event) {
          if (name === 'file.chunk') event({ type: 'resume', offset: p.offset });
          else if (name === 'file.done') done = p;
        },
        final() {
          if (!done) return interrupted('the agent ended the transfer without its checksum');
          return { event: { type: 'done', size: done.size, sha256: done.sha256 }, result: 'ok' };
        },
      });
    }
    case 'tunnel': {
      const startedAt = Date.now();
      const stream = await openChecked(t, open, 'tunnel.open', { host: r.host, port: r.port });
      return relayTcp(t, stream, startedAt);
    }
  }
}

function interrupted(message: string): { event: TunnelEvent; result: string } {
  return { event: { type: 'error', code: 'ML_ERR_OPS_INTERRUPTED', message }, result: 'error:ML_ERR_OPS_INTERRUPTED' };
}

/** Opens the agent stream; if the operator already left, the stream is closed at once. */
async function openChecked(t: Tunnel, open: Open, name: Parameters<Open>[0], meta: unknown): Promise<MuxStream> {
  const stream = await open(name, meta as never);
  if (t.ended) {
    stream.destroy(new MeshlinkError('ML_ERR_CANCELLED', 'the operator ended the command'));
    throw new MeshlinkError('ML_ERR_CANCELLED', 'the operator ended the command');
  }
  return stream;
}

function relay(t: Tunnel, stream: MuxStream, opts: Relay): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (result: string): void => {
      if (settled) return;
      settled = true;
      resolve({ result });
    };
    t.onCancel(() => {
      stream.destroy(new MeshlinkError('ML_ERR_CANCELLED', 'the operator ended the command'));
      settle('cancelled');
    });
    const paced = opts.pipeData ? pipeReadableToWs(stream, t.ws) : new PacedSocket(t.ws, stream);
    const event = (e: TunnelEvent): void => {
      if (!t.ended) paced.send(JSON.stringify(e));
    };
    stream.on('message', (m) => opts.onMessage?.(m, event));
    if (!opts.pipeData) stream.resume();
    stream.on('end', () => {
      if (settled) return;
      const f = opts.final();
      if (f.event?.type === 'error') t.fail(MeshlinkError.fromWire(f.event.code, f.event.message));
      else {
        if (f.event) t.event(f.event);
        t.finish();
      }
      // Our side may still be open (e.g. exec whose stdin the operator never closed): close it too.
      if (!stream.writableEnded) stream.end();
      settle(f.result);
    });
    stream.on('error', (err) => {
      if (settled) return;
      t.fail(err);
      settle(`error:${describeError(err).code}`);
    });
  });
}

function targetOf(r: ParsedOpsRequest): string | null {
  switch (r.op) {
    case 'action':
      return r.action;
    case 'exec':
      return r.command;
    case 'push':
    case 'pull':
      return r.path;
    case 'tunnel':
      return r.host.includes(':') ? `[${r.host}]:${r.port}` : `${r.host}:${r.port}`;
    default:
      return null;
  }
}

/** What the audit log keeps: never stdin, file bytes or environment; argument values are kept (operators chose them). */
function detailsOf(r: ParsedOpsRequest): Record<string, unknown> | null {
  switch (r.op) {
    case 'action':
      return { args: r.args, ...(r.timeoutMs ? { timeoutMs: r.timeoutMs } : {}) };
    case 'exec':
      return { args: r.args.slice(0, 32) };
    case 'logs':
      return { lines: r.lines, follow: r.follow };
    case 'push':
      return { size: r.size, sha256: r.sha256 };
    case 'pull':
      return { offset: r.offset };
    case 'tunnel':
      return { host: r.host, port: r.port };
  }
}
