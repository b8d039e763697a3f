import type { PayloadOf } from '../../protocol/registry.js';
import type { Session } from '../../protocol/session.js';
import type { MuxStream } from '../../protocol/stream.js';
import type { Logger } from '../../util/logger.js';
import type { AuditReporter } from './audit.js';
import { runBuiltin, type BuiltinContext } from './builtins.js';
import { errorMessage } from './errors.js';
import { trustedHook } from './hook-trust.js';
import { MeshlinkError } from '../../errors.js';
import type { OpsOptions } from './options.js';
import { DEFAULT_ACTION_TIMEOUT_MS } from './options.js';
import { spawnGroup, type GroupChild } from './process-group.js';

/**
 * Remote actions (action.request streams): built-ins (builtins.ts) and hooks, i.e. executables in the
 * hooks dir named like the action. A hook runs in its own process group, without a shell, with the
 * arguments as environment variables MESHLINK_ARG_<NAME>. The agent acknowledges at once
 * (action.ack, `queued` when it must wait), streams stdout as stream data and stderr as
 * action.output messages, and ends with action.result. At most `maxActions` run at once; up to
 * `maxQueuedActions` more wait in order; beyond that the stream is refused with ML_ERR_OPS_BUSY.
 */

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** stderr goes in messages; keep each small (they bypass the stream window). */
const STDERR_MESSAGE_BYTES = 16 * 1024;

export class ActionService {
  readonly #opts: OpsOptions;
  readonly #log: Logger;
  readonly #audit: AuditReporter;
  readonly #builtin: BuiltinContext;
  #running = 0;
  readonly #queue: Array<() => void> = [];

  constructor(opts: OpsOptions, deps: { logger: Logger; audit: AuditReporter; builtin: BuiltinContext }) {
    this.#opts = opts;
    this.#log = deps.logger;
    this.#audit = deps.audit;
    this.#builtin = deps.builtin;
  }

  get running(): number {
    return this.#running;
  }

  get queued(): number {
    return this.#queue.length;
  }

