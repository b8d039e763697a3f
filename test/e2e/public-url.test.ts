import { connect, type PeerCertificate } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, freePort, startServerProc, tempDir, type ServerProc } from './harness.js';

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
    expect(await tokenCommand()).toMatch(/^meshlink agent enroll --server https:\/\/mesh\.example\.test --token /);
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
