import { createPrivateKey, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateCa } from '../../src/server/ca.js';
import { openServerStore } from '../../src/server/features.js';
import { openKeyFile } from '../../src/server/key-file.js';
import { createLogger } from '../../src/util/logger.js';
import { cli, enrollAgent, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from './harness.js';

/**
 * Issue 17 item 16 end to end, real processes of the real CLI: a live server is backed up while an
 * agent is connected, the backup is restored into another data dir and started there with the key
 * file, and the agent reconnects to it on the same certificate; the backup alone opens nothing.
 */
describe('server backup and restore (real processes, real TLS, real SQLite)', () => {
  let root: { path: string; cleanup(): Promise<void> };
  let stateDir: { path: string; cleanup(): Promise<void> };
  let server: ServerProc | undefined;
  let restored: ServerProc | undefined;
  let agent: Proc | undefined;
  let port: number;
  let nodeId: string;
  let dataA: string;
  let keyA: string;
  let backup: string;

  beforeAll(async () => {
    root = await tempDir('ml-e2e-backup-');
    stateDir = await tempDir('ml-e2e-backup-agent-');
    dataA = join(root.path, 'a', 'server');
    keyA = join(root.path, 'a', 'server.key');
    backup = join(root.path, 'backups', 'store.db');
    port = await freePort();
    server = await startServerProc(dataA, port);
    ({ nodeId } = await enrollAgent(server, stateDir.path, 'backup-host'));
    agent = spawnCli(['agent', 'run', '--state-dir', stateDir.path, '--log-level', 'debug']);
    await waitFor('node online', async () => (await listNodes(dataA)).find((n) => n.id === nodeId && n.online));
  });

  afterAll(async () => {
    await agent?.stop('SIGKILL');
    await server?.stop('SIGKILL');
    await restored?.stop('SIGKILL');
    await root?.cleanup();
    await stateDir?.cleanup();
  });

  it('backs up the live server (online, through its admin socket) to any path, mode 0600; restore refuses while it runs', async () => {
    // A target directory that does not exist is an error (exit 1), not created behind the operator's back.
    const missing = await cli(['server', 'backup', backup, '--data-dir', dataA]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error ML_ERR_BACKUP: /m);
    // Nor into the data dir, where it could replace the live store.
    const inside = await cli(['server', 'backup', join(dataA, 'meshlink.db'), '--data-dir', dataA]);
    expect(inside.code).toBe(1);
    expect(inside.stderr).toMatch(/^error ML_ERR_BACKUP: .*inside the data dir/m);
    mkdirSync(join(root.path, 'backups'), { mode: 0o700 });
    const r = await cli(['server', 'backup', backup, '--data-dir', dataA, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ path: backup, bytes: expect.any(Number) });
    expect(statSync(backup).mode & 0o777).toBe(0o600);
    // Online: the running server wrote it (its log says so), the agent stayed connected.
    await server!.waitForLog('store backed up');
    expect((await listNodes(dataA)).find((n) => n.id === nodeId)?.online).toBe(true);

    const refused = await cli(['server', 'restore', backup, '--data-dir', dataA]);
    expect(refused.code).toBe(6);
    expect(refused.stderr).toMatch(/^error ML_ERR_SERVER_RUNNING: /m);
  });

  it('the backup alone reveals neither the CA key nor opens without the key file', async () => {
    // The CA key as the server holds it (opened with the real key file, in this process).
    const store = await openServerStore(join(dataA, 'meshlink.db'));
    let caPkcs8: Buffer;
    try {
      const { secret } = await openKeyFile({ dataDir: dataA, keyFile: null, passphrase: '', mayCreate: false, logger: createLogger({ name: 't', level: 'silent' }) });
      caPkcs8 = (await loadOrCreateCa(store, { keyType: 'rsa2048', secret })).ca.exportKeyPkcs8Der();
    } finally {
      await store.close();
    }
    const caPem = createPrivateKey({ key: caPkcs8, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;
    const bytes = readFileSync(backup);
    expect(bytes.length).toBeGreaterThan(4096);
    expect(bytes.includes(caPkcs8)).toBe(false);
    expect(bytes.includes(Buffer.from('PRIVATE KEY'))).toBe(false);
    for (const line of caPem.split('\n').filter((l) => l.length >= 40)) expect(bytes.includes(Buffer.from(line))).toBe(false);

    // Restored elsewhere and started without the key file: refused (exit 4), and no key is made for it.
    const stray = join(root.path, 'stray', 'server');
    expect((await cli(['server', 'restore', backup, '--data-dir', stray])).code).toBe(0);
    const noKey = await cli(['server', 'start', '--data-dir', stray, '--listen', '127.0.0.1:0']);
    expect(noKey.code).toBe(4);
    expect(noKey.stderr).toMatch(/^error ML_ERR_KEY_FILE: /m);
    expect(existsSync(join(root.path, 'stray', 'server.key'))).toBe(false);
    // With some other key file: the secrets do not decrypt (exit 4).
    const other = join(root.path, 'other.key');
    writeFileSync(other, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const wrong = await cli(['server', 'start', '--data-dir', stray, '--listen', '127.0.0.1:0', '--key-file', other]);
    expect(wrong.code).toBe(4);
    expect(wrong.stderr).toMatch(/^error ML_ERR_CA_PASSPHRASE: /m);
  });

  it('restored at another path and started with the key file, it has the same CA and mesh secrets, and the agent reconnects', async () => {
    const pin = server!.caPin;
    expect(await server!.stop('SIGTERM')).toBe(0);
    server = undefined;

    const dataB = join(root.path, 'b', 'elsewhere');
    const r = await cli(['server', 'restore', backup, '--data-dir', dataB, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ path: join(dataB, 'meshlink.db') });
    expect(statSync(join(dataB, 'meshlink.db')).mode & 0o777).toBe(0o600);
    // A file that is not a store is refused, and the restored store stays.
    const junk = join(root.path, 'junk.db');
    writeFileSync(junk, 'not a database at all');
    const bad = await cli(['server', 'restore', junk, '--data-dir', dataB]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^error ML_ERR_BACKUP: /m);

    // Same port, so the agent (which knows the old URL) finds it; the mesh opens its sealed keys at start.
    restored = await startServerProc(dataB, port, ['--key-file', keyA]);
    expect(restored.caPin).toBe(pin);
    const back = await waitFor('agent back online on the restored server', async () => (await listNodes(dataB)).find((n) => n.id === nodeId && n.online), 60_000);
    expect(back).toMatchObject({ id: nodeId, hostname: 'backup-host', online: true });
    const listed = await cli(['server', 'nodes', 'list', '--data-dir', dataB, '--json']);
    const row = (JSON.parse(listed.stdout) as Array<{ id: string; meshIp: string | null }>).find((n) => n.id === nodeId);
    expect(row?.meshIp).toMatch(/^10\.100\./);
  });
});
