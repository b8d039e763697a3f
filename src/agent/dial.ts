import type { IncomingMessage } from 'node:http';
import { isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { WebSocket, type ClientOptions } from 'ws';
import { zeroMaskingKey } from '../net/ws-mask.js';
import { attachSession } from '../net/ws-session.js';
import { MeshlinkError } from '../errors.js';
import type { InputOf, PayloadOf } from '../protocol/registry.js';
import type { CloseInfo, Session } from '../protocol/session.js';
import type { Identity } from './identity.js';
import { DIRECT, proxyFor, type ProxyConfig } from './proxy.js';
import { openTunnel } from './proxy-dial.js';

/**
 * The dial of `agent run`: one mTLS WebSocket to `<server>/v1/connect` with the identity's key and
 * certificate, trusting only its CA, then the protocol handshake. Through an HTTP proxy when
 * proxy.ts says so: a CONNECT tunnel first (proxy-dial.ts), then the same TLS over the tunnelled
 * socket, so the CA pin and the client certificate are checked end to end. An HTTP refusal of the upgrade becomes a ConnectRefusedError carrying the
 * server's JSON error code, which the runner reads (revoked, expired).
 */

/** A refusal of the WebSocket upgrade, with the server's JSON error code when it sent one. */
export class ConnectRefusedError extends MeshlinkError {
  constructor(
    override readonly status: number,
    readonly serverCode: string | null,
    message: string,
  ) {
    super('ML_ERR_CONNECT_REFUSED', message);
  }
}

export interface Dialled {
  ws: WebSocket;
  session: Session;
  welcome: PayloadOf<'welcome'>;
  /** Resolves when the session has closed. */
  closed: Promise<CloseInfo>;
}

export interface DialOptions {
  /** WebSocket upgrade and protocol handshake, each. */
  timeoutMs: number;
  /** The hello fields beyond versions (agentVersion, hostname, and what features contribute). */
  hello: Omit<InputOf<'hello'>, 'versions'>;
  /**
   * Called with the session before the handshake starts: handlers must be attached by then, since
   * the server may send right after welcome, in the same read, before any continuation of ours runs.
   */
  prepare(session: Session): void;
  /** How to reach the server (default: directly). */
  proxy?: ProxyConfig;
}

export async function dial(identity: Identity, options: DialOptions): Promise<Dialled> {
  const url = new URL('/v1/connect', identity.server);
  url.protocol = url.protocol === 'http:' ? 'ws:' : 'wss:';
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const endpoint = proxyFor(url, options.proxy ?? DIRECT);
  const tunnel = endpoint === null ? null : await openTunnel(endpoint, host, Number(url.port || 443), options.timeoutMs);
  const ws = new WebSocket(url, {
    ca: identity.caPem,
    cert: identity.certPem,
    key: identity.keyPem,
    ...(isIP(host) ? {} : { servername: host }),
    perMessageDeflate: false,
    maxPayload: 16 * 1024 * 1024,
    handshakeTimeout: options.timeoutMs,
    ...(url.protocol === 'wss:' ? { generateMask: zeroMaskingKey } : {}),
    ...(tunnel === null ? {} : { createConnection: ((opts: ConnectionOptions) => overTunnel(tunnel, opts)) as unknown as ClientOptions['createConnection'] }),
  });
  return new Promise<Dialled>((resolve, reject) => {
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      ws.terminate();
      reject(err);
    };
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      readJsonError(res).then(
        (body) => fail(new ConnectRefusedError(res.statusCode ?? 0, body?.code ?? null, `server refused the connection: ${res.statusCode} ${body?.code ?? ''} ${body?.message ?? ''}`.trim())),
        () => fail(new ConnectRefusedError(res.statusCode ?? 0, null, `server refused the connection: ${res.statusCode}`)),
      );
    });
    ws.once('error', (err) => fail(err));
    ws.once('open', () => {
      const session = attachSession(ws, { role: 'agent', handshakeTimeoutMs: options.timeoutMs });
      const closed = new Promise<CloseInfo>((r) => session.once('close', r));
      options.prepare(session);
      session
        .handshake(options.hello)
        .then((welcome) => {
          if (settled) return;
          settled = true;
          resolve({ ws, session, welcome, closed });
        })
        .catch((err: Error) => fail(err));
    });
  });
}

/**
 * What ws's own tlsConnect does (same options: CA, client certificate, server name), on the
 * tunnelled socket instead of a new TCP connection.
 */
function overTunnel(tunnel: Socket, opts: ConnectionOptions): Socket {
  // ws called this with its request options (host, port, path...): the socket replaces host and port.
  return tlsConnect({ ...opts, socket: tunnel });
}

async function readJsonError(res: IncomingMessage): Promise<{ code?: string; message?: string } | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of res) {
    size += (c as Buffer).length;
    if (size > 16 * 1024) break;
    chunks.push(c as Buffer);
  }
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { code?: unknown; message?: unknown };
    return { ...(typeof body.code === 'string' ? { code: body.code } : {}), ...(typeof body.message === 'string' ? { message: body.message.slice(0, 500) } : {}) };
  } catch {
    return null;
  }
}
