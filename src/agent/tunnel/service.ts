import { connect, type Socket } from 'node:net';
import type { Session } from '../../protocol/session.js';
import type { MuxStream } from '../../protocol/stream.js';
import type { Logger } from '../../util/logger.js';
import { formatTarget, isAllowed, normalHost, type TunnelTarget } from './allowlist.js';
import { splice } from './splice.js';

/**
 * tunnel.open streams: the agent's end of `meshlink server tunnel`. A target outside the allowlist
 * is refused (ML_ERR_TUNNEL_NOT_ALLOWED) before anything is dialled; the stream is accepted only
 * once the TCP connection is up, so a failed connect is a clean refusal (ML_ERR_TUNNEL_CONNECT)
 * rather than a stream that opens and dies.
 */

/** How long a connect to the target may take before the open is refused. */
const CONNECT_TIMEOUT_MS = 10_000;

export class TunnelService {
  readonly #open = new Set<Socket>();

  constructor(
    private readonly allow: readonly TunnelTarget[],
    private readonly log: Logger,
  ) {}

  /** Tunnel connections open now (connecting or connected). */
  get active(): number {
    return this.#open.size;
  }

  handle(stream: MuxStream, session: Session): void {
    const { host: rawHost, port } = stream.metaOf('tunnel.open');
    const host = normalHost(rawHost);
    const target = formatTarget(host, port);
    if (!isAllowed(this.allow, host, port)) {
      this.log.warn({ target }, 'tunnel refused: target not allowed');
      session.reject(stream, 'ML_ERR_TUNNEL_NOT_ALLOWED', `${target} is not allowed on this agent; start it with --allow-tunnel ${target}`);
      return;
    }
    const socket = connect({ host, port, allowHalfOpen: true, noDelay: true, timeout: CONNECT_TIMEOUT_MS });
    this.#open.add(socket);
    socket.once('close', () => this.#open.delete(socket));
    // The server may give up (operator gone, session lost) while we connect.
    const abandoned = (): void => void socket.destroy();
    stream.once('close', abandoned);
    const refuse = (why: string): void => {
      stream.off('close', abandoned);
      socket.destroy();
      this.log.info({ target, why }, 'tunnel connect failed');
      session.reject(stream, 'ML_ERR_TUNNEL_CONNECT', `cannot connect to ${target}: ${why}`);
    };
    socket.once('timeout', () => refuse(`no connection within ${CONNECT_TIMEOUT_MS / 1000} s`));
    socket.once('error', (err: NodeJS.ErrnoException) => refuse(err.code ?? err.message));
    socket.once('connect', () => {
      socket.removeAllListeners('timeout');
      socket.removeAllListeners('error');
      socket.setTimeout(0);
      stream.off('close', abandoned);
      if (stream.state !== 'opening') {
        socket.destroy();
        return;
      }
      session.accept(stream);
      stream.on('message', () => {}); // the conversation has no typed messages: drop any
      const started = Date.now();
      void splice(stream, socket).then((r) => this.log.debug({ target, ...r, durationMs: Date.now() - started }, 'tunnel closed'));
    });
  }

  /** Cuts every tunnel connection (the feature's close). */
  close(): void {
    for (const s of this.#open) s.resetAndDestroy();
  }
}
