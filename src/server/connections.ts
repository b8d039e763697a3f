import type { WebSocket } from 'ws';
import type { Logger } from '../util/logger.js';
import { ERRORS, type ErrorCode } from '../errors.js';
import { encodeMessage } from '../protocol/codec.js';

/**
 * Live agent sockets per node, so revocation can close them and each socket is closed when its
 * certificate's NotAfter passes (one timer per connection, cleared on close).
 */

export const CLOSE_REVOKED = ERRORS.ML_ERR_CERT_REVOKED.closeCode; // 4401
export const CLOSE_EXPIRED = ERRORS.ML_ERR_CERT_EXPIRED.closeCode; // 4402
/** A peer that ignores the close handshake is cut off after this long. */
const CLOSE_FORCE_MS = 1_000;
/**
 * How long a revocation's close waits for what the revocation observers send first (the mesh's signed
 * `session_revoked`, which on PostgreSQL needs a round trip to the store): revocation must bite within
 * seconds, so a slow store delays the close by this at most, and the node then learns from the close
 * code alone.
 */
const REVOCATION_NOTICE_MAX_MS = 500;
/** setTimeout's delay is a signed 32-bit integer; longer waits are re-armed in steps. */
const MAX_TIMER_MS = 2_147_483_647;

/** Called before a node's sockets close with 4401; a returned promise delays the close (see onRevoking). */
export type RevocationObserver = (nodeId: string, reason: string) => void | Promise<unknown>;

interface Entry {
  ws: WebSocket;
  nodeId: string;
  certSerial: string;
  certNotAfter: number;
  connectedAt: number;
  timer: NodeJS.Timeout | undefined;
}

export class ConnectionRegistry {
  private readonly byNode = new Map<string, Set<Entry>>();

  readonly #refusalObservers = new Set<(reason: string) => void>();
  /** Set by shutdown(): the registry takes no more sockets. */
  #closedWith: { code: number; reason: string } | null = null;
  readonly #revocationObservers = new Set<RevocationObserver>();

  constructor(private readonly logger: Logger) {}

  /** Observes agent connections the gateway refused (metrics), with the refusal reason. Returns the unsubscribe. */
  onRefused(observer: (reason: string) => void): () => void {
    this.#refusalObservers.add(observer);
    return () => this.#refusalObservers.delete(observer);
  }

  /**
   * Observes revocations: called for each node whose open sockets are about to be closed with 4401,
   * before the close (the mesh feature sends the node a signed `session_revoked` event). The sockets
   * close one turn of the event loop later, once every promise the observers returned has settled,
   * or after REVOCATION_NOTICE_MAX_MS, whichever comes first. Returns the unsubscribe.
   */
  onRevoking(observer: RevocationObserver): () => void {
    this.#revocationObservers.add(observer);
    return () => this.#revocationObservers.delete(observer);
  }

