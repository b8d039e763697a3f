import { createServer, type Server } from 'node:http';
import type { ListenAddress } from './listen-address.js';

/** What serveMetrics needs of a metrics registry (prom-client's Registry has both). */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

/**
 * A plain HTTP listener that serves GET /metrics from `registry` and, given `healthy`, GET /healthz
 * (200 `{"status":"ok"}`, else 503): the server's and the agent's local metrics port. It has no
 * authentication, so callers bind it to a local address only.
 */
export function serveMetrics(registry: MetricsSource, listen: ListenAddress, options: { healthy?: () => boolean | Promise<boolean> } = {}): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const healthz = path === '/healthz' && options.healthy !== undefined;
    if (path !== '/metrics' && !healthz) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`only /metrics${options.healthy ? ' and /healthz' : ''} here\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET' }).end();
      return;
    }
    if (healthz) {
      void Promise.resolve()
        .then(() => options.healthy!())
        .catch(() => false)
        .then((ok) => res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify({ status: ok ? 'ok' : 'unavailable' })));
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics collection failed: ${(err as Error).message}\n`),
    );
  });
  server.headersTimeout = 5_000;
  server.requestTimeout = 10_000;
  server.keepAliveTimeout = 5_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
