import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient, MAX_ANSWER_BYTES } from '../../src/admin-api/client.js';
import { routeKey } from '../../src/admin-api/route.js';
import * as api from '../../src/admin-api/routes.js';
import { OfflineOperator } from '../../src/server/operator/offline.js';
import { startTestServer, tempDir, type TestServer } from '../server/helpers.js';

/**
 * The operator API as one table (src/admin-api/routes.ts): the docs list exactly its routes, a running
 * server serves every one of them, the offline operator exactly the ones marked offline, and the one
 * client checks what it sends and what it gets.
 */

const root = join(import.meta.dirname, '..', '..');

describe('the route table', () => {
  it('docs/ADMIN-API.md lists exactly the routes of src/admin-api/routes.ts, with their names and offline marks', () => {
    const doc = readFileSync(join(root, 'docs', 'ADMIN-API.md'), 'utf8');
    const rows = [...doc.matchAll(/^\| (GET|POST) \| (\/v1\/\S+) \| (\S+) \| (yes|no) \|/gm)].map((m) => `${m[1]} ${m[2]} ${m[3]} ${m[4]}`);
    expect(rows.sort()).toEqual(api.ADMIN_ROUTES.map((r) => `${routeKey(r)} ${r.name} ${r.offline ? 'yes' : 'no'}`).sort());
  });

  it('has no two routes with one key or one name', () => {
    expect(new Set(api.ADMIN_ROUTES.map(routeKey)).size).toBe(api.ADMIN_ROUTES.length);
    expect(new Set(api.ADMIN_ROUTES.map((r) => r.name)).size).toBe(api.ADMIN_ROUTES.length);
  });
});

// An input no route accepts (every POST schema is strict), so that probing a route changes nothing.
const probe = { __probe: 1 } as never;

describe('a running server and the offline operator serve the table', () => {
  let ts: TestServer;
  let dir: { path: string; cleanup(): Promise<void> };
  let dataDir: string;

  beforeAll(async () => {
    dir = await tempDir('ml-operator-api-');
    dataDir = dir.path;
    ts = await startTestServer({}, { dataDir });
  });
  afterAll(async () => {
    await ts?.server.close();
    await dir?.cleanup();
  });

  it('the server serves every route: a request is validated (never "no such endpoint")', async () => {
    // The client checks input itself; go around it to see the server's own answer.
    const client = new AdminClient(ts.server.adminSocketPath);
    for (const route of api.ADMIN_ROUTES) {
      const path = route.method === 'GET' || route.upload !== undefined ? `${route.path}?__probe=1` : route.path;
      const body = route.method === 'POST' && route.upload === undefined ? Buffer.from(JSON.stringify(probe)) : undefined;
      const answer = await client.request(route.method, path, body).then(
        () => 'ok',
        (err: { code: string }) => err.code,
      );
      // GET routes without query fields ignore the unknown one and answer; the rest refuse it.
      expect([routeKey(route), answer]).toEqual([routeKey(route), route.method === 'GET' && answer === 'ok' ? 'ok' : 'ML_ERR_BAD_REQUEST']);
    }
  });

  it('the client refuses a request its schema refuses, before sending it', async () => {
    const client = new AdminClient(join(dataDir, 'no-such.sock'));
    // Nothing listens there: reaching the socket would be ML_ERR_SERVER_NOT_RUNNING.
    await expect(client.call(api.removeNode, { node: '' })).rejects.toMatchObject({ code: 'ML_ERR_USAGE', exit: 'usage' });
    await expect(client.call(api.listNodes, {})).rejects.toMatchObject({ code: 'ML_ERR_SERVER_NOT_RUNNING', exit: 'noServer' });
  });

  it('a state-changing call is audited with the actor the client names', async () => {
    const client = new AdminClient(ts.server.adminSocketPath, { actor: 'carol(uid 1234)' });
    const created = await client.call(api.createToken, { ttlMs: 60_000 });
    const audit = await client.call(api.listAudit, { limit: 10 });
    expect(audit[0]).toMatchObject({ source: 'admin', actor: 'carol(uid 1234)', operation: 'tokens', result: 'ok', target: `token ${created.id}, expires ${created.expiresAt}` });
    // The token is a secret of the operator's: it is not in the record.
    expect(JSON.stringify(audit)).not.toContain(created.token);
  });

  it('with the server stopped, the offline operator serves exactly the offline routes, and audits them', async () => {
    await ts.server.close();
    const op = await OfflineOperator.open(dataDir, { actor: 'dave(uid 1)' });
    try {
      expect(op.live).toBe(false);
      for (const route of api.ADMIN_ROUTES) {
        const answer = await op.call(route, probe).then(
          () => 'ok',
          (err: { code: string }) => err.code,
        );
        const expected = !route.offline ? 'ML_ERR_SERVER_NOT_RUNNING' : route.method === 'GET' && answer === 'ok' ? 'ok' : 'ML_ERR_BAD_REQUEST';
        expect([routeKey(route), answer]).toEqual([routeKey(route), expected]);
      }
      const token = await op.call(api.createToken, { ttlMs: 60_000 });
      expect(token.enrollCommand).toContain(token.token);
      const audit = await op.call(api.listAudit, { limit: 5 });
      expect(audit[0]).toMatchObject({ source: 'admin', actor: 'dave(uid 1)', operation: 'tokens', result: 'ok' });
      expect(await op.call(api.listNodes, {})).toEqual([]);
    } finally {
      await op.close();
    }
  });

  it('the offline operator refuses a data dir without a store', async () => {
    const empty = await tempDir('ml-offline-');
    try {
      await expect(OfflineOperator.open(empty.path)).rejects.toThrow(expect.objectContaining({ code: 'ML_ERR_NOT_INITIALIZED' }));
    } finally {
      await empty.cleanup();
    }
  });
});

