import { MeshlinkError } from '../errors.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import { createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import { WebSocketServer } from 'ws';
import type { Logger } from '../util/logger.js';
import { AdmissionQueue, keyOf } from './admission.js';
import { ClientAddresses, proxyPeerFilter } from './client-address.js';
import { ClientHelloGate } from './client-hello.js';
import { authenticateClient, type AuthenticatedPeer, type ClientAuthContext } from './client-auth.js';
import type { ConnectionRegistry } from './connections.js';
import type { EnrollmentService } from './enroll.js';
import type { GatewayHooks } from './hooks.js';
import { sendError, sendJson } from './http-json.js';
import type { PublicRoutes } from './public-routes.js';

/**
 * The one public listener: HTTPS for enrollment and the WebSocket upgrade for agents on the same
 * port. `requestCert: true, rejectUnauthorized: false` lets enrollment proceed without a client
 * certificate; /v1/connect and /v1/renew check the certificate themselves (client-auth.ts) and refuse
 * BEFORE any upgrade with a plain HTTP 401/403.
 */

export const MAX_WS_PAYLOAD = 16 * 1024 * 1024;

/**
 * The refusal reason (metrics: meshlink_handshakes_total and meshlink_gateway_client_hello_timeouts_total)
 * of a connection closed because it sent nothing within clientHelloMs.
 */
export const CLIENT_HELLO_TIMEOUT = 'CLIENT_HELLO_TIMEOUT';

/**
 * Refusal reasons of the PROXY protocol stage (`--proxy-protocol`, proxy-protocol.ts), counted like
 * CLIENT_HELLO_TIMEOUT: a peer outside `--proxy-protocol-from`; a connection that did not start with a
 * valid v2 header (a v1 header, a direct TLS client, a bad field, one over the size cap); and one
 * whose header was not complete within the first-byte deadline.
 */
export const PROXY_PEER_REFUSED = 'PROXY_PEER_REFUSED';
export const PROXY_HEADER_INVALID = 'PROXY_HEADER_INVALID';
export const PROXY_HEADER_TIMEOUT = 'PROXY_HEADER_TIMEOUT';

export interface GatewayTimeouts {
  /** TLS handshake must finish within this (idle TCP sockets are dropped). */
  handshakeMs: number;
  /** Complete request headers must arrive within this (slowloris). */
  headersMs: number;
  /** A whole request (headers + body) must arrive within this. */
  requestMs: number;
  /** Idle keep-alive HTTP connections are closed after this. */
  keepAliveMs: number;
  /** How often Node checks headers/request timeouts. */
  checkIntervalMs: number;
  /**
   * TLS handshakes allowed in flight at once; connections beyond wait, unread, in arrival order
   * (admission.ts). Without a cap a reconnect storm collapses: thousands of handshakes interleave,
   * each finishes past handshakeMs, and every retry joins the same pile (measured with 10,000 agents).
   */
  maxHandshakes: number;
  /** Connections allowed to wait for a handshake slot, and (apart) for their first byte; one beyond is dropped at once. */
  maxQueuedConnections: number;
  /** A connection that waited this long for a handshake slot is dropped (the agent retries). */
  queueWaitMs: number;
  /** Handshakes in flight from one source address (fairness: admission.ts). */
  maxHandshakesPerSource: number;
  /**
   * The first byte (the ClientHello) must arrive within this after accept, before the connection takes
   * a handshake slot (client-hello.ts); a silent connection is closed then. `--client-hello-timeout`.
   */
  clientHelloMs: number;
  /** Connections of one source address waiting for their first byte; one more is closed at once. */
  maxAwaitingHelloPerSource: number;
}

export const DEFAULT_GATEWAY_TIMEOUTS: GatewayTimeouts = Object.freeze({
  handshakeMs: 10_000,
  headersMs: 10_000,
  requestMs: 30_000,
  keepAliveMs: 5_000,
  checkIntervalMs: 1_000,
  maxHandshakes: 128,
  maxQueuedConnections: 16_384,
  queueWaitMs: 10_000,
  maxHandshakesPerSource: 16,
  clientHelloMs: 3_000,
  maxAwaitingHelloPerSource: 256,
});

export interface GatewayDeps {
  tls: { key: string; certChain: string; caCert: string | string[] };
  auth: ClientAuthContext;
  enrollment: EnrollmentService;
  registry: ConnectionRegistry;
  hooks: GatewayHooks;
  /** Routes features add (served after the gateway's own). */
  routes?: PublicRoutes;
  logger: Logger;
  timeouts?: Partial<GatewayTimeouts>;
  /** Called after a successful upgrade (e.g. to record last_seen). */
  onConnected?: (nodeId: string) => void;
  /** The PROXY protocol v2 (config `proxyProtocol`): null or absent, off. */
  proxyProtocol?: { from: readonly string[] } | null;
  /** Where the client addresses PROXY headers name are kept (shared with enrollment's limiter). */
  clientAddresses?: ClientAddresses;
}