  handle(stream: MuxStream, session: Session): void {
    this.#handle(stream, session).catch((err: unknown) => {
      this.#log.error({ err: errorMessage(err) }, 'action handler failed');
      if (stream.state === 'opening') session.reject(stream, 'ML_ERR_INTERNAL', 'internal error');
      else stream.destroy();
    });
  }

  async #handle(stream: MuxStream, session: Session): Promise<void> {
    const req = stream.metaOf('action.request');
    const args = req.args ?? {};
    if (!NAME_RE.test(req.action)) {
      session.reject(stream, 'ML_ERR_OPS_BAD_REQUEST', `invalid action name ${JSON.stringify(req.action)}`);
      return;
    }
    const badArg = Object.keys(args).find((k) => !/^[A-Za-z_][A-Za-z0-9_]{0,63}$/.test(k));
    if (badArg !== undefined) {
      session.reject(stream, 'ML_ERR_OPS_BAD_REQUEST', `invalid argument name ${JSON.stringify(badArg)}`);
      return;
    }
    const builtin = ['ping', 'diagnostics', 'reconcile'].includes(req.action);
    const hook = builtin ? null : await this.#findHook(req.action);
    if (!builtin && typeof hook !== 'string') {
      session.reject(stream, hook?.code ?? 'ML_ERR_OPS_UNKNOWN_ACTION', hook?.reason ?? `no action ${req.action}`);
      return;
    }
    if (stream.state !== 'opening') return; // the session went away while we looked
    const mustWait = this.#running >= this.#opts.maxActions;
    if (mustWait && this.#queue.length >= this.#opts.maxQueuedActions) {
      session.reject(stream, 'ML_ERR_OPS_BUSY', `${this.#running} actions running and ${this.#queue.length} queued (limits ${this.#opts.maxActions}/${this.#opts.maxQueuedActions}); try again later`);
      return;
    }
    session.accept(stream);
    stream.resume(); // the server sends no bytes; consume its END_STREAM
    stream.sendMessage('action.ack', { startedAt: Date.now(), queued: mustWait });
    if (mustWait) {
      const gone = await new Promise<boolean>((resolve) => {
        const slot = (): void => {
          stream.off('close', onClose);
          resolve(false);
        };
        const onClose = (): void => {
          const i = this.#queue.indexOf(slot);
          if (i >= 0) this.#queue.splice(i, 1);
          resolve(true);
        };
        this.#queue.push(slot);
        stream.once('close', onClose);
      });
      if (gone) return;
    } else this.#running++;
    try {
      await this.#run(stream, req.action, args, hook, req.timeoutMs ?? DEFAULT_ACTION_TIMEOUT_MS);
    } finally {
      const next = this.#queue.shift();
      if (next) next(); // the slot passes straight to the next in line
      else this.#running--;
    }
  }

  async #findHook(name: string): Promise<string | { code: 'ML_ERR_OPS_UNKNOWN_ACTION' | 'ML_ERR_OPS_HOOK_UNSAFE'; reason: string }> {
    try {
      return await trustedHook(this.#opts.hooksDir, name);
    } catch (err) {
      const code = err instanceof MeshlinkError && err.code === 'ML_ERR_OPS_HOOK_UNSAFE' ? err.code : 'ML_ERR_OPS_UNKNOWN_ACTION';
      if (code === 'ML_ERR_OPS_HOOK_UNSAFE') this.#log.warn({ action: name, reason: errorMessage(err) }, 'hook refused');
      return { code, reason: errorMessage(err) };
    }
  }

  async #run(stream: MuxStream, name: string, args: Record<string, string>, hook: string | null | { reason: string }, timeoutMs: number): Promise<void> {
    const started = Date.now();
    let forwarded = 0;
    let truncated = false;
    const cap = this.#opts.actionOutputCap;
    /** Returns the part of `chunk` still within the output cap. */
    const within = (chunk: Buffer): Buffer => {
      const room = cap - forwarded;
      if (chunk.length > room) truncated = true;
      const part = room <= 0 ? Buffer.alloc(0) : chunk.length > room ? chunk.subarray(0, room) : chunk;
      forwarded += part.length;
      return part;
    };
    const alive = (): boolean => !stream.destroyed && !stream.writableEnded;
    let result: PayloadOf<'action.result'>;

    if (typeof hook !== 'string') {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<null>((r) => (timer = setTimeout(() => r(null), timeoutMs)));
      const out = await Promise.race([runBuiltin(name, this.#builtin), timeout]).finally(() => clearTimeout(timer));
      if (out === null) {
        result = { exitCode: null, signal: null, durationMs: Date.now() - started, truncated: false, error: `ML_ERR_OPS_TIMEOUT: ${name} ran past ${timeoutMs} ms` };
      } else {
        const part = within(Buffer.from(out.output));
        if (alive() && part.length > 0) stream.write(part);
        result = { exitCode: out.exitCode, signal: null, durationMs: Date.now() - started, truncated };
      }
    } else {
      const env: Record<string, string> = { MESHLINK_ACTION: name };
      for (const k of ['PATH', 'HOME', 'LANG', 'TZ'] as const) if (process.env[k] !== undefined) env[k] = process.env[k]!;
      if (this.#builtin.runner.identity) env.MESHLINK_NODE_ID = this.#builtin.runner.identity.nodeId;
      for (const [k, v] of Object.entries(args)) env[`MESHLINK_ARG_${k.toUpperCase()}`] = v;
      let child: GroupChild;
      try {
        child = await spawnGroup(hook, [], { cwd: this.#opts.hooksDir, env });
      } catch (err) {
        result = { exitCode: null, signal: null, durationMs: Date.now() - started, truncated: false, error: `ML_ERR_OPS_SPAWN: ${errorMessage(err)}` };
        this.#finish(stream, name, args, result);
        return;
      }
      child.child.stdin?.end();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill(this.#opts.killGraceMs);
      }, timeoutMs);
      // The operator went away (stream reset): stop the work at once.
      const onClose = (): void => child.kill(0);
      stream.once('close', onClose);
      const stdout = child.child.stdout!;
      stdout.on('data', (chunk: Buffer) => {
        const part = within(chunk);
        if (part.length === 0 || !alive()) return;
        if (!stream.write(part)) {
          stdout.pause();
          stream.once('drain', () => stdout.resume());
        }
      });
      child.child.stderr!.on('data', (chunk: Buffer) => {
        const part = within(chunk);
        for (let i = 0; i < part.length && alive(); i += STDERR_MESSAGE_BYTES) {
          stream.sendMessage('action.output', { channel: 'stderr', data: new Uint8Array(part.subarray(i, i + STDERR_MESSAGE_BYTES)) });
        }
      });
      const { exitCode, signal } = await child.closed;
      clearTimeout(timer);
      stream.off('close', onClose);
      result = {
        exitCode,
        signal,
        durationMs: Date.now() - started,
        truncated,
        ...(timedOut ? { error: `ML_ERR_OPS_TIMEOUT: ${name} ran past ${timeoutMs} ms; its process group was killed` } : {}),
      };
    }
    this.#finish(stream, name, args, result);
  }

  #finish(stream: MuxStream, name: string, args: Record<string, string>, result: PayloadOf<'action.result'>): void {
    this.#audit.record({ action: 'action', target: name, result: result.error ? result.error.split(':')[0]! : `exit:${result.exitCode ?? result.signal}`, details: { durationMs: result.durationMs, args: Object.keys(args) } });
    if (stream.destroyed || stream.writableEnded) return;
    stream.sendMessage('action.result', result);
    stream.end();
  }
}
