import { createHash, randomBytes } from 'node:crypto';
import { MeshlinkError } from '../../errors.js';

/**
 * The console's logins: one-time links (`console.login` on the admin socket makes one) and the sessions
 * they open. Only SHA-256 hashes of link tokens and session ids are kept, so a heap dump or a log line
 * of this state opens nothing; both live in memory only, so every session ends with the server process.
 * Both tables are bounded: a pending link beyond the bound is refused (ML_ERR_CONSOLE_BUSY), a session
 * beyond it pushes out the oldest one.
 */

export const LINK_TTL_MS = 60_000;
export const SESSION_TTL_MS = 12 * 3_600_000;
export const MAX_PENDING_LINKS = 16;
export const MAX_SESSIONS = 64;

export interface ConsoleSession {
  /** Who opened it: `console:<the operator who asked for the link>`, what the audit log records. */
  readonly actor: string;
  readonly expiresAt: number;
}

export interface ConsoleAuthOptions {
  /** Milliseconds since the epoch (tests inject one). */
  now?: () => number;
  linkTtlMs?: number;
  sessionTtlMs?: number;
  maxPendingLinks?: number;
  maxSessions?: number;
}

const hash = (secret: string): string => createHash('sha256').update(secret).digest('hex');
const secret = (): string => randomBytes(32).toString('base64url');

export class ConsoleAuth {
  readonly #now: () => number;
  readonly #linkTtlMs: number;
  readonly #sessionTtlMs: number;
  readonly #maxLinks: number;
  readonly #maxSessions: number;
  /** hash(link token) → who asked and until when. */
  readonly #links = new Map<string, { actor: string; expiresAt: number }>();
  /** hash(session id) → session, in creation order (the oldest is pushed out first). */
  readonly #sessions = new Map<string, ConsoleSession>();

  constructor(options: ConsoleAuthOptions = {}) {
    this.#now = options.now ?? Date.now;
    this.#linkTtlMs = options.linkTtlMs ?? LINK_TTL_MS;
    this.#sessionTtlMs = options.sessionTtlMs ?? SESSION_TTL_MS;
    this.#maxLinks = options.maxPendingLinks ?? MAX_PENDING_LINKS;
    this.#maxSessions = options.maxSessions ?? MAX_SESSIONS;
  }

  get sessionTtlMs(): number {
    return this.#sessionTtlMs;
  }

  /** A new one-time link token for `operator` (the admin socket's actor). */
  createLink(operator: string): { token: string; expiresAt: number } {
    this.#sweep();
    if (this.#links.size >= this.#maxLinks) throw new MeshlinkError('ML_ERR_CONSOLE_BUSY', `${this.#maxLinks} console login links are pending; wait a minute`);
    const token = secret();
    const expiresAt = this.#now() + this.#linkTtlMs;
    this.#links.set(hash(token), { actor: `console:${operator}`, expiresAt });
    return { token, expiresAt };
  }

  /** Consumes a link token (once: a second use is refused like an unknown one) and opens a session. */
  redeem(token: string): { sessionId: string; session: ConsoleSession } {
    const key = hash(token);
    const link = this.#links.get(key);
    this.#links.delete(key);
    if (!link || link.expiresAt <= this.#now()) throw new MeshlinkError('ML_ERR_CONSOLE_UNAUTHORIZED', 'this login link is unknown, used or expired: run `meshlink server console login` again');
    this.#sweep();
    while (this.#sessions.size >= this.#maxSessions) {
      const oldest = this.#sessions.keys().next().value;
      if (oldest === undefined) break;
      this.#sessions.delete(oldest);
    }
    const sessionId = secret();
    const session: ConsoleSession = { actor: link.actor, expiresAt: this.#now() + this.#sessionTtlMs };
    this.#sessions.set(hash(sessionId), session);
    return { sessionId, session };
  }

  /** The live session of this id, or undefined. */
  session(sessionId: string | undefined): ConsoleSession | undefined {
    if (!sessionId) return undefined;
    const key = hash(sessionId);
    const s = this.#sessions.get(key);
    if (s && s.expiresAt <= this.#now()) {
      this.#sessions.delete(key);
      return undefined;
    }
    return s;
  }

  end(sessionId: string | undefined): void {
    if (sessionId) this.#sessions.delete(hash(sessionId));
  }

  get counts(): { links: number; sessions: number } {
    this.#sweep();
    return { links: this.#links.size, sessions: this.#sessions.size };
  }

  #sweep(): void {
    const now = this.#now();
    for (const [k, l] of this.#links) if (l.expiresAt <= now) this.#links.delete(k);
    for (const [k, s] of this.#sessions) if (s.expiresAt <= now) this.#sessions.delete(k);
  }
}
