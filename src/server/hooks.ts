import type { WebSocket } from 'ws';

/** What the gateway knows about an authenticated agent connection when it hands the socket over. */
export interface AgentConnectionInfo {
  nodeId: string;
  hostname: string;
  /** Canonical lower-case hex serial of the client certificate. */
  certSerial: string;
  /** Certificate NotAfter, ms since the epoch; the gateway closes the socket with 4402 at that time. */
  certNotAfter: number;
  remoteAddress: string;
}

/**
 * Implemented by the session layer (src/server/session-host.ts). The gateway authenticates, upgrades,
 * registers the socket for revocation/expiry, then calls this; everything after (handshake,
 * heartbeats, streams) belongs to the hook.
 */
export interface GatewayHooks {
  onAgentConnection(ws: WebSocket, info: AgentConnectionInfo): void;
}
