import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/admin-api/client.js';
import * as api from '../../src/admin-api/routes.js';
import { consoleFeature, createConsoleFeature } from '../../src/server/console/index.js';
import { SERVER_FEATURES } from '../../src/server/features.js';
import { startTestServer, type TestServer } from '../server/helpers.js';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function http(port: number, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers: { ...(body !== undefined ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) } : {}), ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** The HTTP layer of the web console against a real server: logins, the Origin check, headers, the API and its audit. */
describe('web console over HTTP', () => {
  let ts: TestServer;
  let port = 0;
  let now = Date.parse('2026-01-01T00:00:00Z');
  let admin: AdminClient;
  let origin: string;

  beforeAll(async () => {
    const features = [...SERVER_FEATURES];
    features[features.indexOf(consoleFeature)] = createConsoleFeature({ auth: { now: () => now }, onListening: (a) => (port = a.port) });
    ts = await startTestServer({ consoleListen: { host: '127.0.0.1', port: 0 } }, { features });
    admin = new AdminClient(ts.server.adminSocketPath, { actor: 'alice(uid 1000)' });
    origin = `http://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    await ts?.stop();
  });

  const login = async (): Promise<string> => {
    const { url } = await admin.call(api.consoleLogin, {});
    const u = new URL(url);
    expect(u.origin).toBe(origin);
    const res = await http(port, 'GET', u.pathname + u.search);
    expect(res.status).toBe(303);
    const setCookie = String(res.headers['set-cookie']);
    return setCookie.split(';')[0]!;
  };

  it('a login link opens a session once: an HttpOnly, SameSite=Strict, Path=/ cookie with an expiry, then a redirect to /; reused it is 401', async () => {
    const { url, expiresAt } = await admin.call(api.consoleLogin, {});
    expect(Date.parse(expiresAt)).toBe(now + 60_000);
    const u = new URL(url);
    const first = await http(port, 'GET', u.pathname + u.search);
    expect(first.status).toBe(303);
    expect(first.headers.location).toBe('/');
    const cookie = (first.headers['set-cookie'] as string[])[0]!;
    expect(cookie).toMatch(/^meshlink_console=[A-Za-z0-9_-]{43}; /);
    expect(cookie).toContain('; HttpOnly');
    expect(cookie).toContain('; SameSite=Strict');
    expect(cookie).toContain('; Path=/');
    expect(cookie).toContain(`; Max-Age=${12 * 3600}`);
    // The session works, and the link is spent.
    expect((await http(port, 'GET', '/api/v1/nodes', { cookie: cookie.split(';')[0]! })).status).toBe(200);
    const again = await http(port, 'GET', u.pathname + u.search);
    expect(again.status).toBe(401);
    expect(JSON.parse(again.body)).toMatchObject({ code: 'ML_ERR_CONSOLE_UNAUTHORIZED' });
    expect(again.headers['set-cookie']).toBeUndefined();
  });

  it('a login link expires after 60 s (the injected clock)', async () => {
    const { url } = await admin.call(api.consoleLogin, {});
    const u = new URL(url);
    now += 60_000;
    const res = await http(port, 'GET', u.pathname + u.search);
    expect(res.status).toBe(401);
    expect(JSON.parse(res.body)).toMatchObject({ code: 'ML_ERR_CONSOLE_UNAUTHORIZED' });
    // One just inside its minute still works.
    const fresh = new URL((await admin.call(api.consoleLogin, {})).url);
    now += 59_999;
    expect((await http(port, 'GET', fresh.pathname + fresh.search)).status).toBe(303);
  });

  it('a session expires after 12 h', async () => {
    const cookie = await login();
    expect((await http(port, 'GET', '/api/v1/nodes', { cookie })).status).toBe(200);
    now += 12 * 3_600_000;
    expect((await http(port, 'GET', '/api/v1/nodes', { cookie })).status).toBe(401);
  });

  it('the API refuses a request without a session: 401 with the error code', async () => {
    const res = await http(port, 'GET', '/api/v1/nodes');
    expect(res.status).toBe(401);
    expect(JSON.parse(res.body)).toMatchObject({ code: 'ML_ERR_CONSOLE_UNAUTHORIZED' });
    expect((await http(port, 'GET', '/api/v1/nodes', { cookie: 'meshlink_console=forged' })).status).toBe(401);
    expect((await http(port, 'GET', '/api/events')).status).toBe(401);
  });

  it('a POST from another origin (another port of the same host) is refused 403 and not audited', async () => {
    const cookie = await login();
    const before = await admin.call(api.listAudit, { limit: 1 });
    for (const bad of [{ origin: `http://127.0.0.1:${port + 1}` }, { origin: 'null' }, {} as Record<string, string>]) {
      const res = await http(port, 'POST', '/api/v1/tokens', { cookie, ...bad }, JSON.stringify({ ttlMs: 60_000 }));
      expect(res.status).toBe(403);
      expect(JSON.parse(res.body)).toMatchObject({ code: 'ML_ERR_CONSOLE_ORIGIN' });
    }
    const after = await admin.call(api.listAudit, { limit: 1 });
    expect(after[0]!.id).toBe(before[0]!.id);
  });

  it('a POST with the console’s own Origin runs the operator route, audited with the console actor; errors keep their code and status', async () => {
    const cookie = await login();
    const res = await http(port, 'POST', '/api/v1/tokens', { cookie, origin }, JSON.stringify({ ttlMs: 60_000 }));
    expect(res.status).toBe(200);
    expect(res.headers['cache-control']).toBe('no-store');
    const token = api.createToken.output.parse(JSON.parse(res.body));
    const audit = await admin.call(api.listAudit, { limit: 1 });
    expect(audit[0]).toMatchObject({ actor: 'console:alice(uid 1000)', operation: 'tokens', result: 'ok', target: `token ${token.id}, expires ${token.expiresAt}` });

    const bad = await http(port, 'POST', '/api/v1/tokens', { cookie, origin }, JSON.stringify({ ttlMs: 1 }));
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body)).toMatchObject({ code: 'ML_ERR_BAD_REQUEST' });
    const missing = await http(port, 'POST', '/api/v1/nodes/remove', { cookie, origin }, JSON.stringify({ node: 'nope' }));
    expect(missing.status).toBe(404);
    expect(JSON.parse(missing.body)).toMatchObject({ code: 'ML_ERR_NODE_NOT_FOUND' });
    expect((await admin.call(api.listAudit, { limit: 1 }))[0]).toMatchObject({ actor: 'console:alice(uid 1000)', operation: 'nodes/remove', result: 'error:ML_ERR_NODE_NOT_FOUND' });
  });

  it('the console does not make login links for itself, nor take uploads', async () => {
    const cookie = await login();
    expect((await http(port, 'POST', '/api/v1/console/login', { cookie, origin }, '{}')).status).toBe(404);
    expect((await http(port, 'POST', '/api/v1/ops/upgrade', { cookie, origin }, '{}')).status).toBe(404);
  });

  it('every answer carries a strict CSP, frame denial and nosniff, and no CORS headers', async () => {
    const cookie = await login();
    for (const [path, headers] of [['/', {}], ['/app.js', {}], ['/api/v1/nodes', { cookie }], ['/api/v1/nodes', { origin: 'http://evil.example' }]] as const) {
      const res = await http(port, 'GET', path, headers);
      expect(res.headers['content-security-policy']).toMatch(/^default-src 'self'; script-src 'self'; style-src 'self';.*frame-ancestors 'none'/);
      expect(res.headers['x-frame-options']).toBe('DENY');
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expect(Object.keys(res.headers).filter((h) => h.startsWith('access-control-'))).toEqual([]);
    }
    const page = await http(port, 'GET', '/');
    expect(page.status).toBe(200);
    // No inline script or style: only files of the console's own origin.
    expect(page.body).not.toMatch(/<script>|<script(?![^>]*\ssrc=)[^>]*>|<style|\sstyle=|\son[a-z]+=/i);
    expect((await http(port, 'GET', '/../package.json')).status).toBe(404);
  });

  it('the event stream opens for a session (its node events are checked in the browser test, with real agents)', async () => {
    const cookie = await login();
    const head = await new Promise<{ type: string | undefined; first: string }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/api/events', headers: { cookie } }, (res) => {
        res.once('data', (c: Buffer) => {
          resolve({ type: res.headers['content-type'], first: c.toString('utf8') });
          req.destroy();
        });
      });
      req.on('error', reject);
      req.end();
    });
    expect(head).toEqual({ type: 'text/event-stream; charset=utf-8', first: 'retry: 2000\n\n' });
  });
});

