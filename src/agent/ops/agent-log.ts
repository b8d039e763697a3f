import { EventEmitter } from 'node:events';
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, renameSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
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

  close(): void {
    try {
      closeSync(this.#fd);
    } catch {
      /* already closed */
    }
  }
}

/** The last `lines` lines of the first `end` bytes of `path` (at most `capBytes` read). */
export async function readLastLines(path: string, lines: number, end: number, capBytes = 16 * 1024 * 1024): Promise<Buffer> {
  if (lines <= 0 || end <= 0) return Buffer.alloc(0);
  const handle = await open(path, 'r');
  try {
    const block = 64 * 1024;
    const parts: Buffer[] = [];
    let pos = end;
    let newlines = 0;
    let read = 0;
    // The file ends with a newline: look for lines+1 of them to find where the wanted lines start.
    while (pos > 0 && newlines <= lines && read < capBytes) {
      const len = Math.min(block, pos);
      pos -= len;
      const buf = Buffer.allocUnsafe(len);
      const { bytesRead } = await handle.read(buf, 0, len, pos);
      const chunk = buf.subarray(0, bytesRead);
      parts.unshift(chunk);
      read += bytesRead;
      for (let i = 0; i < chunk.length; i++) if (chunk[i] === 0x0a) newlines++;
    }
    const all = Buffer.concat(parts);
    let count = 0;
    let start = 0;
    for (let i = all.length - 2; i >= 0; i--) {
      if (all[i] === 0x0a && ++count === lines) {
        start = i + 1;
        break;
      }
    }
    return all.subarray(start);
  } finally {
    await handle.close();
  }
}

const files = new WeakMap<Logger, AgentLogFile>();

/** The log file behind a logger made by createAgentLogger, if any. */
export function agentLogFileOf(logger: Logger): AgentLogFile | undefined {
  return files.get(logger);
}

/**
 * The logger of `agent run`: JSON lines on stdout and in `<stateDir>/logs/agent.log`. If the file
 * cannot be created (read-only state dir), logs go to stdout only and `logs` is refused (ML_ERR_OPS_NO_LOG).
 */
export function createAgentLogger(stateDir: string, level?: string, options: { name?: string; stdout?: boolean } = {}): Logger {
  const name = options.name ?? 'meshlink-agent';
  const lvl = resolveLogLevel(level);
  let file: AgentLogFile;
  try {
    // Never create the state dir itself (that is enrollment's job, with its own checks).
    if (!existsSync(stateDir)) throw new Error('no state dir');
    const dir = join(stateDir, 'logs');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    file = new AgentLogFile(join(dir, 'agent.log'));
  } catch {
    return createLogger({ name, level: lvl });
  }
  const logger = createLogger({ name, level: lvl, sink: file, ...(options.stdout === false ? { stdout: false } : {}) });
  files.set(logger, file);
  return logger;
}
