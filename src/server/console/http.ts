import { readFileSync, readdirSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { extname, join } from 'node:path';
import { consoleLogin } from '../../admin-api/routes.js';
import { MeshlinkError } from '../../errors.js';
import type { Logger } from '../../util/logger.js';
import { readInput } from '../admin.js';
import type { AdminRoutes } from '../admin-routes.js';
import { sendError, sendJson } from '../http-json.js';
import type { ConsoleAuth } from './auth.js';
import type { ConsoleEvents } from './events.js';

/**
 * The console's HTTP listener (plain HTTP, loopback by default; TLS is a reverse proxy's job):
 *
 * - `GET /login?token=…` redeems a one-time link: a session cookie, then a redirect to `/`.
 * - `GET|POST /api/v1/…` is the operator API itself: the same route table, handlers, validation,
 *   errors and audit as the admin socket (`AdminRoutes.run`), with the session's operator as the actor.
 * - `GET /api/events`: live updates (events.ts).
 * - everything else: the static pages of assets/ (the shell holds no data; it asks the API).
 *
 * A POST must carry exactly the console's own Origin: a page on another port of the same host is
 * same-site, so its forms would get the SameSite=Strict cookie; only the Origin check stops it. No CORS
 * headers are ever sent, and every answer carries a strict CSP (no inline script or style).
 */

export const SESSION_COOKIE = 'meshlink_console';

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
};

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

const LOGIN_FAILED_PAGE =
  '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>meshlink console</title><link rel="stylesheet" href="/style.css"></head>' +
  '<body><main><h1>This login link does not work</h1><p>It is unknown, already used, or older than 60 seconds. Run <code>meshlink server console login</code> on the server and open the new link.</p></main></body></html>';

export interface ConsoleHttpDeps {
  routes: AdminRoutes;
  auth: ConsoleAuth;
  events: ConsoleEvents;
  /** The configured origin (`--console-origin`); null: `http://` + the request's Host. */
  origin: string | null;
  assetsDir: string;
  logger: Logger;
}

/** The static files, read once at start (a few kB): served by name, nothing else of the disk is reachable. */
function loadAssets(dir: string): Map<string, { body: Buffer; type: string }> {
  const assets = new Map<string, { body: Buffer; type: string }>();
  for (const name of readdirSync(dir)) {
    const type = CONTENT_TYPES[extname(name)];
    if (type) assets.set(`/${name}`, { body: readFileSync(join(dir, name)), type });
  }
  return assets;
}

export function createConsoleServer(deps: ConsoleHttpDeps): Server {
  const assets = loadAssets(deps.assetsDir);
  const log = deps.logger;

  const server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000 }, (req, res) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
    handle(req, res).catch((err: unknown) => {
      if (!(err instanceof MeshlinkError) || err.status >= 500) log.error({ err, path: (req.url ?? '').split('?')[0] }, 'console request failed');
      sendError(res, err);
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://console');
    const method = req.method ?? 'GET';
    // State changes first prove they come from the console's own pages.
    if (method !== 'GET' && method !== 'HEAD') checkOrigin(req, deps.origin);

    if (url.pathname === '/login' && method === 'GET') return login(req, res, url);
    if (url.pathname === '/logout' && method === 'POST') {
      deps.auth.end(cookieOf(req));
      res.setHeader('set-cookie', cookie(req, deps.origin, '', 0));
      sendJson(res, 200, { ok: true });
      return;
    }
    if (url.pathname === '/api/events' && method === 'GET') {
      sessionOf(req);
      deps.events.add(res);
      return;
    }
    if (url.pathname.startsWith('/api/')) {
      const session = sessionOf(req);
      const route = deps.routes.lookup(`${method} ${url.pathname.slice('/api'.length)}`);
      // Uploads (an agent bundle) stay on the CLI; a session does not make login links for others.
      if (!route || route.upload !== undefined || route.name === consoleLogin.name) throw new MeshlinkError('ML_ERR_NOT_FOUND', `no console endpoint ${method} ${url.pathname}`);
      const { input } = await readInput(route, req, url);
      sendJson(res, 200, await deps.routes.run(route, input, { actor: session.actor }));
      return;
    }
    const asset = method === 'GET' ? assets.get(url.pathname === '/' ? '/index.html' : url.pathname) : undefined;
    if (!asset) throw new MeshlinkError('ML_ERR_NOT_FOUND', `no console page ${method} ${url.pathname}`);
    res.writeHead(200, { 'content-type': asset.type, 'content-length': String(asset.body.length), 'cache-control': 'no-cache' });
    res.end(asset.body);
  }

  function login(req: IncomingMessage, res: ServerResponse, url: URL): void {
    let sessionId: string;
    try {
      sessionId = deps.auth.redeem(url.searchParams.get('token') ?? '').sessionId;
    } catch (err) {
      // A browser gets a page that says what to do; other clients the API's JSON error.
      if (!(err instanceof MeshlinkError) || !/\btext\/html\b/.test(req.headers.accept ?? '')) throw err;
      const page = Buffer.from(LOGIN_FAILED_PAGE);
      res.writeHead(err.status, { 'content-type': 'text/html; charset=utf-8', 'content-length': String(page.length), 'cache-control': 'no-store' });
      res.end(page);
      return;
    }
    res.writeHead(303, { location: '/', 'set-cookie': cookie(req, deps.origin, sessionId, deps.auth.sessionTtlMs), 'cache-control': 'no-store' });
    res.end();
  }

  function sessionOf(req: IncomingMessage): { actor: string } {
    const session = deps.auth.session(cookieOf(req));
    if (!session) throw new MeshlinkError('ML_ERR_CONSOLE_UNAUTHORIZED', 'not logged in: run `meshlink server console login` and open the link it prints');
    return session;
  }

  return server;
}

/** The origin this request's browser is on: the configured one, else http:// and the Host it used. */
export function expectedOrigin(req: IncomingMessage, configured: string | null): string | null {
  if (configured) return configured;
  const host = req.headers.host;
  return host ? `http://${host}` : null;
}

function checkOrigin(req: IncomingMessage, configured: string | null): void {
  const expected = expectedOrigin(req, configured);
  if (!expected || req.headers.origin !== expected) throw new MeshlinkError('ML_ERR_CONSOLE_ORIGIN', 'this request must come from the console’s own pages (Origin mismatch)');
}

function cookieOf(req: IncomingMessage): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [name, ...rest] = part.trim().split('=');
    if (name === SESSION_COOKIE) return rest.join('=');
  }
  return undefined;
}

function cookie(req: IncomingMessage, configured: string | null, value: string, maxAgeMs: number): string {
  // Secure when browsers reach the console over https (a TLS reverse proxy named by --console-origin).
  const secure = expectedOrigin(req, configured)?.startsWith('https:') ? '; Secure' : '';
  return `${SESSION_COOKIE}=${value}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${Math.floor(maxAgeMs / 1000)}${secure}`;
}
