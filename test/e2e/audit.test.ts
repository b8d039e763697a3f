import { userInfo } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, createToken, enrollAgent, freePort, startServerProc, tempDir, type ServerProc } from './harness.js';

/** Every state-changing admin operation lands in the audit log, with the CLI's OS user as actor. */
describe('audit of admin operations (real processes)', () => {
  let dataDir: { path: string; cleanup(): Promise<void> };
  let stateDir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;

  beforeAll(async () => {
    dataDir = await tempDir('ml-audit-srv-');
    stateDir = await tempDir('ml-audit-agent-');
    server = await startServerProc(dataDir.path, await freePort());
  });
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await dataDir?.cleanup();
    await stateDir?.cleanup();
  });

  it('token create and nodes remove are recorded with who, what, which node and the result', async () => {
    const { nodeId } = await enrollAgent(server, stateDir.path, 'audited-host');
    await createToken(server.dataDir, ['--node', nodeId]);
    expect((await cli(['server', 'nodes', 'remove', 'audited-host', '--data-dir', server.dataDir])).code).toBe(0);
    expect((await cli(['server', 'nodes', 'remove', 'no-such-host', '--data-dir', server.dataDir])).code).not.toBe(0);
    const r = await cli(['server', 'audit', '--json', '--data-dir', server.dataDir]);
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.stdout) as Array<{ actor: string; operation: string; nodeId: string | null; result: string; source: string }>;
    // One name for the operator everywhere (JSON routes and tunnel alike): the OS user and uid.
    const me = `${userInfo().username}(uid ${userInfo().uid})`;
    expect(rows).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ source: 'admin', actor: me, operation: 'tokens', nodeId: null, result: 'ok' }),
        expect.objectContaining({ source: 'admin', actor: me, operation: 'tokens', nodeId, result: 'ok' }),
        expect.objectContaining({ source: 'admin', actor: me, operation: 'nodes/remove', nodeId, result: 'ok' }),
        expect.objectContaining({ source: 'admin', actor: me, operation: 'nodes/remove', nodeId: null, result: 'error:ML_ERR_NODE_NOT_FOUND' }),
      ]),
    );
  }, 180_000);
});
