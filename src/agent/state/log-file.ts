import { EventEmitter } from 'node:events';
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { createLogger, resolveLogLevel, type Logger } from '../../util/logger.js';

/**
 * The agent's own log, kept in a bounded file so `meshlink server logs NODE` can tail it:
 * `<stateDir>/logs/agent.log`, rotated to `agent.log.1` past 5 MiB (at most ~10 MiB on disk).
 * Lines are also on stdout (journald) as before. Followers subscribe to the lines as they are written
 * (an in-process event), so following needs no file watcher and no timer.
 */

export const AGENT_LOG_MAX_BYTES = 5 * 1024 * 1024;

export class AgentLogFile extends EventEmitter<{ line: [line: string] }> {
  readonly path: string;
  #fd: number;
  #size: number;
  readonly #maxBytes: number;

  constructor(path: string, maxBytes = AGENT_LOG_MAX_BYTES) {
    super();
    this.setMaxListeners(0); // one per follower; followers are bounded by the session's stream cap
    this.path = path;
    this.#maxBytes = maxBytes;
    this.#fd = openSync(path, 'a', 0o600);
    this.#size = fstatSync(this.#fd).size;
  }

  /** Bytes in the current file (everything written so far is on disk: writes are synchronous). */
  get size(): number {
    return this.#size;
  }

  /** The logger's sink (util/logger.ts LogLineSink): one or more complete JSON lines. */
  write(chunk: string): boolean {
    const bytes = Buffer.byteLength(chunk);
    if (this.#size + bytes > this.#maxBytes && this.#size > 0) this.#rotate();
    try {
      writeSync(this.#fd, chunk);
      this.#size += bytes;
    } catch {
      // A full disk must not take the agent down; stdout still has the line.
    }
    if (this.listenerCount('line') > 0) this.emit('line', chunk);
    return true;
  }

  #rotate(): void {
    try {
      closeSync(this.#fd);
      renameSync(this.path, `${this.path}.1`);
    } catch {
      /* keep going with a fresh file */
    }
    this.#fd = openSync(this.path, 'a', 0o600);
    this.#size = fstatSync(this.#fd).size;
  }

  /**
   * Reopens the file by its path (SIGHUP): after an external logrotate moved it away, lines go to a
   * new file at the path instead of the moved one.
   */
  reopen(): void {
    const fd = openSync(this.path, 'a', 0o600);
    try {
      closeSync(this.#fd);
    } catch {
      /* already closed */
    }
    this.#fd = fd;
    this.#size = fstatSync(fd).size;
  }

  close(): void {
    try {
      closeSync(this.#fd);
    } catch {
      /* already closed */
    }
  }
}

/**
 * What a reader of the log gets (the ops feature's log tail, through its feature context): where the
 * file is, how far it is written, and its new lines. Writing and rotating stay with the logger.
 */
export type AgentLogReader = Pick<AgentLogFile, 'path' | 'size' | 'on' | 'off'>;

export interface AgentLog {
  readonly logger: Logger;
  /** Null when the file could not be created (read-only state dir): logs go to stdout only. */
  readonly file: AgentLogFile | null;
}

/**
 * The logger of `agent run`: JSON lines on stdout and in `<stateDir>/logs/agent.log`. If the file
 * cannot be created (no or read-only state dir), logs go to stdout only and `logs` is refused
 * (ML_ERR_OPS_NO_LOG).
 */
export function openAgentLog(stateDir: string, level?: string, options: { name?: string; stdout?: boolean } = {}): AgentLog {
  const name = options.name ?? 'meshlink-agent';
  // An invalid level is the caller's error, whether or not the file can be opened.
  const lvl = resolveLogLevel(level);
  let file: AgentLogFile;
  try {
    // Never create the state dir itself (that is enrollment's job, with its own checks).
    if (!existsSync(stateDir)) throw new Error('no state dir');
    const dir = join(stateDir, 'logs');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    file = new AgentLogFile(join(dir, 'agent.log'));
  } catch {
    return { logger: createLogger({ name, level: lvl }), file: null };
  }
  return { logger: createLogger({ name, level: lvl, sink: file, ...(options.stdout === false ? { stdout: false } : {}) }), file };
}
