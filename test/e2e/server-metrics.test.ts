import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startServerProc, tempDir, type ServerProc } from './harness.js';

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    })
      .on('error', reject)
      .end();
  });
}

/** `meshlink server start --metrics-listen HOST:PORT`: the flag reaches the metrics listener through the server's config. */
describe('server start --metrics-listen (real process)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let metricsPort: number;

  beforeAll(async () => {
    dir = await tempDir('ml-metrics-cli-');
    metricsPort = await freePort();
    server = await startServerProc(dir.path, await freePort(), ['--metrics-listen', `127.0.0.1:${metricsPort}`]);
  });
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await dir?.cleanup();
  });

  it('serves Prometheus metrics on that address, with the build info, and only /metrics and /healthz', async () => {
    const metrics = await get(metricsPort, '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.body).toMatch(/^meshlink_connected_nodes 0$/m);
    expect(metrics.body).toMatch(/^meshlink_build_info\{version="\d+\.\d+\.\d+[^"]*",node="v\d+\.\d+\.\d+"\} 1$/m);
    expect((await get(metricsPort, '/')).status).toBe(404);
  }, 60_000);

  it('answers /healthz when its store answers', async () => {
    const health = await get(metricsPort, '/healthz');
    expect(health).toEqual({ status: 200, body: '{"status":"ok"}' });
  });
});