/**
 * The listening side of the gateway: a TCP listener that admits connections to the HTTPS server,
 * which never listens itself, through the handshake admission queue.
 */
export interface Gateway {
  listen(port: number, host: string): Promise<AddressInfo>;
  setSecureContext(options: SecureContextOptions): void;
  /** The first-byte deadline for connections accepted from now on (SIGHUP reload). */
  setClientHelloTimeout(ms: number): void;
  /** What waits before the session layer now (metrics; a storm shows here first). */
  load(): GatewayLoad;
  /** Stops accepting, drops waiting connections and closes every open one. */
  close(): Promise<void>;
  on(event: 'error', listener: (err: Error) => void): void;
}

/** Connections between accept and upgrade, by stage: the first-byte gate, the admission queue, the TLS handshake. */
export interface GatewayLoad {
  awaitingFirstByte: number;
  queued: number;
  handshakesInFlight: number;
}

export function createGateway(deps: GatewayDeps): Gateway {
  const t = { ...DEFAULT_GATEWAY_TIMEOUTS, ...deps.timeouts };
  const log = deps.logger.child({ component: 'gateway' });
  /** Set by close(): requests and upgrades from then on are refused (503 ML_ERR_SHUTTING_DOWN). */
  let closing = false;
  const clients = deps.clientAddresses ?? new ClientAddresses();
  const proxy = deps.proxyProtocol ? { allowed: proxyPeerFilter(deps.proxyProtocol.from), countPeer: deps.proxyProtocol.from.length === 0 } : null;
  if (deps.proxyProtocol && deps.proxyProtocol.from.length === 0) {
    log.warn('--proxy-protocol without --proxy-protocol-from: any peer may name any client address (and so escape the per-address caps and the enrollment limiter); list the load balancers');
  }
  // A refused PROXY connection is a misconfiguration to tell the operator, or someone probing the port:
  // a warning at most once a minute per reason, debug otherwise (every one is counted in the metrics).
  const lastWarned = new Map<string, number>();
  const proxyLog = (reason: string, fields: Record<string, unknown>, msg: string): void => {
    const now = Date.now();
    if (now - (lastWarned.get(reason) ?? -Infinity) >= 60_000) {
      lastWarned.set(reason, now);
      log.warn(fields, msg);
    } else log.debug(fields, msg);
  };
  const server = createServer({
    key: deps.tls.key,
    cert: deps.tls.certChain,
    ca: Array.isArray(deps.tls.caCert) ? deps.tls.caCert : [deps.tls.caCert],
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2',
    handshakeTimeout: t.handshakeMs,
    headersTimeout: t.headersMs,
    requestTimeout: t.requestMs,
    keepAliveTimeout: t.keepAliveMs,
    connectionsCheckingInterval: t.checkIntervalMs,
  });
  server.timeout = t.requestMs * 2;

  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_WS_PAYLOAD, perMessageDeflate: false });

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (closing) {
      // As for upgrades below: a request on a handshake that finished during the shutdown would run
      // (an enrollment commit, say) while the features it relies on are closing.
      sendError(res, new MeshlinkError('ML_ERR_SHUTTING_DOWN', 'the server is shutting down'));
      return;
    }
    route(req, res).catch((err: unknown) => {
      log.error({ err, path: req.url }, 'request handler failed');
      sendError(res, err);
    });
  });

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    const method = req.method ?? 'GET';
    const allow = (m: string): boolean => {
      if (method === m) return true;
      sendError(res, new MeshlinkError('ML_ERR_METHOD', `use ${m} ${path}`));
      return false;
    };
    switch (path) {
      case '/v1/enroll':
        if (allow('POST')) await deps.enrollment.handleEnroll(req, res);
        return;
      case '/v1/renew':
        if (allow('POST')) await deps.enrollment.handleRenew(req, res);
        return;
      case '/v1/ca':
        if (allow('GET')) deps.enrollment.handleCa(req, res);
        return;
      case '/healthz':
        // For load balancers and probes: the process answers, and so does its store.
        if (allow('GET')) {
          const ok = await deps.auth.store.healthy();
          sendJson(res, ok ? 200 : 503, { status: ok ? 'ok' : 'unavailable' });
        }
        return;
      case '/v1/connect':
        sendJson(res, 426, { code: 'ML_ERR_BAD_REQUEST', message: 'GET /v1/connect requires a WebSocket upgrade' }, { upgrade: 'websocket' });
        return;
      default: {
        const found = path === undefined ? undefined : deps.routes?.match(path);
        if (found) {
          if (!allow(found.route.method)) return;
          if (found.route.clientCertificate) await authenticateClient(deps.auth, req.socket as TLSSocket);
          await found.handler(req, res, found.rest);
          return;
        }
        sendError(res, new MeshlinkError('ML_ERR_NOT_FOUND', `no endpoint ${path}`));
      }
    }
  }

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const tlsSocket = socket as TLSSocket;
    const remoteAddress = clients.of(tlsSocket);
    const via = clients.via(tlsSocket);
    const path = (req.url ?? '/').split('?')[0];
    socket.on('error', () => {}); // refusals may race a peer reset; nothing useful to report
    if (closing) {
      // An upgrade whose TLS handshake was under way when the shutdown began: accepted now, it would
      // open a session after every other was closed and hold the listener open (the close never ends).
      deps.registry.noteRefused('ML_ERR_SHUTTING_DOWN');
      refuse(socket, new MeshlinkError('ML_ERR_SHUTTING_DOWN', 'the server is shutting down'));
      return;
    }
    if (path !== '/v1/connect' || req.method !== 'GET') {
      deps.registry.noteRefused('ML_ERR_NOT_FOUND');
      refuse(socket, new MeshlinkError('ML_ERR_NOT_FOUND', `no WebSocket endpoint ${path}`));
      return;
    }
    void authenticateClient(deps.auth, tlsSocket).then(
      (peer) => {
        // The store lookup took a turn of the event loop (a round trip on PostgreSQL): the shutdown may
        // have begun, or the client gone, meanwhile.
        if (closing) {
          deps.registry.noteRefused('ML_ERR_SHUTTING_DOWN');
          refuse(socket, new MeshlinkError('ML_ERR_SHUTTING_DOWN', 'the server is shutting down'));
          return;
        }
        if (socket.destroyed) return;
        upgrade(peer);
      },
      (err: unknown) => {
        // A store that does not answer is the server's trouble, not the agent's: 503, and it retries.
        const e = err instanceof MeshlinkError ? err : new MeshlinkError('ML_ERR_STORE_UNAVAILABLE', 'the store did not answer');
        if (e.status >= 500) log.error({ err, remoteAddress }, 'connect check failed');
        else log.warn({ remoteAddress, code: e.code, reason: e.message }, 'agent connection refused');
        deps.registry.noteRefused(e.code);
        refuse(socket, e);
      },
    );

    function upgrade(peer: AuthenticatedPeer): void {
      // The HTTP layer's idle timeout must not cut a long-lived agent connection; liveness is the session's job.
      tlsSocket.setTimeout(0);
      wss.handleUpgrade(req, socket, head, (ws) => {
        const info = { nodeId: peer.nodeId, hostname: peer.hostname, certSerial: peer.certSerial, certNotAfter: peer.certNotAfter, remoteAddress };
        if (!deps.registry.add(ws, info)) return; // the registry's shutdown already ran: closed, no session
        log.info({ nodeId: info.nodeId, hostname: info.hostname, certSerial: info.certSerial, remoteAddress, ...(via ? { via } : {}) }, 'agent connected');
        ws.once('close', (code) => log.info({ nodeId: info.nodeId, code }, 'agent disconnected'));
        deps.onConnected?.(info.nodeId);
        try {
          deps.hooks.onAgentConnection(ws, info);
        } catch (err) {
          log.error({ err, nodeId: info.nodeId }, 'onAgentConnection hook threw');
          ws.close(1011, 'internal error');
        }
      });
    }
  });

  // Connections reach the HTTPS server only through the admission queue; handing an accepted socket
  // to it is the documented `server.emit('connection', socket)`. The listener pauses every socket on
  // accept; the first-byte gate below then reads its first bytes into the socket's buffer (a
  // ClientHello is a few hundred bytes; reading stops at the socket's high-water mark), unconsumed.
  const admission = new AdmissionQueue(
    { maxInFlight: t.maxHandshakes, maxQueued: t.maxQueuedConnections, maxWaitMs: t.queueWaitMs, maxInFlightPerSource: t.maxHandshakesPerSource },
    (socket) => server.emit('connection', socket),
    (reason) => {
      deps.registry.noteRefused('ML_ERR_OVERLOADED');
      log.debug({ reason }, 'connection dropped before its TLS handshake');
    },
  );
  // Before the queue: a connection takes a slot only once its first byte is readable, within
  // clientHelloMs (client-hello.ts); the byte stays in the socket's buffer for the TLS server.
  let clientHelloMs = t.clientHelloMs;
  const helloGate = new ClientHelloGate({ timeoutMs: () => clientHelloMs, maxPerSource: t.maxAwaitingHelloPerSource, maxTotal: t.maxQueuedConnections, proxy });
  const listener = createTcpServer({ pauseOnConnect: true }, (socket: Socket) => {
    // The raw socket reads now (for its first byte), so a reset can surface on it; the TLS socket
    // reports its own errors later.
    socket.on('error', () => {});
    // Taken now: a destroyed socket no longer reports its peer (the refusals below log it).
    const peer = socket.remoteAddress;
    helloGate.wait(socket, (outcome, detail) => {
      if (outcome === 'ready') {
        if (detail.client) clients.set(socket, detail.client);
        admission.offer(socket, clients.of(socket));
        return;
      }
      if (outcome === 'timeout') {
        deps.registry.noteRefused(CLIENT_HELLO_TIMEOUT);
        log.debug({ remoteAddress: detail.client?.address ?? peer }, 'connection closed: no ClientHello within the deadline');
      } else if (outcome === 'source_full') {
        deps.registry.noteRefused('ML_ERR_OVERLOADED');
        log.debug({ reason: 'source_hello_full' }, 'connection dropped before its TLS handshake');
      } else if (outcome === 'proxy_refused') {
        deps.registry.noteRefused(PROXY_PEER_REFUSED);
        proxyLog(PROXY_PEER_REFUSED, { peer }, 'connection closed: a PROXY header is accepted only from --proxy-protocol-from');
      } else if (outcome === 'proxy_invalid') {
        deps.registry.noteRefused(PROXY_HEADER_INVALID);
        const why = detail.invalid === 'v1' ? 'a PROXY v1 (text) header: send v2 (haproxy: send-proxy-v2)' : `no valid PROXY v2 header first (${detail.invalid ?? 'invalid'})`;
        proxyLog(PROXY_HEADER_INVALID, { peer, reason: detail.invalid }, `connection closed: ${why}`);
      } else if (outcome === 'proxy_timeout') {
        deps.registry.noteRefused(PROXY_HEADER_TIMEOUT);
        log.debug({ peer }, 'connection closed: no complete PROXY header within the deadline');
      }
    });
  });
  server.on('secureConnection', (tlsSocket: TLSSocket) => admission.finished(keyOf(tlsSocket)));
  server.on('tlsClientError', (err, tlsSocket) => {
    admission.finished(keyOf(tlsSocket));
    log.debug({ remoteAddress: clients.of(tlsSocket), reason: err.message }, 'TLS handshake failed');
    deps.registry.noteRefused('TLS_HANDSHAKE');
  });

  return {
    listen: (port, host) =>
      new Promise((resolve, reject) => {
        listener.once('error', reject);
        listener.listen(port, host, () => {
          listener.off('error', reject);
          // The HTTPS server never listens itself, but its header/request timeout checks start on
          // 'listening' (node:http setupConnectionsTracking); test/server/gateway.test.ts's slowloris
          // case fails if that ever changes.
          server.emit('listening');
          resolve(listener.address() as AddressInfo);
        });
      }),
    setSecureContext: (options) => server.setSecureContext(options),
    setClientHelloTimeout: (ms) => {
      clientHelloMs = ms;
    },
    load: () => ({ awaitingFirstByte: helloGate.pending, queued: admission.queued, handshakesInFlight: admission.inFlight }),
    close: () =>
      new Promise((resolve) => {
        closing = true;
        admission.close();
        helloGate.close();
        listener.close(() => resolve());
        server.close(() => {}); // stops the timeout checks; it was never listening, so nothing else
        server.closeAllConnections();
      }),
    on: (event, fn) => {
      listener.on(event, fn);
      server.on(event, fn);
    },
  };
}

/** A plain HTTP error on a socket that was asking to upgrade; nothing is upgraded. */
function refuse(socket: Duplex, err: MeshlinkError): void {
  const body = JSON.stringify({ code: err.code, message: err.message });
  const reason = ({ 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 503: 'Service Unavailable' } as Record<number, string>)[err.status] ?? 'Error';
  socket.end(
    `HTTP/1.1 ${err.status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
  const t = setTimeout(() => socket.destroy(), 1_000);
  t.unref();
  socket.once('close', () => clearTimeout(t));
}
