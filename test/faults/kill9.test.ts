import { statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { enroll } from '../../src/agent/enroll.js';
import { loadIdentity } from '../../src/agent/identity.js';
import { renewalDueAt } from '../../src/agent/renewal.js';
import { cli, createToken, freePort, listNodes, startServerProc, type ServerProc } from '../e2e/harness.js';
import { runAgent, silent, tempDir, waitFor } from './helpers.js';
import { TcpProxy } from './tcp-proxy.js';

/**
 * The server process killed with SIGKILL (real `meshlink server start` children, real SQLite files).
 * Needs dist/ (npm test builds first).
 */

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

async function kill9(server: ServerProc): Promise<void> {
  server.child.kill('SIGKILL');
  await server.exited;
}

function dialStatus(url: string, ca: string, cert: string, key: string): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${url.replace('https:', 'wss:')}/v1/connect`, { ca, cert, key });
    ws.once('open', () => {
      ws.terminate();
      resolve(101);
    });
    ws.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0));
    ws.once('error', () => resolve(-1));
  });
}

describe('server killed with -9', () => {
  it('loses no enrolled node, revocation or consumed token', async () => {
    const dir = await tempDir('ml-kill9-');
    cleanups.push(() => dir.cleanup());
    const dataDir = join(dir.path, 'server');
    const port = await freePort();
    let server = await startServerProc(dataDir, port);
    cleanups.push(() => server.stop('SIGKILL'));

    const tA = await createToken(dataDir);
    const a = await enroll({ server: server.url, token: tA.token, caPins: [server.caPin], stateDir: join(dir.path, 'a'), hostname: 'k9-a' }, { logger: silent() });
    const tB = await createToken(dataDir);
    const b = await enroll({ server: server.url, token: tB.token, caPins: [server.caPin], stateDir: join(dir.path, 'b'), hostname: 'k9-b' }, { logger: silent() });
    const unused = await createToken(dataDir);
    const removed = await cli(['server', 'nodes', 'remove', 'k9-b', '--data-dir', dataDir]);
    expect(removed.code, removed.stderr).toBe(0);

    // No graceful anything: SIGKILL right after the last admin call returned.
    await kill9(server);
    server = await startServerProc(dataDir, port);

    const nodes = await listNodes(dataDir);
    expect(nodes.map((n) => n.hostname).sort()).toEqual(['k9-a']);
    const idA = await loadIdentity(join(dir.path, 'a'));
    const idB = await loadIdentity(join(dir.path, 'b'));
    expect(nodes[0]!.id).toBe(a.identity.nodeId);
    // The revocation held: B's certificate is refused before any upgrade; A's is accepted.
    expect(await dialStatus(server.url, idB.caPem, idB.certPem, idB.keyPem)).toBe(403);
    expect(await dialStatus(server.url, idA.caPem, idA.certPem, idA.keyPem)).toBe(101);
    expect(b.identity.nodeId).not.toBe(a.identity.nodeId);
    // The consumed token stays consumed; the unused one still works.
    await expect(enroll({ server: server.url, token: tA.token, caPins: [server.caPin], stateDir: join(dir.path, 'again'), hostname: 'k9-again' }, { logger: silent() })).rejects.toThrow(/token/i);
    const c = await enroll({ server: server.url, token: unused.token, caPins: [server.caPin], stateDir: join(dir.path, 'c'), hostname: 'k9-c' }, { logger: silent() });
    expect(c.identity.nodeId).toBeTruthy();
  }, 120_000);

  it('in the middle of a renewal: the agent keeps its old, still valid certificate, retries, and renews after the restart', async () => {
    const dir = await tempDir('ml-kill9-renew-');
    cleanups.push(() => dir.cleanup());
    const dataDir = join(dir.path, 'server');
    const port = await freePort();
    const flags = ['--cert-lifetime', '60s', '--heartbeat-interval', '500ms', '--offline-after', '2s'];
    let server = await startServerProc(dataDir, port, flags);
    cleanups.push(() => server.stop('SIGKILL'));
    const proxy = await TcpProxy.start(port);
    cleanups.push(() => proxy.close());
    const t = await createToken(dataDir);
    const stateDir = join(dir.path, 'agent');
    const enrolled = await enroll({ server: proxy.url, token: t.token, caPins: [server.caPin], stateDir, hostname: 'renew-1' }, { logger: silent() });
    const nodeId = enrolled.identity.nodeId;
    const oldSerial = enrolled.identity.cert.serial;
    const oldCert = await readFile(join(stateDir, 'cert.pem'), 'utf8');

    const agent = runAgent(stateDir, silent(), { connectTimeoutMs: 2_000 });
    cleanups.push(async () => {
      agent.runner.stop();
      await agent.done;
    });
    await waitFor('connected', () => agent.runner.state === 'connected', 30_000);

    // The server's side of the renewal is visible in its store (a second certificate row).
    const db = new Database(join(dataDir, 'meshlink.db'), { readonly: true, fileMustExist: true });
    cleanups.push(async () => db.close());
    const certCount = (): number => (db.prepare('SELECT COUNT(*) AS n FROM certs WHERE node_id = ?').get(nodeId) as { n: number }).n;
    expect(certCount()).toBe(1);
    // Renewal is due at half the 60 s lifetime. The server → agent direction goes dark as the agent's
    // cert.renew passes the proxy (the first chunk of over 512 bytes on the open connection from shortly
    // before it is due: the CSR; heartbeats are a few dozen): the server receives it and issues, the answer never arrives,
    // and then the server dies. A timer would race the agent's key generation, which under CPU load
    // can outlast its 1.5 s liveness window, and then no cert.renew is sent at all.
    const due = renewalDueAt(Math.max(enrolled.identity.cert.notBefore.getTime(), statSync(join(stateDir, 'cert.pem')).mtimeMs), enrolled.identity.cert.notAfter.getTime());
    await new Promise((r) => setTimeout(r, Math.max(0, due - Date.now() - 150)));
    proxy.blackholeDownAt((chunk) => chunk.length > 512);
    await waitFor('server issued the renewed certificate', () => certCount() === 2, 60_000, 5);
    expect(proxy.mode).toBe('blackhole-down');
    await kill9(server);

    // The agent gives up the dark connection (liveness), its request fails, and it keeps the old pair.
    await waitFor('agent left the dead connection', () => agent.runner.state !== 'connected', 10_000);
    expect(agent.runner.identity!.cert.serial).toBe(oldSerial);
    expect(await readFile(join(stateDir, 'cert.pem'), 'utf8')).toBe(oldCert);
    expect((await loadIdentity(stateDir)).cert.notAfter.getTime()).toBeGreaterThan(Date.now());

    proxy.mode = 'pass';
    server = await startServerProc(dataDir, port, flags);
    // Back online on the old certificate, then the retried renewal succeeds with a third certificate.
    await waitFor('reconnected on the old certificate', () => agent.runner.state === 'connected', 30_000);
    const renewed = await waitFor('renewed after the restart', () => agent.runner.identity!.cert.serial !== oldSerial && agent.runner.identity!.cert.serial, 40_000);
    expect(certCount()).toBe(3);
    expect((await loadIdentity(stateDir)).cert.serial).toBe(renewed);
    await waitFor('connected on the renewed certificate', () => agent.runner.state === 'connected', 20_000);
  }, 150_000);
});
