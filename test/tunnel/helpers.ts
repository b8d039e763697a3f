import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { AgentRunner } from '../../src/agent/connection.js';
import { enroll } from '../../src/agent/enroll.js';
import { openFeatureContext } from '../../src/agent/feature.js';
import { attachTunnels, parseTunnelAllowlist, type TunnelHandle } from '../../src/agent/tunnel/index.js';
import { createLogger } from '../../src/util/logger.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { carryConnection, type TunnelClosed } from '../../src/admin-api/tcp-tunnel-client.js';
import { startTestServer, tempDir, type TestServer } from '../server/helpers.js';
import { waitUntil } from '../ops/helpers.js';

/** A real server (mTLS gateway, admin socket) and an in-process agent with the tunnel feature only. */
export interface TunnelPair {
  ts: TestServer;
  socket: string;
  nodeId: string;
  tunnels: TunnelHandle;
  stop(): Promise<void>;
}

export async function startTunnelPair(allow: string[]): Promise<TunnelPair> {
  const ts = await startTestServer();
  const agentDir = await tempDir('ml-tunnel-agent-');
  const stateDir = join(agentDir.path, 'state');
  const { token } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 });
  const { identity } = await enroll({ server: ts.url, token, caPins: [ts.server.caPin], stateDir, hostname: 'tunnel-host' });
  const logger = createLogger({ name: 'agent', level: 'silent' });
  const runner = new AgentRunner({ stateDir, logger, backoff: { baseMs: 50, maxMs: 500 }, livenessIntervals: 15 });
  const core = openFeatureContext(runner, { stateDir, logger });
  const tunnels = attachTunnels(core.context, { allow: parseTunnelAllowlist(allow) });
  const running = runner.run();
  await waitUntil('agent online', () => ts.server.sessions?.current(identity.nodeId) !== undefined);
  return {
    ts,
    socket: ts.server.adminSocketPath,
    nodeId: identity.nodeId,
    tunnels,
    async stop() {
      runner.stop();
      await running.catch(() => {});
      tunnels.close();
      core.close();
      await ts.stop();
      await agentDir.cleanup();
    },
  };
}

/** A loopback TCP server; `handler` gets each connection (half-open allowed). */
export async function tcpServer(handler: (s: Socket) => void): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const open = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    open.add(s);
    s.once('close', () => open.delete(s));
    handler(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        // Connections a test left open (a paused one never sees the peer's reset) must not keep the close waiting.
        for (const s of open) s.destroy();
      }),
  };
}

/**
 * A local listener whose every connection is carried through the tunnel, as `server tunnel` does
 * (the CLI's loop, in process). `results` collects how each connection ended.
 */
export async function localForward(
  pair: TunnelPair,
  target: { host?: string; port: number },
): Promise<{ port: number; results: Array<Promise<TunnelClosed | null>>; close(): Promise<void> }> {
  const results: Array<Promise<TunnelClosed | null>> = [];
  const fwd = await tcpServer((conn) => {
    const p = carryConnection(pair.socket, { node: pair.nodeId, actor: 'tester', host: target.host ?? '127.0.0.1', port: target.port }, { input: conn, output: conn });
    p.then(
      (c) => void (c ? undefined : conn.destroy()),
      () => void (conn.destroyed ? undefined : conn.resetAndDestroy()),
    );
    results.push(p);
  });
  return { port: fwd.port, results, close: fwd.close };
}

/** Connects, writes `data`, half-closes, and collects everything until the peer ends. */
export function roundTrip(port: number, data: Buffer | string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const c = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    c.on('data', (d: Buffer) => chunks.push(d));
    c.once('error', reject);
    c.once('end', () => {
      c.end();
      resolve(Buffer.concat(chunks));
    });
    c.end(data);
  });
}