describe('console.login without --console-listen', () => {
  let ts: TestServer;
  beforeAll(async () => {
    ts = await startTestServer();
  });
  afterAll(async () => {
    await ts?.stop();
  });

  it('answers ML_ERR_CONSOLE_OFF (409)', async () => {
    await expect(new AdminClient(ts.server.adminSocketPath).call(api.consoleLogin, {})).rejects.toMatchObject({ code: 'ML_ERR_CONSOLE_OFF', status: 409 });
  });
});

describe('web console behind a TLS reverse proxy (--console-origin)', () => {
  let ts: TestServer;
  let port = 0;
  const proxied = 'https://console.example.com';

  beforeAll(async () => {
    const features = [...SERVER_FEATURES];
    features[features.indexOf(consoleFeature)] = createConsoleFeature({ onListening: (a) => (port = a.port) });
    ts = await startTestServer({ consoleListen: { host: '127.0.0.1', port: 0 }, consoleOrigin: `${proxied}/` }, { features });
  });
  afterAll(async () => {
    await ts?.stop();
  });

  it('links name the configured origin, the cookie is Secure, and only that Origin may POST', async () => {
    const admin = new AdminClient(ts.server.adminSocketPath, { actor: 'bob(uid 1001)' });
    const { url } = await admin.call(api.consoleLogin, {});
    const u = new URL(url);
    expect(u.origin).toBe(proxied);
    const res = await http(port, 'GET', u.pathname + u.search, { host: 'console.example.com' });
    const cookie = (res.headers['set-cookie'] as string[])[0]!;
    expect(cookie).toContain('; Secure');
    const session = cookie.split(';')[0]!;
    const body = JSON.stringify({ ttlMs: 60_000 });
    expect((await http(port, 'POST', '/api/v1/tokens', { cookie: session, origin: `http://127.0.0.1:${port}` }, body)).status).toBe(403);
    expect((await http(port, 'POST', '/api/v1/tokens', { cookie: session, origin: proxied }, body)).status).toBe(200);
    expect((await admin.call(api.listAudit, { limit: 1 }))[0]).toMatchObject({ actor: 'console:bob(uid 1001)', operation: 'tokens', result: 'ok' });
  });
});
