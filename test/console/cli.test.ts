import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, freePort, startServerProc, tempDir, type ServerProc } from '../e2e/harness.js';

/** `meshlink server console login` and the console flags through the real CLI: their exit codes. */
describe('server console login (real processes)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc | undefined;

  beforeAll(async () => {
    dir = await tempDir('ml-console-cli-');
  });
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await dir?.cleanup();
  });

  it('a server without --console-listen refuses it: ML_ERR_CONSOLE_OFF, exit 2', async () => {
    server = await startServerProc(dir.path, await freePort());
    const r = await cli(['server', 'console', 'login', '--data-dir', dir.path]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('ML_ERR_CONSOLE_OFF');
  }, 60_000);

  it('with no server running: exit 11, nothing on stdout', async () => {
    await server!.stop();
    server = undefined;
    const r = await cli(['server', 'console', 'login', '--data-dir', dir.path, '--json']);
    expect(r.code, r.stderr).toBe(11);
    expect(r.stdout).toBe('');
  });

  it('a --console-origin that is not an http(s) origin is refused: exit 2', async () => {
    const r = await cli(['server', 'start', '--data-dir', dir.path, '--console-listen', '127.0.0.1:0', '--console-origin', 'ftp://x']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/ML_ERR_CONFIG: .*consoleOrigin/);
  });
});
