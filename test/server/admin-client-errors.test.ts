import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/admin-api/client.js';

/**
 * The admin clients rebuild an error from whatever code the socket answers. A code that is not a
 * server code (an ops code, a code from a newer server, garbage) must come back as an error with that
 * code, never as a TypeError thrown while building the error.
 */
describe('admin clients rebuild errors from any wire code', () => {
  let dir: string;
  let socket: string;
  let server: Server;
  const answers = new Map<string, { status: number; body: string }>([
    ['/offline', { status: 409, body: JSON.stringify({ code: 'ML_ERR_OPS_NODE_OFFLINE', message: 'node n1 is offline' }) }],
    ['/future', { status: 418, body: JSON.stringify({ code: 'ML_ERR_FROM_THE_FUTURE', message: 'newer server' }) }],
    ['/garbage', { status: 500, body: JSON.stringify({ code: 'not a code <script>', message: 42 }) }],
    ['/nocode', { status: 400, body: JSON.stringify({}) }],
  ]);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ml-admin-client-'));
    socket = join(dir, 'admin.sock');
    server = createServer((req, res) => {
      const answer = answers.get(req.url ?? '') ?? { status: 404, body: '{}' };
      res.writeHead(answer.status, { 'content-type': 'application/json' });
      res.end(answer.body);
    });
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  });

  // The one client of the operator API (there used to be two, each with its own way of failing).
  const clients = {
    AdminClient: (path: string) => new AdminClient(socket).request('GET', path),
  };

  describe.each(Object.entries(clients))('%s', (_name, call) => {
    it('keeps an ops code answered with 409 (it used to throw a TypeError)', async () => {
      const err = await call('/offline').catch((e: unknown) => e);
      expect(err).not.toBeInstanceOf(TypeError);
      expect(err).toMatchObject({ code: 'ML_ERR_OPS_NODE_OFFLINE', message: 'node n1 is offline', status: 409 });
    });

    it('keeps an unknown but well-formed code, as an internal error', async () => {
      const err = await call('/future').catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ML_ERR_FROM_THE_FUTURE', message: 'newer server', status: 500, exit: 'internal' });
    });

    it('replaces a malformed code and message instead of echoing them', async () => {
      const err = await call('/garbage').catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ML_ERR_INTERNAL', status: 500, exit: 'internal' });
      expect((err as Error).message).not.toContain('<script>');
    });

    it('names the HTTP status when the body has no code', async () => {
      const err = await call('/nocode').catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ML_ERR_INTERNAL' });
      expect((err as Error).message).toContain('400');
    });
  });
});
