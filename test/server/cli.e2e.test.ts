import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateCa } from '../../src/server/ca.js';
import { openKeyFile } from '../../src/server/key-file.js';
import { createLogger } from '../../src/util/logger.js';
import { spkiPinOf } from '../../src/contract/ca-pin.js';
import { openServerStore } from '../../src/server/features.js';
import { attachSession } from '../../src/net/ws-session.js';
import { dialConnect, httpsRequest, makeCsr, tempDir } from './helpers.js';

const CLI = resolve('dist/src/cli/main.js');
const run = promisify(execFile);
const PASSPHRASE = 'e2e passphrase';

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}
async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** Body lines of a PEM (what a leak would contain). */
const pemLines = (pem: string) => pem.split('\n').filter((l) => l.length >= 40 && !l.startsWith('-----'));

describe('CLI end to end: `meshlink server` as child processes', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let child: ChildProcess;
  let stdout = '';
  let ready: { publicUrl: string; caPin: string; address: string };
  let exited: Promise<number | null>;

  beforeAll(async () => {
    dir = await tempDir('ml-cli-');
    child = spawn(process.execPath, [CLI, 'server', 'start', '--data-dir', dir.path, '--listen', '127.0.0.1:0', '--ca-key', 'rsa2048', '--log-level', 'debug'], {
      env: { ...process.env, MESHLINK_CA_PASSPHRASE: PASSPHRASE },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    exited = new Promise((r) => child.once('exit', (code) => r(code)));
    ready = await new Promise((resolveReady, reject) => {
      const timer = setTimeout(() => reject(new Error(`server not ready; stdout: ${stdout}`)), 30_000);
      child.stdout!.on('data', (chunk: Buffer) => {
        stdout += chunk.toString('utf8');
        for (const line of stdout.split('\n')) {
          if (!line.includes('"server ready"')) continue;
          clearTimeout(timer);
          resolveReady(JSON.parse(line));
        }
      });
      child.stderr!.on('data', (c: Buffer) => process.stderr.write(c));
      child.once('exit', (code) => reject(new Error(`server exited early with ${code}: ${stdout}`)));
    });
  });

  afterAll(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await dir.cleanup();
  });

  it('start → token create --json → enroll → nodes list --json (online) → nodes remove closes the socket → stop', async () => {
    expect(ready.caPin).toMatch(/^sha256:[0-9a-f]{64}$/);
    const port = Number(ready.address.split(':').pop());
    expect(ready.publicUrl).toBe(`https://127.0.0.1:${port}`);

    const created = await cli(['server', 'token', 'create', '--data-dir', dir.path, '--ttl', '10m', '--json']);
    expect(created.code).toBe(0);
    const tok = JSON.parse(created.stdout) as { token: string; expiresAt: string; caPin: string; enrollCommand: string };
    expect(Object.keys(tok).sort()).toEqual(['caPin', 'enrollCommand', 'expiresAt', 'token']);
    expect(tok.caPin).toBe(ready.caPin);
    // The token in the environment, not in argv (ps shows argv to every user).
    expect(tok.enrollCommand).toBe(`MESHLINK_ENROLL_TOKEN=${tok.token} meshlink agent enroll --server ${ready.publicUrl} --ca-pin ${ready.caPin}`);
    const ttl = Date.parse(tok.expiresAt) - Date.now();
    expect(ttl).toBeGreaterThan(9 * 60_000);
    expect(ttl).toBeLessThanOrEqual(10 * 60_000);

    const human = await cli(['server', 'token', 'create', '--data-dir', dir.path]);
    expect(human.stdout).toMatch(/^MESHLINK_ENROLL_TOKEN=[A-Za-z0-9_-]{22} meshlink agent enroll --server https:\/\/127\.0\.0\.1:\d+ --ca-pin sha256:[0-9a-f]{64}\n$/);

    // Like an agent: fetch the CA without trusting anything yet, then check it against the pin.
    const caPem = await new Promise<string>((res, rej) => {
      import('node:https').then(({ get }) =>
        get(`${ready.publicUrl}/v1/ca`, { rejectUnauthorized: false }, (r) => {
          let b = '';
          r.on('data', (c: Buffer) => (b += c.toString()));
          r.on('end', () => res(b));
        }).on('error', rej),
      ).catch(rej);
    });
    expect(spkiPinOf(caPem)).toBe(tok.caPin);
    const { csrPem, keyPem } = await makeCsr('cli-node');
    const enrolled = await httpsRequest(`${ready.publicUrl}/v1/enroll`, { ca: caPem, body: { token: tok.token, csr: csrPem, agentVersion: '9.9.9' } });
    expect(enrolled.status).toBe(200);
    const node = enrolled.json<{ nodeId: string; certificate: string; notAfter: string }>();
    // A used token with another CSR is refused; with the same CSR (a retry whose answer was lost) it
    // gets the same certificate again, for the same node (docs/AGENT.md, "Enrollment").
    const other = await makeCsr('cli-node');
    const reuse = await httpsRequest(`${ready.publicUrl}/v1/enroll`, { ca: caPem, body: { token: tok.token, csr: other.csrPem } });
    expect(reuse.status).toBe(401);
    const retry = await httpsRequest(`${ready.publicUrl}/v1/enroll`, { ca: caPem, body: { token: tok.token, csr: csrPem } });
    expect(retry.status).toBe(200);
    expect(retry.json<{ nodeId: string; certificate: string }>()).toMatchObject({ nodeId: node.nodeId, certificate: node.certificate });

    const ws = await dialConnect(ready.publicUrl, { ca: caPem, cert: node.certificate, key: keyPem });
    expect(ws.kind).toBe('open');
    if (ws.kind !== 'open') return;
    const closed = new Promise<number>((r) => ws.ws.once('close', (code) => r(code)));
    // Online means an open protocol session (Presence), not an upgraded socket: say hello.
    const session = attachSession(ws.ws, { role: 'agent' });
    await session.handshake({ agentVersion: '9.9.9', hostname: 'cli-node' });

    const listed = await cli(['server', 'nodes', 'list', '--data-dir', dir.path, '--json']);
    expect(listed.code).toBe(0);
    const nodes = JSON.parse(listed.stdout) as Record<string, unknown>[];
    expect(nodes).toHaveLength(1);
    expect(Object.keys(nodes[0]!).sort()).toEqual(['agentVersion', 'certNotAfter', 'certSerial', 'endpoints', 'hostname', 'id', 'lastSeen', 'meshIp', 'observedAddress', 'online', 'tags', 'wgPublicKey']);
    expect(nodes[0]).toMatchObject({ id: node.nodeId, hostname: 'cli-node', online: true, agentVersion: '9.9.9', certNotAfter: node.notAfter });
    expect(typeof nodes[0]!.lastSeen).toBe('string');

    const missing = await cli(['server', 'nodes', 'remove', 'no-such-node', '--data-dir', dir.path]);
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/^error ML_ERR_NODE_NOT_FOUND: /);

    const removed = await cli(['server', 'nodes', 'remove', 'cli-node', '--data-dir', dir.path]);
    expect(removed.code).toBe(0);
    expect(removed.stdout).toContain(node.nodeId);
    expect(await closed).toBe(4401);
    const after = await cli(['server', 'nodes', 'list', '--data-dir', dir.path, '--json']);
    expect(JSON.parse(after.stdout)).toEqual([]);

    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(stdout).toContain('"server stopped"');

    // Secrets never reach the log: tokens, the CSR, the agent key, the CA key (decrypted here to compare).
    const store = await openServerStore(`${dir.path}/meshlink.db`);
    const { secret } = await openKeyFile({ dataDir: dir.path, keyFile: null, passphrase: PASSPHRASE, mayCreate: false, logger: createLogger({ name: 'test', level: 'silent' }) });
    const { ca: loaded } = await loadOrCreateCa(store, { keyType: 'rsa2048', secret });
    await store.close();
    const caKeyPem = (await import('node:crypto')).createPrivateKey({ key: loaded.exportKeyPkcs8Der(), format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;
    const humanToken = /MESHLINK_ENROLL_TOKEN=(\S+)/.exec(human.stdout)![1]!;
    expect(stdout.length).toBeGreaterThan(500);
    for (const secret of [tok.token, humanToken, PASSPHRASE, ...pemLines(csrPem), ...pemLines(keyPem), ...pemLines(caKeyPem)]) {
      expect(stdout.includes(secret), `log contains a secret: ${secret.slice(0, 12)}…`).toBe(false);
    }
  });

  it('with the server stopped, the CLI works on the store directly; a wrong passphrase exits 4', async () => {
    await exited;
    const created = await cli(['server', 'token', 'create', '--data-dir', dir.path, '--json']);
    expect(created.code).toBe(0);
    expect(JSON.parse(created.stdout)).toMatchObject({ caPin: ready.caPin });
    const listed = await cli(['server', 'nodes', 'list', '--data-dir', dir.path, '--json']);
    expect(JSON.parse(listed.stdout)).toEqual([]);
    // The offline path runs the same routes, audit included: the token just created is on record.
    const audit = await cli(['server', 'audit', '--json', '--limit', '5', '--data-dir', dir.path]);
    expect(audit.code, audit.stderr).toBe(0);
    expect((JSON.parse(audit.stdout) as Array<{ operation: string; source: string; result: string }>)[0]).toMatchObject({ source: 'admin', operation: 'tokens', result: 'ok' });
    // What needs the server's agents says so, with the exit number of "no server".
    const rotate = await cli(['server', 'mesh', 'rotate-signing-key', '--data-dir', dir.path]);
    expect(rotate.code).toBe(11);
    expect(rotate.stderr).toMatch(/^error ML_ERR_SERVER_NOT_RUNNING: mesh.signing-key.rotate needs a running server/m);

    const wrong = await cli(['server', 'start', '--data-dir', dir.path, '--listen', '127.0.0.1:0'], { MESHLINK_CA_PASSPHRASE: 'not it' });
    expect(wrong.code).toBe(4);
    expect(wrong.stderr).toMatch(/^error ML_ERR_CA_PASSPHRASE: /m);

    const fresh = await tempDir('ml-cli-empty-');
    try {
      const none = await cli(['server', 'token', 'create', '--data-dir', fresh.path]);
      expect(none.code).toBe(5);
      expect(none.stderr).toMatch(/ML_ERR_NOT_INITIALIZED/);
    } finally {
      await fresh.cleanup();
    }
    const usage = await cli(['server', 'token', 'create', '--data-dir', dir.path, '--ttl', '1 week']);
    expect(usage.code).toBe(2);
  });
});