  /** Reports a refused agent connection (gateway: before any upgrade) to the observers. */
  noteRefused(reason: string): void {
    for (const observe of this.#refusalObservers) observe(reason);
  }

  /** Registers an upgraded socket; false (and the socket closed) once shutdown() has run. */
  add(ws: WebSocket, info: { nodeId: string; certSerial: string; certNotAfter: number }): boolean {
    if (this.#closedWith) {
      // shutdown() ran (the server is stopping): a session upgraded after it is closed the same way.
      ws.close(this.#closedWith.code, this.#closedWith.reason);
      forceAfter(ws);
      return false;
    }
    const entry: Entry = { ws, ...info, connectedAt: Date.now(), timer: undefined };
    let set = this.byNode.get(info.nodeId);
    if (!set) this.byNode.set(info.nodeId, (set = new Set()));
    set.add(entry);
    this.armExpiry(entry);
    ws.once('close', () => {
      clearTimeout(entry.timer);
      const s = this.byNode.get(info.nodeId);
      if (s) {
        s.delete(entry);
        if (s.size === 0) this.byNode.delete(info.nodeId);
      }
    });
    return true;
  }

  private armExpiry(entry: Entry): void {
    const wait = entry.certNotAfter - Date.now();
    if (wait <= 0) {
      this.logger.info({ nodeId: entry.nodeId, certSerial: entry.certSerial }, 'certificate reached NotAfter; closing connection');
      closeSocket(entry.ws, 'ML_ERR_CERT_EXPIRED', 'the certificate reached its NotAfter');
      return;
    }
    entry.timer = setTimeout(() => this.armExpiry(entry), Math.min(wait + 1, MAX_TIMER_MS));
    entry.timer.unref();
  }

  /** True while the node has an upgraded socket (online is Presence's: an open session). */
  hasConnection(nodeId: string): boolean {
    return this.byNode.has(nodeId);
  }

  get size(): number {
    let n = 0;
    for (const s of this.byNode.values()) n += s.size;
    return n;
  }

  /** Closes every socket of the node with 4401; returns how many were open. */
  closeRevokedNode(nodeId: string): number {
    return this.closeRevoked((e) => e.nodeId === nodeId, 'node removed');
  }

  /** Closes sockets presenting one of these serials with 4401. */
  closeRevokedSerials(serials: readonly string[]): number {
    const set = new Set(serials);
    return this.closeRevoked((e) => set.has(e.certSerial), 'certificate revoked');
  }

  private closeRevoked(pred: (e: Entry) => boolean, reason: string): number {
    const nodes = new Set<string>();
    let n = 0;
    for (const set of this.byNode.values()) {
      for (const e of set) {
        if (!pred(e)) continue;
        nodes.add(e.nodeId);
        n++;
      }
    }
    if (n === 0) return 0;
    const notices: Promise<unknown>[] = [];
    for (const nodeId of nodes) {
      for (const observe of this.#revocationObservers) {
        try {
          const sent = observe(nodeId, reason);
          if (sent) notices.push(sent.catch((err: unknown) => this.logger.error({ err, nodeId }, 'revocation observer failed')));
        } catch (err) {
          this.logger.error({ err, nodeId }, 'revocation observer failed');
        }
      }
    }
    const close = (): void => void this.closeWhere(pred, 'ML_ERR_CERT_REVOKED', reason);
    if (notices.length === 0) {
      setImmediate(close);
      return n;
    }
    let deadline: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      deadline = setTimeout(resolve, REVOCATION_NOTICE_MAX_MS);
      deadline.unref();
    });
    void Promise.race([Promise.all(notices), late]).then(() => {
      clearTimeout(deadline);
      setImmediate(close);
    });
    return n;
  }

  /** The server's shutdown: closes every socket and takes no more (add() closes them the same way). */
  shutdown(code: number, reason: string): number {
    this.#closedWith = { code, reason };
    return this.closeAll(code, reason);
  }

  /** Closes every socket open now (agents reconnect; see shutdown() for the last close). */
  closeAll(code: number, reason: string): number {
    let n = 0;
    for (const set of this.byNode.values()) {
      for (const e of set) {
        n++;
        e.ws.close(code, reason);
        forceAfter(e.ws);
      }
    }
    return n;
  }

  private closeWhere(pred: (e: Entry) => boolean, code: 'ML_ERR_CERT_REVOKED' | 'ML_ERR_CERT_EXPIRED', reason: string): number {
    let n = 0;
    for (const set of this.byNode.values()) {
      for (const e of set) {
        if (!pred(e)) continue;
        n++;
        closeSocket(e.ws, code, reason);
      }
    }
    return n;
  }
}

/**
 * Ends a session because of its certificate, as PROTOCOL.md §9 requires of every error close: an
 * `error` frame on stream 0 with the code and a message first (its own WebSocket message, after
 * whatever the session already handed to the socket), then the close with the code's close code
 * (4401, 4402) and the code itself as the reason.
 */
function closeSocket(ws: WebSocket, code: ErrorCode & ('ML_ERR_CERT_REVOKED' | 'ML_ERR_CERT_EXPIRED'), message: string): void {
  if (ws.readyState === ws.OPEN) ws.send(encodeMessage('error', 0, { code, message }), { binary: true });
  ws.close(ERRORS[code].closeCode, code);
  forceAfter(ws);
}

function forceAfter(ws: WebSocket): void {
  const force = setTimeout(() => ws.terminate(), CLOSE_FORCE_MS);
  force.unref();
  ws.once('close', () => clearTimeout(force));
}
