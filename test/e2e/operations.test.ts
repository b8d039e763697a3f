import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/admin-api/client.js';
import * as api from '../../src/admin-api/routes.js';
import { cli, enrollAgent, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from './harness.js';

/**
 * The running operations (`ops.list`, `ops.end`, `server ops list|end`) and the JSON built-ins
 * (`ops.builtin`) through the real CLI, a real server process and a real agent: an operator's
 * `server logs --follow` shows up in the list with its node, operator and bytes, and another
 * operator's `server ops end` ends it: the follower exits with ML_ERR_OPS_ENDED (exit 8), and the
 * audit record says who ended it.
 */
describe('server ops list / end, and ops.builtin', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let agent: Proc;
  let nodeId: string;
  const procs: Proc[] = [];

  beforeAll(async () => {
    dir = await tempDir('ml-running-ops-');
    server = await startServerProc(join(dir.path, 'server'), await freePort());
    const state = join(dir.path, 'agent');
    ({ nodeId } = await enrollAgent(server, state, 'ops-node'));
    agent = spawnCli(['agent', 'run', '--state-dir', state]);
    await waitFor('node online', async () => (await listNodes(server.dataDir)).find((n) => n.id === nodeId && n.online));
  }, 120_000);
  afterAll(async () => {
    for (const p of procs) await p.stop('SIGKILL');
    await agent?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    await dir?.cleanup();
  });

  const opsList = async (): Promise<api.RunningOperation[]> => {
    const r = await cli(['server', 'ops', 'list', '--data-dir', server.dataDir, '--json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as api.RunningOperation[];
  };

  it('lists a running `logs --follow` and ends it for another operator: the follower exits 8 with ML_ERR_OPS_ENDED', async () => {
    expect(await opsList()).toEqual([]);
    const follower = spawnCli(['server', 'logs', 'ops-node', '--follow', '--lines', '5', '--data-dir', server.dataDir]);
    procs.push(follower);
    const op = await waitFor('the follow in the list, with the agent log bytes it sent', async () => (await opsList()).find((o) => o.op === 'logs' && o.fromNode > 0));
    expect(op).toMatchObject({ nodeId, hostname: 'ops-node', actor: expect.stringMatching(/\(uid \d+\)$/), target: null, toNode: 0 });
    const human = await cli(['server', 'ops', 'list', '--data-dir', server.dataDir]);
    expect(human.stdout).toMatch(/^ID\s+OP\s+NODE\s+OPERATOR/);
    expect(human.stdout).toMatch(new RegExp(`^${op.id}\\s+logs\\s+ops-node`, 'm'));

    const ended = await cli(['server', 'ops', 'end', String(op.id), '--data-dir', server.dataDir, '--json'], { USER: 'erin' });
    expect(ended.code, ended.stderr).toBe(0);
    expect(JSON.parse(ended.stdout)).toMatchObject({ id: op.id, op: 'logs' });
    expect(await follower.exited).toBe(8);
    expect(follower.output()).toContain('ML_ERR_OPS_ENDED');
    expect(await opsList()).toEqual([]);

    const audit = await new AdminClient(join(server.dataDir, 'admin.sock')).call(api.listAudit, { limit: 10 });
    const record = audit.find((a) => a.id === op.id)!;
    expect(record).toMatchObject({ operation: 'logs', result: 'ended', details: expect.objectContaining({ endedBy: expect.stringMatching(/\(uid \d+\)$/) }) });
    expect(audit.find((a) => a.operation === 'ops/operations/end')).toMatchObject({ nodeId, result: 'ok', target: expect.stringContaining(`operation ${op.id} (logs`) });
  });

  it('ending an id that runs nothing is exit 3; a malformed id a usage error', async () => {
    const none = await cli(['server', 'ops', 'end', '999999', '--data-dir', server.dataDir]);
    expect([none.code, none.stderr]).toEqual([3, expect.stringContaining('ML_ERR_OPS_OPERATION_NOT_FOUND')]);
    expect((await cli(['server', 'ops', 'end', 'x', '--data-dir', server.dataDir])).code).toBe(2);
  });

  it('ops.builtin runs ping and diagnostics on the agent and answers JSON, audited with the operator', async () => {
    const client = new AdminClient(join(server.dataDir, 'admin.sock'), { actor: 'frank(uid 7)' });
    const ping = await client.call(api.runBuiltin, { node: 'ops-node', action: 'ping' });
    expect(ping).toMatchObject({ nodeId, action: 'ping', exitCode: 0, output: 'pong\n', truncated: false });
    expect(ping.roundTripMs).toBeGreaterThanOrEqual(0);
    const diag = await client.call(api.runBuiltin, { node: nodeId, action: 'diagnostics' });
    expect(JSON.parse(diag.output)).toMatchObject({ connection: { state: expect.any(String) }, pid: expect.any(Number) });
    const audit = await client.call(api.listAudit, { limit: 10 });
    expect(audit.find((a) => a.source === 'admin' && a.operation === 'ops/builtin')).toMatchObject({ actor: 'frank(uid 7)', nodeId, target: 'diagnostics', result: 'ok' });
    await expect(client.call(api.runBuiltin, { node: 'ops-node', action: 'reconcile' as never })).rejects.toMatchObject({ code: 'ML_ERR_USAGE' });
  });
});