describe('the client against a hostile or broken server', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let socket: string;
  let server: Server;
  const seen: Array<{ path: string; actor: string | undefined }> = [];

  beforeAll(async () => {
    dir = await tempDir('ml-admin-client-');
    socket = join(dir.path, 'admin.sock');
    server = createServer((req, res) => {
      seen.push({ path: req.url ?? '', actor: req.headers['x-meshlink-actor'] as string | undefined });
      if (req.url === '/v1/nodes') {
        // An answer that does not match the route's schema.
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify([{ id: 1 }]));
      } else if (req.url?.startsWith('/v1/ops/audit')) {
        // An answer past the cap, sent in chunks: the client must stop reading, not buffer it all.
        res.writeHead(200, { 'content-type': 'application/json' });
        const chunk = Buffer.alloc(1024 * 1024, 0x20);
        let sent = 0;
        const pump = (): void => {
          while (sent <= MAX_ANSWER_BYTES + chunk.length) {
            sent += chunk.length;
            if (!res.write(chunk)) {
              res.once('drain', pump);
              return;
            }
          }
          res.end();
        };
        res.on('error', () => {});
        pump();
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ policy: null, policyId: 'full-mesh', extra: 'a newer server' }));
      }
    });
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await dir.cleanup();
  });

  it('refuses an answer that does not match the route, naming the field', async () => {
    await expect(new AdminClient(socket).call(api.listNodes, {})).rejects.toMatchObject({ code: 'ML_ERR_INTERNAL', message: expect.stringMatching(/does not match the operator API: 0\.id/) });
  });

  it('stops reading an answer past its cap', async () => {
    await expect(new AdminClient(socket).call(api.listAudit, { limit: 5 })).rejects.toMatchObject({ code: 'ML_ERR_INTERNAL', message: expect.stringMatching(/exceeds/) });
  });

  it('ignores answer fields it does not know, and names the operator in every request', async () => {
    expect(await new AdminClient(socket, { actor: 'erin(uid 7)' }).call(api.showPolicy, {})).toEqual({ policy: null, policyId: 'full-mesh' });
    expect(seen.at(-1)).toEqual({ path: '/v1/mesh/policy', actor: 'erin(uid 7)' });
  });

  it('sends GET input as the query string', async () => {
    await new AdminClient(socket).call(api.showNode, { node: 'web 1' }).catch(() => {});
    expect(seen.at(-1)?.path).toBe('/v1/nodes/show?node=web+1');
  });
});
