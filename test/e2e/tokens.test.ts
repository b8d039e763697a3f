import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, freePort, startServerProc, tempDir, type ServerProc } from './harness.js';

/**
 * `server token list` and `server token revoke` through the real CLI, against a real server process
 * and then, with the server stopped, on the store file (the offline operator): a listing never shows
 * the token or its hash, a revoked token no longer enrolls, a used token cannot be revoked.
 */

interface Listed {
  id: string;
  state: string;
  uses: number;
  usedAt: string | null;
  revokedAt: string | null;
  expiresAt: string;
  tags?: string[];
}

describe('server token list / revoke', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let dataDir: string;

  beforeAll(async () => {
    dir = await tempDir('ml-tokens-');
    dataDir = join(dir.path, 'server');
    server = await startServerProc(dataDir, await freePort());
  }, 90_000);
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await dir?.cleanup();
  });

  const list = async (): Promise<Listed[]> => {
    const r = await cli(['server', 'tokens', 'list', '--data-dir', dataDir, '--json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Listed[];
  };
  const create = async (extra: string[] = []): Promise<{ token: string; id: string }> => {
    const r = await cli(['server', 'token', 'create', '--data-dir', dataDir, '--json', ...extra]);
    expect(r.code, r.stderr).toBe(0);
    const created = JSON.parse(r.stdout) as { token: string };
    // --json prints no id (another helper owns its shape): the newest listed token is this one.
    const [newest] = await list();
    return { token: created.token, id: newest!.id };
  };
  const enroll = (token: string, state: string) =>
    cli(['agent', 'enroll', '--server', server.url, '--token', token, '--ca-pin', server.caPin, '--state-dir', state, '--hostname', 'tok-node', '--json']);

  it('lists a new token by id with its tags, never the token itself or its hash', async () => {
    const { token, id } = await create(['--tag', 'web', '--tag', 'prod', '--ttl', '10m']);
    const listed = await list();
    expect(listed[0]).toMatchObject({ id, state: 'usable', uses: 0, usedAt: null, revokedAt: null });
    expect([...(listed[0]!.tags ?? [])].sort()).toEqual(['prod', 'web']);
    const text = JSON.stringify(listed);
    expect(text).not.toContain(token);
    const { createHash } = await import('node:crypto');
    expect(text).not.toContain(createHash('sha256').update(token).digest('hex'));
    const human = await cli(['server', 'token', 'list', '--data-dir', dataDir]);
    expect(human.stdout.split('\n')[0]).toMatch(/^ID\s+STATE\s+CREATED\s+EXPIRES\s+USES\s+TAGS/);
    expect(human.stdout).toContain(id);
  });

  it('a revoked token no longer enrolls, and the audit log names the operator and the token id', async () => {
    const { token, id } = await create();
    const revoked = await cli(['server', 'tokens', 'revoke', id, '--data-dir', dataDir, '--json']);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(JSON.parse(revoked.stdout)).toMatchObject({ id, state: 'revoked', revokedAt: expect.any(String) });
    const state = await tempDir('ml-tokens-agent-');
    try {
      const r = await enroll(token, state.path);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('ML_ERR_TOKEN_INVALID');
    } finally {
      await state.cleanup();
    }
    expect((await list()).find((t) => t.id === id)).toMatchObject({ state: 'revoked', uses: 0 });
    const audit = JSON.parse((await cli(['server', 'audit', '--data-dir', dataDir, '--json', '--limit', '5'])).stdout) as Array<{ operation: string; target: string; actor: string }>;
    expect(audit.find((a) => a.operation === 'tokens/revoke')).toMatchObject({ target: `token ${id}`, actor: expect.stringMatching(/\(uid \d+\)$/) });
    // Revoking again changes nothing and keeps the first time.
    const again = await cli(['server', 'token', 'revoke', id, '--data-dir', dataDir, '--json']);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).revokedAt).toBe(JSON.parse(revoked.stdout).revokedAt);
  });

  it('a used token cannot be revoked (exit 8), an unknown id is exit 3, a malformed one a usage error', async () => {
    const { token, id } = await create();
    const state = await tempDir('ml-tokens-agent-');
    try {
      const r = await enroll(token, state.path);
      expect(r.code, r.stderr).toBe(0);
    } finally {
      await state.cleanup();
    }
    expect((await list()).find((t) => t.id === id)).toMatchObject({ state: 'used', uses: 1, usedAt: expect.any(String) });
    const used = await cli(['server', 'token', 'revoke', id, '--data-dir', dataDir]);
    expect([used.code, used.stderr]).toEqual([8, expect.stringContaining('ML_ERR_TOKEN_USED')]);
    const unknown = await cli(['server', 'token', 'revoke', '0123456789abcdef', '--data-dir', dataDir]);
    expect([unknown.code, unknown.stderr]).toEqual([3, expect.stringContaining('ML_ERR_TOKEN_NOT_FOUND')]);
    const bad = await cli(['server', 'token', 'revoke', 'nope', '--data-dir', dataDir]);
    expect(bad.code).toBe(2);
  });

  it('with the server stopped, list and revoke work on the store, and the next start refuses the token', async () => {
    const { token, id } = await create();
    await server.stop('SIGTERM');
    const revoked = await cli(['server', 'token', 'revoke', id, '--data-dir', dataDir, '--json']);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect((await list()).find((t) => t.id === id)).toMatchObject({ state: 'revoked' });
    server = await startServerProc(dataDir, await freePort());
    const state = await tempDir('ml-tokens-agent-');
    try {
      const r = await enroll(token, state.path);
      expect(r.stderr).toContain('ML_ERR_TOKEN_INVALID');
    } finally {
      await state.cleanup();
    }
  }, 90_000);
});
