import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enroll } from '../../src/agent/enroll.js';
import { createEnrollmentToken } from '../../src/server/nodes.js';
import { normalizeSerial } from '../../src/server/x509.js';
import { TcpProxy } from '../faults/tcp-proxy.js';
import { startTestServer, tempDir, type TestServer } from '../server/helpers.js';

/**
 * Issue 17, item 15: the server commits the enrollment and answers, and the answer never reaches the
 * agent (simulated deterministically: the enrollment's commit hook, which runs before the response is
 * written, turns the proxy between agent and server into a black hole for server → agent bytes and
 * then drops the connection). Running enroll again with the same token must work, for the same node.
 */
describe('an enrollment whose answer was lost', () => {
  let ts: TestServer;
  let proxy: TcpProxy;
  let dir: { path: string; cleanup(): Promise<void> };
  beforeAll(async () => {
    ts = await startTestServer();
    proxy = await TcpProxy.start(Number(new URL(ts.url).port));
    dir = await tempDir('ml-enroll-retry-');
  });
  afterAll(async () => {
    await proxy?.close();
    await ts?.stop();
    await dir?.cleanup();
  });

  it('a re-run with the same token gets the same certificate, and no orphan node is left', async () => {
    const { token } = await createEnrollmentToken(ts.server.store, { ttlMs: 60_000 });
    const stateDir = join(dir.path, 'state');
    const options = { server: proxy.url, token, caPins: [ts.server.caPin], stateDir, hostname: 'retry-host', timeoutMs: 10_000 };
    const unhook = ts.server.enrollment.onCommit(async () => {
      proxy.mode = 'blackhole-down';
      setTimeout(() => proxy.drop(), 0);
    });
    await expect(enroll(options)).rejects.toMatchObject({ code: expect.stringMatching(/^ML_ERR_SERVER_UNREACHABLE$|^ML_ERR_ENROLL_RESPONSE$/) });
    unhook();
    proxy.mode = 'pass';
    // The server did enroll a node; the agent has no identity yet.
    expect((await ts.server.store.listLiveNodes()).map((n) => n.hostname)).toEqual(['retry-host']);
    expect(existsSync(join(stateDir, 'identity.json'))).toBe(false);
    const firstSerial = (await ts.server.store.listLiveNodes())[0]!.certSerial;

    const { identity } = await enroll(options);
    const nodes = await ts.server.store.listLiveNodes();
    expect(nodes).toHaveLength(1);
    expect(identity.nodeId).toBe(nodes[0]!.id);
    // The store keeps serials normalised (no leading zeros); the certificate's own may start with 0.
    expect(normalizeSerial(identity.cert.serial)).toBe(firstSerial);
    expect(existsSync(join(stateDir, 'enroll-pending.json'))).toBe(false);

    // The token is still spent for anyone else: another key (another state dir) is refused.
    await expect(enroll({ ...options, stateDir: join(dir.path, 'other') })).rejects.toMatchObject({ code: 'ML_ERR_TOKEN_INVALID' });
    expect(await ts.server.store.listLiveNodes()).toHaveLength(1);
  });
});
