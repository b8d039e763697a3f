import type { Session } from '../../protocol/session.js';
import type { MuxStream } from '../../protocol/stream.js';
import type { AgentLogReader } from '../state/log-file.js';
import { readLastLines } from './last-lines.js';
import { errorMessage } from './errors.js';
import { MeshlinkError } from '../../errors.js';

/**
 * log.stream: the last N lines of the agent's own log, then (follow) every new line as it is
 * written. Following is a listener on the log file (agent core's state/log-file.ts, handed over in
 * the feature context), removed the moment the stream closes or resets: no watcher, no timer. A
 * follower that cannot keep up buffers at most FOLLOW_BUFFER_BYTES and then drops lines, telling the
 * reader how many.
 */

const FOLLOW_BUFFER_BYTES = 1024 * 1024;

export class LogTailService {
  #followers = 0;
  constructor(private readonly file: AgentLogReader | null) {}

  get followers(): number {
    return this.#followers;
  }

  handle(stream: MuxStream, session: Session): void {
    const file = this.file;
    if (!file) {
      session.reject(stream, 'ML_ERR_OPS_NO_LOG', 'this agent keeps no log file (it was not started by `meshlink agent run`)');
      return;
    }
    const req = stream.metaOf('log.stream');
    session.accept(stream);
    // The tail covers exactly the bytes written before this point; later lines go to the follower.
    const end = file.size;
    let stop = (): void => {};
    if (req.follow) {
      let ready = false;
      let blocked = false;
      let pending: string[] = [];
      let pendingBytes = 0;
      let dropped = 0;
      const flush = (): void => {
        blocked = false;
        if (dropped > 0) {
          pending.push(`-- meshlink: ${dropped} log lines dropped (reader too slow) --\n`);
          dropped = 0;
        }
        const out = pending.join('');
        pending = [];
        pendingBytes = 0;
        if (out.length > 0 && !stream.write(out)) {
          blocked = true;
          stream.once('drain', flush);
        }
      };
      const onLine = (line: string): void => {
        if (pendingBytes + line.length > FOLLOW_BUFFER_BYTES) {
          dropped++;
          return;
        }
        pending.push(line);
        pendingBytes += line.length;
        if (ready && !blocked) flush();
      };
      file.on('line', onLine);
      this.#followers++;
      let stopped = false;
      stop = () => {
        if (stopped) return;
        stopped = true;
        this.#followers--;
        file.off('line', onLine);
        stream.off('drain', flush);
        pending = [];
      };
      stream.once('close', stop);
      stream.once('error', stop);
      // The server half-closes when the operator stops following: finish at once.
      stream.once('end', () => {
        stop();
        if (!stream.writableEnded) stream.end();
      });
      stream.resume();
      readLastLines(file.path, req.lines ?? 100, end).then(
        (tail) => {
          if (stream.destroyed) return;
          if (tail.length > 0 && !stream.write(tail)) {
            stream.once('drain', () => {
              ready = true;
              flush();
            });
            blocked = true;
            return;
          }
          ready = true;
          flush();
        },
        (err: unknown) => {
          stop();
          stream.destroy(new MeshlinkError('ML_ERR_OPS_IO', `reading the log failed: ${errorMessage(err)}`));
        },
      );
      return;
    }
    stream.resume();
    readLastLines(file.path, req.lines ?? 100, end).then(
      (tail) => {
        if (stream.destroyed) return;
        if (tail.length > 0) stream.write(tail);
        stream.end();
      },
      (err: unknown) => stream.destroy(new MeshlinkError('ML_ERR_OPS_IO', `reading the log failed: ${errorMessage(err)}`)),
    );
  }
}
