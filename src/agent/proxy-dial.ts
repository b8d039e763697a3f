import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { Agent, ProxyAgent, type Dispatcher } from 'undici';
import { MeshlinkError } from '../errors.js';
import { hostPort, proxyAuthorization, proxyFor, type ProxyConfig, type ProxyEndpoint } from './proxy.js';

/**
 * Carries out proxy.ts's decision for the agent's two HTTP clients:
 * - undici (enrollment, renewal over HTTPS, upgrade downloads): `serverDispatcher` gives an Agent,
 *   or a ProxyAgent whose `requestTls` holds the origin's TLS options, so the CA pin and the
 *   client certificate apply to the server at the end of the tunnel, not to the proxy;
 * - ws (the connection, dial.ts): `openTunnel` opens a CONNECT tunnel with node:http, over which
 *   dial.ts runs TLS, so mTLS works exactly as without a proxy.
 * Failures become the proxy error codes (unreachable, refused, auth), naming the proxy by
 * host:port only: credentials never reach a message or a log.
 */

/** TLS options for the server (the origin): its trust root, our client certificate if any. */
export interface OriginTls {
  ca?: string;
  cert?: string;
  key?: string;
  rejectUnauthorized: boolean;
}

export interface DispatcherTimeouts {
  connectMs: number;
  headersMs: number;
  bodyMs: number;
}

/** The undici dispatcher for requests to `server`: direct, or tunnelled through the configured proxy. */
export function serverDispatcher(server: string, proxy: ProxyConfig, tls: OriginTls, timeouts: DispatcherTimeouts): Dispatcher {
  const endpoint = proxyFor(server, proxy);
  const common = { headersTimeout: timeouts.headersMs, bodyTimeout: timeouts.bodyMs };
  if (endpoint === null) return new Agent({ connect: { ...tls, timeout: timeouts.connectMs }, ...common });
  const auth = proxyAuthorization(endpoint);
  return new ProxyAgent({
    uri: `http://${endpoint.display}`,
    ...(auth === null ? {} : { token: auth }),
    // The origin's TLS: `connect` alone would only apply to the connection to the proxy.
    requestTls: { ...tls, timeout: timeouts.connectMs },
    connect: { timeout: timeouts.connectMs },
    ...common,
  });
}

/**
 * Failures to open a TCP connection: with a proxy in the way, undici only ever connects to the proxy
 * (a server it cannot reach is the proxy's CONNECT answer). Resets are not here: inside a tunnel
 * they may be the server's.
 */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT']);

/**
 * An undici failure of a request sent through `endpoint`, as a proxy error, or null when it is
 * not the proxy's (TLS trouble with the server, say, which the caller words as usual).
 * undici reports a refused CONNECT as "Proxy response (NNN) !== 200 when HTTP Tunneling".
 */
export function proxyErrorOf(err: unknown, endpoint: ProxyEndpoint, target: string): MeshlinkError | null {
  for (let e: unknown = err, depth = 0; e !== null && typeof e === 'object' && depth < 5; depth++) {
    const message = String((e as { message?: unknown }).message ?? '');
    const refused = /Proxy response \((\d{3})\) !== 200/.exec(message);
    if (refused) return refusedError(endpoint, target, Number(refused[1]), '');
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return unreachableError(endpoint, code, e);
    e = (e as { cause?: unknown }).cause;
  }
  return null;
}

function unreachableError(endpoint: ProxyEndpoint, code: string, cause: unknown): MeshlinkError {
  return new MeshlinkError('ML_ERR_PROXY_UNREACHABLE', `cannot reach the proxy ${endpoint.display} (from ${endpoint.source}): ${code}`, { cause });
}

function refusedError(endpoint: ProxyEndpoint, target: string, status: number, reason: string): MeshlinkError {
  const line = `${status}${reason === '' ? '' : ` ${reason}`}`;
  // 407 is the standard answer; some proxies (tinyproxy) answer wrong credentials with 401.
  if (status === 407 || status === 401) {
    const why = endpoint.auth === null ? 'the proxy URL carries no credentials' : 'the proxy rejected the credentials in the proxy URL';
    return new MeshlinkError('ML_ERR_PROXY_AUTH', `the proxy ${endpoint.display} requires authentication (${line}): ${why}`);
  }
  return new MeshlinkError('ML_ERR_PROXY_REFUSED', `the proxy ${endpoint.display} refused CONNECT ${target}: ${line}`);
}

/** Reason phrases are the proxy's text: printable ASCII only, bounded. */
function cleanReason(text: string | undefined): string {
  return (text ?? '').replace(/[^\x20-\x7e]+/g, ' ').trim().slice(0, 200);
}

/**
 * Opens a CONNECT tunnel to host:port through `endpoint` and resolves with the raw socket, ready
 * for TLS to the server. The whole exchange is bounded by `timeoutMs`.
 */
export function openTunnel(endpoint: ProxyEndpoint, host: string, port: number, timeoutMs: number): Promise<Socket> {
  const target = hostPort(host, port);
  const auth = proxyAuthorization(endpoint);
  return new Promise<Socket>((resolve, reject) => {
    let settled = false;
    const req = httpRequest({
      host: endpoint.host,
      port: endpoint.port,
      method: 'CONNECT',
      path: target,
      headers: { host: target, ...(auth === null ? {} : { 'proxy-authorization': auth }) },
      // One tunnel, one socket: never pooled.
      agent: false,
    });
    const timer = setTimeout(() => {
      fail(new MeshlinkError('ML_ERR_PROXY_UNREACHABLE', `the proxy ${endpoint.display} (from ${endpoint.source}) did not open a tunnel to ${target} within ${timeoutMs} ms`));
    }, timeoutMs);
    const fail = (err: MeshlinkError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      reject(err);
    };
    req.once('connect', (res: IncomingMessage, socket: Socket, head: Buffer) => {
      if (settled) {
        socket.destroy();
        return;
      }
      if (res.statusCode !== 200) {
        socket.destroy();
        fail(refusedError(endpoint, target, res.statusCode ?? 0, cleanReason(res.statusMessage)));
        return;
      }
      settled = true;
      clearTimeout(timer);
      // Bytes the proxy sent after its answer belong to the tunnel (the server speaks first in TLS only
      // after our ClientHello, so this is empty in practice; kept for correctness).
      if (head.length > 0) socket.unshift(head);
      resolve(socket);
    });
    req.once('error', (err: Error & { code?: string }) => fail(unreachableError(endpoint, err.code ?? 'error', err)));
    // An answer without a CONNECT upgrade (a proxy that does not speak CONNECT, answering with a body).
    req.once('response', (res: IncomingMessage) => {
      res.resume();
      fail(refusedError(endpoint, target, res.statusCode ?? 0, cleanReason(res.statusMessage)));
    });
    req.end();
  });
}
