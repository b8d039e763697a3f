import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cli, freePort, spawnCli, tempDir, type Proc } from './harness.js';

/**
 * `server start --config FILE` (and MESHLINK_SERVER_CONFIG): the options of server start as one JSON
 * object, held to the flags' parsers and the server config schema; flags win; a relative dataDir is
 * resolved against the file's directory. Real server processes.
 */
describe('the server config file (real processes)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: Proc | undefined;

  beforeAll(async () => {
    dir = await tempDir('ml-server-config-');
  });
  afterEach(async () => {
    await server?.stop('SIGKILL');
    server = undefined;
  });
  afterAll(async () => {
    await dir?.cleanup();
  });

  it('takes options from the file, a relative dataDir from the file’s directory, and a flag on the command line wins', async () => {
    const confDir = join(dir.path, 'etc');
    await mkdir(confDir);
    const file = join(confDir, 'server.json');
    const filePort = await freePort();
    const flagPort = await freePort();
    await writeFile(file, JSON.stringify({ dataDir: 'data', listen: `127.0.0.1:${filePort}`, caKey: 'rsa2048', san: ['alt.example.test'], heartbeatInterval: '5s', offlineAfter: '20s', relayListen: '127.0.0.1:40000-41999', relayPublicHost: 'relay.example.test', relayBandwidth: '10mbit', relayIdleTimeout: '60s' }));
    // Started from another working directory: the relative dataDir must not depend on it.
    server = spawnCli(['server', 'start', '--config', file, '--listen', `127.0.0.1:${flagPort}`]);
    const ready = await server.waitForLog('server ready', 60_000);
    expect(ready.address).toBe(`127.0.0.1:${flagPort}`);
    expect(ready.adminSocket).toBe(join(confDir, 'data', 'admin.sock'));
    // The relay's keys as flags would give them: where it binds, what agents are told.
    expect(ready.relay).toEqual({ publicHost: 'relay.example.test', bind: '127.0.0.1:40000-41999' });
    expect(existsSync(join(confDir, 'data', 'meshlink.db'))).toBe(true);
    const status = await cli(['server', 'status', '--json', '--data-dir', join(confDir, 'data')]);
    expect(JSON.parse(status.stdout)).toMatchObject({ sans: ['alt.example.test'], running: { listen: `127.0.0.1:${flagPort}` } });
  }, 90_000);

  it('reads MESHLINK_SERVER_CONFIG when --config is not given', async () => {
    const file = join(dir.path, 'from-env.json');
    const port = await freePort();
    await writeFile(file, JSON.stringify({ dataDir: join(dir.path, 'env-data'), listen: `127.0.0.1:${port}`, caKey: 'rsa2048' }));
    server = spawnCli(['server', 'start'], { MESHLINK_SERVER_CONFIG: file });
    const ready = await server.waitForLog('server ready', 60_000);
    expect(ready.address).toBe(`127.0.0.1:${port}`);
    expect(ready.adminSocket).toBe(join(dir.path, 'env-data', 'admin.sock'));
  }, 90_000);

  it.each([
    ['an unknown key', { dataDirectory: '/x' }, /unknown option "dataDirectory"/],
    ['a boolean for an option that takes a value', { listen: true }, /listen must be a string/],
    ['a value outside the choices', { caKey: 'dsa' }, /caKey must be one of rsa2048, rsa4096/],
    ['a list for a single value', { publicUrl: ['https://a.example', 'https://b.example'] }, /publicUrl takes one value, not a list/],
    ['a bad duration', { certLifetime: 'soon' }, /--cert-lifetime \(certLifetime\): invalid duration "soon"/],
    ['a value the config schema refuses', { heartbeatInterval: '1m', offlineAfter: '30s' }, /invalid server config: offlineAfterMs/],
  ])('refuses %s with exit 2, naming it, before touching the data dir', async (_name, content, message) => {
    const file = join(dir.path, 'bad.json');
    const dataDir = join(dir.path, 'never-created');
    await writeFile(file, JSON.stringify({ dataDir, ...content }));
    const r = await cli(['server', 'start', '--config', file]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^error ML_ERR_(CONFIG|DURATION): /m);
    expect(r.stderr).toMatch(message);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('refuses a named file that does not exist, or that is not one JSON object', async () => {
    const missing = await cli(['server', 'start', '--config', join(dir.path, 'nope.json')]);
    expect([missing.code, missing.stderr]).toEqual([2, expect.stringMatching(/config file .*nope\.json does not exist/)]);
    const viaEnv = await cli(['server', 'start'], { MESHLINK_SERVER_CONFIG: join(dir.path, 'nope-env.json') });
    expect([viaEnv.code, viaEnv.stderr]).toEqual([2, expect.stringMatching(/config file .*nope-env\.json does not exist/)]);
    const file = join(dir.path, 'list.json');
    await writeFile(file, '["listen"]');
    const list = await cli(['server', 'start', '--config', file]);
    expect([list.code, list.stderr]).toEqual([2, expect.stringMatching(/must hold one JSON object/)]);
  });
});
