import { afterAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/admin-api/client.js';
import { removeNode } from '../../src/admin-api/routes.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { parseServerConfig } from '../../src/server/config.js';
import { startServer } from '../../src/server/server.js';
import { createLogger } from '../../src/util/logger.js';
import { dialConnect, enrollNode, httpsRequest, makeCsr, startTestServer, tempDir } from './helpers.js';

describe('restart on the same data dir', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it('keeps the CA (same pin), nodes, consumed tokens and revocations; old certs still connect', async () => {
    const dir = await tempDir();
    cleanups.push(dir.cleanup);
    const first = await startTestServer({}, { dataDir: dir.path, passphrase: 'correct horse' });
    const pin = first.server.caPin;
    const { statSync } = await import('node:fs');
    expect(statSync(first.server.adminSocketPath).mode & 0o777).toBe(0o600);
    expect(statSync(dir.path).mode & 0o777).toBe(0o700);
    const kept = await enrollNode(first, 'keeper');
    const gone = await enrollNode(first, 'gone');
    await new AdminClient(first.server.adminSocketPath).call(removeNode, { node: gone.nodeId });
    const used = (await createEnrollmentToken(first.server.store, { ttlMs: 60_000 })).token;
    expect((await httpsRequest(`${first.url}/v1/enroll`, { ca: first.server.caCertPem, body: { token: used, csr: (await makeCsr('u')).csrPem } })).status).toBe(200);
    const unused = (await createEnrollmentToken(first.server.store, { ttlMs: 60_000 })).token;
    await first.server.close();

    const second = await startTestServer({}, { dataDir: dir.path, passphrase: 'correct horse' });
    try {
      expect(second.server.caPin).toBe(pin);
      expect((await second.server.store.listLiveNodes()).map((n) => n.hostname).sort()).toEqual(['keeper', 'u']);
      const reuse = await httpsRequest(`${second.url}/v1/enroll`, { ca: second.server.caCertPem, body: { token: used, csr: (await makeCsr('v')).csrPem } });
      expect(reuse.status).toBe(401);
      const fresh = await httpsRequest(`${second.url}/v1/enroll`, { ca: second.server.caCertPem, body: { token: unused, csr: (await makeCsr('w')).csrPem } });
      expect(fresh.status).toBe(200);
      const ok = await dialConnect(second.url, { ca: kept.caPem, cert: kept.certPem, key: kept.keyPem });
      expect(ok.kind).toBe('open');
      if (ok.kind === 'open') ok.ws.terminate();
      const revoked = await dialConnect(second.url, { ca: gone.caPem, cert: gone.certPem, key: gone.keyPem });
      expect(revoked).toMatchObject({ kind: 'refused', status: 403 });
    } finally {
      await second.server.close();
    }
  });

  it('a wrong MESHLINK_CA_PASSPHRASE is refused with ML_ERR_CA_PASSPHRASE and the CA is not replaced', async () => {
    const dir = await tempDir();
    cleanups.push(dir.cleanup);
    const first = await startTestServer({}, { dataDir: dir.path, passphrase: 'right' });
    const pin = first.server.caPin;
    await first.server.close();

    const config = parseServerConfig({ dataDir: dir.path, listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048' });
    const logger = createLogger({ name: 't', level: 'silent' });
    await expect(startServer(config, { logger, passphrase: 'wrong' })).rejects.toMatchObject({ code: 'ML_ERR_CA_PASSPHRASE' });
    // no passphrase at all is also wrong for a CA stored with one (env var path)
    const saved = process.env.MESHLINK_CA_PASSPHRASE;
    delete process.env.MESHLINK_CA_PASSPHRASE;
    await expect(startServer(config, { logger })).rejects.toMatchObject({ code: 'ML_ERR_CA_PASSPHRASE' });
    process.env.MESHLINK_CA_PASSPHRASE = 'right';
    try {
      const again = await startServer(config, { logger });
      expect(again.caPin).toBe(pin);
      await again.close();
    } finally {
      if (saved === undefined) delete process.env.MESHLINK_CA_PASSPHRASE;
      else process.env.MESHLINK_CA_PASSPHRASE = saved;
    }
  });

  it('a second server on a running data dir is refused with ML_ERR_SERVER_RUNNING', async () => {
    const ts = await startTestServer();
    cleanups.push(ts.stop);
    const config = parseServerConfig({ dataDir: ts.dataDir, listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048' });
    await expect(startServer(config, { logger: createLogger({ name: 't', level: 'silent' }) })).rejects.toMatchObject({ code: 'ML_ERR_SERVER_RUNNING' });
  });
});
