import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { POSTGRES_SKIP } from '../helpers/store-backends.js';
import { startPostgres, type PostgresCluster } from '../helpers/postgres.js';
import { cli, createToken, freePort, listNodes, spawnCli, startServerProc, tempDir, waitFor, type Proc, type ServerProc } from './harness.js';

/**
 * `server start --store postgres://…` with the real CLI, a real PostgreSQL cluster made by the test,
 * and a real agent: the server is one replica of a store that outlives it. A second server process
 * (another data dir, the same database and key file) takes over the first one's address and
 * serves the same CA, nodes and tokens; the agent reconnects to it with no new enrollment.
 */
describe.skipIf(POSTGRES_SKIP !== null)(`the PostgreSQL store through the CLI${POSTGRES_SKIP ? ` (skipped: ${POSTGRES_SKIP})` : ''}`, () => {
  let cluster: PostgresCluster;
  let url: string;
  let keyDir: { path: string; cleanup(): Promise<void> };
  const dirs: Array<{ path: string; cleanup(): Promise<void> }> = [];
  const procs: Proc[] = [];
  let port: number;
  let first: ServerProc;
  let agentState: string;
  let agent: Proc;
  let second: ServerProc;
  let nodeId: string;

  const dir = async (prefix: string): Promise<string> => {
    const d = await tempDir(prefix);
    dirs.push(d);
    return d.path;
  };
  const keyFile = (): string => join(keyDir.path, 'server.key');

  beforeAll(async () => {
    cluster = await startPostgres();
    url = await cluster.createDatabase('meshlink_e2e');
    keyDir = await tempDir('ml-pg-key-');
    port = await freePort();
  }, 180_000);

  afterAll(async () => {
    for (const p of procs) await p.stop('SIGKILL');
    for (const d of dirs) await d.cleanup();
    await keyDir?.cleanup();
    await cluster?.stop();
  });

  it('refuses a PostgreSQL store without a key file, and a store value that is not a postgres:// URL', async () => {
    const noKey = await cli(['server', 'start', '--data-dir', await dir('ml-pg-a-'), '--listen', '127.0.0.1:0', '--store', url]);
    expect(noKey.code).not.toBe(0);
    expect(noKey.stderr).toContain('needs --key-file');
    const bad = await cli(['server', 'start', '--data-dir', await dir('ml-pg-a-'), '--listen', '127.0.0.1:0', '--store', 'mysql://x@y/z']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('postgres://');
  });

  it('a server on PostgreSQL enrolls and serves an agent; the password never reaches its log', async () => {
    const dataDir = await dir('ml-pg-a-');
    // The cluster's URL carries its password: the log shows the URL with the password replaced.
    const password = new URL(url).password;
    expect(password.length).toBeGreaterThan(8);
    first = await startServerProc(dataDir, port, ['--store', url, '--key-file', keyFile()]);
    procs.push(first);
    const ready = await first.waitForLog('server ready');
    expect(String(ready.store)).toMatch(/^postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/meshlink_e2e$/);
    expect(first.output()).not.toContain(password);

    agentState = await dir('ml-pg-agent-');
    const t = await createToken(dataDir);
    const enrolled = await cli(['agent', 'enroll', '--server', first.url, '--token', t.token, '--ca-pin', first.caPin, '--state-dir', agentState, '--hostname', 'pg-host', '--json']);
    expect(enrolled.code, enrolled.stderr).toBe(0);
    nodeId = (JSON.parse(enrolled.stdout) as { nodeId: string }).nodeId;
    agent = spawnCli(['agent', 'run', '--state-dir', agentState, '--log-level', 'info']);
    procs.push(agent);
    await waitFor('the agent online', async () => (await listNodes(dataDir)).find((n) => n.id === nodeId && n.online));

    // What the server stored is in PostgreSQL: the node, its certificate, the consumed token.
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const nodes = await client.query<{ id: string; hostname: string }>('SELECT id, hostname FROM nodes');
      expect(nodes.rows).toEqual([{ id: nodeId, hostname: 'pg-host' }]);
      const certs = await client.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM certs WHERE node_id = $1', [nodeId]);
      expect(certs.rows[0]!.n).toBe(1);
      // The CA key is sealed: no PEM private key in the database it would unlock.
      const ca = await client.query<{ key_blob: Buffer }>('SELECT key_blob FROM ca');
      expect(ca.rows).toHaveLength(1);
      expect(ca.rows[0]!.key_blob.toString('latin1')).not.toContain('PRIVATE KEY');
    } finally {
      await client.end();
    }
  }, 180_000);

  it('a second server on the same database stands by, not listening, and takes over when the active one is killed: same CA, same node, the agent back without re-enrolling', async () => {
    const dataDir = await dir('ml-pg-b-');
    // The same address as the first (as behind a balancer, or a moved IP): a standby does not bind it.
    const standby = spawnCli(['server', 'start', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--ca-key', 'rsa2048', '--store', url, '--key-file', keyFile()]);
    procs.push(standby);
    await standby.waitForLog('another server is active on this store: standing by until it stops', 60_000);
    expect(standby.output()).not.toContain('"msg":"server ready"');
    await first.stop('SIGKILL');
    const ready = await standby.waitForLog('server ready', 60_000);
    second = { ...standby, url: String(ready.publicUrl), caPin: String(ready.caPin), dataDir };
    expect(second.caPin).toBe(first.caPin);
    const nodes = await waitFor('the agent online on the second server', async () => {
      const list = await listNodes(dataDir);
      return list.find((n) => n.id === nodeId && n.online) ? list : null;
    }, 120_000);
    expect(nodes.map((n) => n.hostname)).toEqual(['pg-host']);

    // The operator's offline commands reach the same store through MESHLINK_STORE (no server on this data dir).
    const offlineDir = await dir('ml-pg-offline-');
    const listed = await cli(['server', 'nodes', 'list', '--data-dir', offlineDir, '--json'], { MESHLINK_STORE: url });
    expect(listed.code, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as Array<{ id: string }>).map((n) => n.id)).toEqual([nodeId]);
  }, 180_000);

  it('PostgreSQL stopped under a live server: the session stays up, writes fail with ML_ERR_STORE_UNAVAILABLE, and work again once it is back', async () => {
    const connections = (): number => agent.output().split('\n').filter((l) => l.includes('"msg":"connected"')).length;
    const before = connections();
    expect(before).toBeGreaterThan(0);
    await cluster.pause();
    try {
      const refused = await cli(['server', 'token', 'create', '--data-dir', second.dataDir, '--json']);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain('ML_ERR_STORE_UNAVAILABLE');
      // Heartbeats need no store: the agent's one session carries on (its status says connected).
      const status = await cli(['agent', 'status', '--state-dir', agentState, '--json']);
      expect((JSON.parse(status.stdout) as { connection: { state: string } }).connection.state).toBe('connected');
    } finally {
      await cluster.resume();
    }
    const token = await waitFor('a token once PostgreSQL is back', async () => {
      const r = await cli(['server', 'token', 'create', '--data-dir', second.dataDir, '--json']);
      return r.code === 0 ? (JSON.parse(r.stdout) as { token: string }) : null;
    }, 60_000);
    expect(token.token.length).toBeGreaterThan(20);
    expect((await listNodes(second.dataDir)).find((n) => n.id === nodeId)?.online).toBe(true);
    // No reconnect happened while the database was down.
    expect(connections()).toBe(before);
    await second.stop('SIGTERM');
  }, 240_000);

  it('a server with another key file refuses to start: it cannot open the CA the cluster sealed', async () => {
    const otherKeys = await dir('ml-pg-otherkey-');
    const r = await cli(['server', 'start', '--data-dir', await dir('ml-pg-c-'), '--listen', '127.0.0.1:0', '--store', url, '--key-file', join(otherKeys, 'server.key')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/ML_ERR_KEY_FILE|ML_ERR_CA_PASSPHRASE/);
  }, 120_000);
});
