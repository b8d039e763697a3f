import { connect, type PeerCertificate } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, enrollAgent, freePort, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from './harness.js';

/** The names the server certificate carries, as a TLS client sees them. */
function certificateNames(port: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const cert: PeerCertificate = socket.getPeerCertificate();
      socket.destroy();
      resolve((cert.subjectaltname ?? '').split(', ').map((n) => n.replace(/^(DNS|IP Address):/, '')));
    });
    socket.on('error', reject);
  });
}

/**
 * `server start --public-url` behind NAT or a port mapping: enrollment commands name the public URL,
 * its host is in the server certificate, and both it and `--san` survive a restart without the flags.
 */
describe('server start --public-url and --san (real processes)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc | undefined;
  let port: number;

  beforeAll(async () => {
    dir = await tempDir('ml-public-url-');
    port = await freePort();
  });
  afterAll(async () => {
    await server?.stop('SIGKILL');
    await dir?.cleanup();
  });

  const tokenCommand = async (): Promise<string> => {
    const r = await cli(['server', 'token', 'create', '--json', '--data-dir', dir.path]);
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as { enrollCommand: string }).enrollCommand;
  };

  it('names the public URL in enrollment commands and status, and puts its host in the certificate', async () => {
    server = await startServerProc(dir.path, port, ['--public-url', 'https://mesh.example.test:443', '--san', 'alt.example.test']);
    expect(server.url).toBe('https://mesh.example.test');
    expect(await tokenCommand()).toMatch(/^MESHLINK_ENROLL_TOKEN=\S+ meshlink agent enroll --server https:\/\/mesh\.example\.test --ca-pin /);
    const status = await cli(['server', 'status', '--json', '--data-dir', dir.path]);
    expect(JSON.parse(status.stdout)).toMatchObject({ publicUrl: 'https://mesh.example.test', publicUrlSource: 'configured', sans: ['alt.example.test'], running: { pid: expect.any(Number), listen: `127.0.0.1:${port}` } });
    expect(await certificateNames(port)).toEqual(expect.arrayContaining(['mesh.example.test', 'alt.example.test']));
  }, 90_000);

  it('keeps both across a restart without the flags, and with the server stopped', async () => {
    await server!.stop('SIGTERM');
    const stopped = await cli(['server', 'status', '--json', '--data-dir', dir.path]);
    expect(JSON.parse(stopped.stdout)).toMatchObject({ publicUrl: 'https://mesh.example.test', running: null, nodes: 0 });
    expect(await tokenCommand()).toContain('--server https://mesh.example.test ');
    server = await startServerProc(dir.path, port);
    expect(server.url).toBe('https://mesh.example.test');
    expect(await certificateNames(port)).toEqual(expect.arrayContaining(['mesh.example.test', 'alt.example.test']));
    const human = await cli(['server', 'status', '--data-dir', dir.path]);
    expect(human.stdout).toMatch(/^public URL {3}https:\/\/mesh\.example\.test \(configured\)$/m);
  }, 90_000);

  it('refuses a public URL that is not https://host[:port]', async () => {
    for (const bad of ['http://mesh.example.test', 'https://mesh.example.test/path', 'https://user:pw@mesh.example.test', 'mesh.example.test']) {
      const r = await cli(['server', 'start', '--data-dir', dir.path, '--listen', '127.0.0.1:0', '--public-url', bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stderr).toMatch(/^error ML_ERR_CONFIG: invalid server config: publicUrl: an https URL/m);
    }
  }, 60_000);
});

/** A server that moves announces its configured public URL in `welcome`; agents follow once they reach it. */
describe('agents follow a changed --public-url (real processes)', () => {
  let srvDir: { path: string; cleanup(): Promise<void> };
  let stateDir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc | undefined;
  let agent: Proc | undefined;
  let port: number;

  beforeAll(async () => {
    srvDir = await tempDir('ml-public-url-move-');
    stateDir = await tempDir('ml-public-url-agent-');
    port = await freePort();
  });
  afterAll(async () => {
    await agent?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    await srvDir?.cleanup();
    await stateDir?.cleanup();
  });

  const storedServer = async (): Promise<string> => {
    const r = await cli(['agent', 'status', '--json', '--state-dir', stateDir.path]);
    return (JSON.parse(r.stdout) as { server: string }).server;
  };

  it('stays at its URL when the announced one cannot be reached with its CA, and moves when it can', async () => {
    server = await startServerProc(srvDir.path, port);
    await enrollAgent(server, stateDir.path, 'moving-host');
    const enrolledAt = await storedServer();
    expect(enrolledAt).toBe(`https://127.0.0.1:${port}`);
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir.path]);
    await agent.waitForLog('connected');

    // A public URL nothing answers at: the agent keeps its enrolled URL.
    await server.stop('SIGTERM');
    server = await startServerProc(srvDir.path, port, ['--public-url', 'https://meshlink-moved.invalid']);
    await waitFor('warned about the unreachable URL', async () => agent!.output().includes('cannot reach with its CA'), 60_000);
    expect(await storedServer()).toBe(enrolledAt);

    // The same server under a name its certificate carries: the agent moves and reconnects there.
    await server.stop('SIGTERM');
    server = await startServerProc(srvDir.path, port, ['--public-url', `https://localhost:${port}`]);
    await waitFor('moved to the new URL', async () => (await storedServer()) === `https://localhost:${port}`, 60_000);
    expect(agent.output()).toContain('the server moved to a new public URL');
    // Its next connection goes to the new URL: make one and see it connect.
    await server.stop('SIGTERM');
    const before = agent.output().split('"msg":"connected"').length;
    server = await startServerProc(srvDir.path, port);
    await waitFor('connected again', async () => agent!.output().split('"msg":"connected"').length > before, 60_000);
  }, 180_000);
});
