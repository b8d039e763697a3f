import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, enrollAgent, freePort, spawnCli, startServerProc, tempDir, type Proc, type ServerProc } from './harness.js';

/** `agent run --config FILE`: options from a JSON file, held to the flags' parsers; flags win. Real processes. */
describe('the agent config file (real processes)', () => {
  let srvDir: { path: string; cleanup(): Promise<void> };
  let stateDir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc;
  let nodeId: string;
  let agent: Proc | undefined;

  beforeAll(async () => {
    srvDir = await tempDir('ml-config-srv-');
    stateDir = await tempDir('ml-config-agent-');
    server = await startServerProc(srvDir.path, await freePort());
    ({ nodeId } = await enrollAgent(server, stateDir.path, 'configured-host'));
  }, 60_000);
  afterAll(async () => {
    await agent?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    await srvDir?.cleanup();
    await stateDir?.cleanup();
  });

  it('takes options from the file (exec allowed), and a flag on the command line wins (log level)', async () => {
    const file = join(stateDir.path, 'agent.json');
    await writeFile(file, JSON.stringify({ allowExec: true, logLevel: 'debug', maxActions: 2 }));
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir.path, '--config', file, '--log-level', 'info']);
    await agent.waitForLog('connected');
    const r = await cli(['server', 'exec', '--data-dir', server.dataDir, nodeId, '--', 'echo', 'from-config']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('from-config\n');
    expect(agent.output()).not.toMatch(/"level":20/);
  }, 60_000);

  it.each([
    ['an unknown option', { allowExecs: true }, /unknown option "allowExecs"/],
    ['a switch that is not a boolean', { allowExec: 'yes' }, /allowExec must be true or false/],
    ['a value outside the choices', { logLevel: 'loud' }, /logLevel must be one of/],
    ['a list for a single value', { proxy: ['http://a:1', 'http://b:2'] }, /proxy takes one value, not a list/],
    ['a value the flag parser refuses', { wgPort: 'x'.repeat(3) }, /invalid mesh option wgPort/],
  ])('refuses %s with exit 2, naming it', async (_name, content, message) => {
    const file = join(stateDir.path, 'bad.json');
    await writeFile(file, JSON.stringify(content));
    const r = await cli(['agent', 'run', '--state-dir', stateDir.path, '--config', file]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^error ML_ERR_CONFIG: /m);
    expect(r.stderr).toMatch(message);
  });

  it('refuses a named file that does not exist, or is not one JSON object', async () => {
    const missing = await cli(['agent', 'run', '--state-dir', stateDir.path, '--config', join(stateDir.path, 'nope.json')]);
    expect([missing.code, missing.stderr]).toEqual([2, expect.stringMatching(/config file .*nope\.json does not exist/)]);
    const file = join(stateDir.path, 'list.json');
    await writeFile(file, '[1,2]');
    const list = await cli(['agent', 'run', '--state-dir', stateDir.path, '--config', file]);
    expect([list.code, list.stderr]).toEqual([2, expect.stringMatching(/must hold one JSON object/)]);
  });
});
