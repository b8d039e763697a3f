import type { Session } from '../../protocol/session.js';
import type { MuxStream } from '../../protocol/stream.js';
import type { AuditReporter } from './audit.js';
import { errorMessage } from './errors.js';
import type { OpsOptions } from './options.js';
import { spawnGroup } from './process-group.js';

/**
 * exec.open streams: runs a command (no shell, own process group) with stdin from the stream's
 * bytes, stdout as stream bytes and stderr as exec.stderr messages; ends with exec.exit. Refused
 * unless the agent was started with --allow-exec. A reset stream (operator gone) kills the group.
 * There is no PTY: exec.resize is accepted and ignored.
 */

const STDERR_MESSAGE_BYTES = 16 * 1024;
/** Queued (unsent) bytes on the stream above which stderr is paused. */
const STDERR_QUEUE_LIMIT = 512 * 1024;

export class ExecService {
  #running = 0;
  constructor(
    private readonly opts: OpsOptions,
    private readonly audit: AuditReporter,
  ) {}

  get running(): number {
    return this.#running;
  }

  handle(stream: MuxStream, session: Session): void {
    if (!this.opts.allowExec) {
      session.reject(stream, 'ML_ERR_OPS_EXEC_DISABLED', 'exec is disabled on this agent; start it with --allow-exec to allow it');
      return;
    }
    const req = stream.metaOf('exec.open');
    const env: NodeJS.ProcessEnv = { ...process.env, ...(req.env ?? {}) };
    spawnGroup(req.command, req.args, { env, ...(req.cwd ? { cwd: req.cwd } : {}) }).then(
      (child) => {
        if (stream.state !== 'opening') {
          child.kill(0);
          return;
        }
        session.accept(stream);
        this.#running++;
        const started = Date.now();
        const alive = (): boolean => !stream.destroyed && !stream.writableEnded;
        const stdin = child.child.stdin!;
        stdin.on('error', () => {}); // the command may exit without reading its input
        stream.pipe(stdin);
        stream.on('message', () => {}); // exec.resize: no PTY here
        const onClose = (): void => child.kill(0);
        stream.once('close', onClose);

        const stdout = child.child.stdout!;
        stdout.on('data', (chunk: Buffer) => {
          if (!alive()) return;
          if (!stream.write(chunk)) {
            stdout.pause();
            stream.once('drain', () => stdout.resume());
          }
        });
        const stderr = child.child.stderr!;
        let stderrWait: NodeJS.Timeout | null = null;
        stderr.on('data', (chunk: Buffer) => {
          for (let i = 0; i < chunk.length && alive(); i += STDERR_MESSAGE_BYTES) {
            stream.sendMessage('exec.stderr', new Uint8Array(chunk.subarray(i, i + STDERR_MESSAGE_BYTES)));
          }
          // Messages bypass the window but queue behind data: do not let stderr pile up unsent.
          if (stream.queuedBytes > STDERR_QUEUE_LIMIT && !stderrWait) {
            stderr.pause();
            const check = (): void => {
              if (!alive() || stream.queuedBytes <= STDERR_QUEUE_LIMIT / 2) {
                stderrWait = null;
                stderr.resume();
              } else stderrWait = setTimeout(check, 10);
            };
            stderrWait = setTimeout(check, 10);
          }
        });
        void child.closed.then(({ exitCode, signal }) => {
          this.#running--;
          if (stderrWait) clearTimeout(stderrWait);
          stream.off('close', onClose);
          stream.unpipe(stdin);
          this.audit.record({ action: 'exec', target: req.command, result: `exit:${exitCode ?? signal}`, details: { durationMs: Date.now() - started } });
          if (!alive()) return;
          stream.sendMessage('exec.exit', { exitCode, signal });
          stream.end();
          stream.resume(); // discard stdin the command never read, so the stream can finish
        });
      },
      (err: unknown) => {
        this.audit.record({ action: 'exec', target: req.command, result: 'ML_ERR_OPS_SPAWN' });
        session.reject(stream, 'ML_ERR_OPS_SPAWN', `cannot start ${req.command}: ${errorMessage(err)}`);
      },
    );
  }
}
