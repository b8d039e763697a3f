import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POSTGRES_MISSING, postgresRunsAs, startPostgres, type PostgresCluster } from './postgres.js';

/**
 * The throwaway PostgreSQL cluster of test/helpers/postgres.ts: it starts, answers queries over TCP
 * on loopback and over its unix socket, runs as the postgres user (never root), accepts no other
 * address, makes databases, and is gone after stop().
 */
if (POSTGRES_MISSING !== null && process.env.CI) {
  it('PostgreSQL is installed (CI installs it in .ci/run)', () => {
    throw new Error(POSTGRES_MISSING ?? '');
  });
}

describe.skipIf(POSTGRES_MISSING !== null)(`a throwaway PostgreSQL cluster${POSTGRES_MISSING ? ` (skipped: ${POSTGRES_MISSING})` : ''}`, () => {
  let cluster: PostgresCluster;

  beforeAll(async () => {
    cluster = await startPostgres();
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it('answers a query over TCP on loopback, as a server process of the postgres user', async () => {
    const client = new pg.Client({ connectionString: cluster.url });
    await client.connect();
    try {
      const r = await client.query<{ sum: number; version: string; addr: string | null; who: string }>(
        "SELECT 20 + 22 AS sum, current_setting('server_version') AS version, host(inet_server_addr()) AS addr, current_setting('listen_addresses') AS who",
      );
      expect(r.rows[0]!.sum).toBe(42);
      expect(r.rows[0]!.version).toMatch(/^\d+/);
      expect(r.rows[0]!.addr).toBe('127.0.0.1');
      expect(r.rows[0]!.who).toBe('127.0.0.1');
      // The socket (in the postgres user's 0700 dir) is trusted; loopback TCP asks for the password.
      const rules = await client.query<{ type: string; address: string | null; auth_method: string }>('SELECT type, address, auth_method FROM pg_hba_file_rules');
      expect(rules.rows).toEqual([
        { type: 'local', address: null, auth_method: 'trust' },
        { type: 'host', address: '127.0.0.1', auth_method: 'scram-sha-256' },
        { type: 'host', address: '::1', auth_method: 'scram-sha-256' },
      ]);
      // A table round trip, with a parameter.
      await client.query('CREATE TABLE t (id serial PRIMARY KEY, body text NOT NULL)');
      await client.query('INSERT INTO t (body) VALUES ($1), ($2)', ['a', 'ü']);
      expect((await client.query<{ body: string }>('SELECT body FROM t ORDER BY id')).rows.map((row) => row.body)).toEqual(['a', 'ü']);
    } finally {
      await client.end();
    }
    // Without the password, loopback TCP is refused (another local user gets no superuser).
    const stranger = new pg.Client({ host: '127.0.0.1', port: cluster.port, user: 'postgres', database: 'postgres', password: 'wrong' });
    await expect(stranger.connect()).rejects.toThrow(/password authentication failed/);
    await stranger.end().catch(() => undefined);
    // The postmaster's data dir belongs to the user it runs as (root is refused by PostgreSQL).
    const owner = statSync(join(cluster.dir, 'data')).uid;
    if (process.getuid?.() === 0) expect(owner).not.toBe(0);
    expect(postgresRunsAs()).not.toBe('root');
  });

  it('answers over its unix socket in the temp dir, and makes databases', async () => {
    expect(existsSync(join(cluster.socketDir, `.s.PGSQL.${cluster.port}`))).toBe(true);
    const url = await cluster.createDatabase('store_a');
    const viaSocket = new pg.Client({ host: cluster.socketDir, port: cluster.port, user: 'postgres', database: 'store_a' });
    await viaSocket.connect();
    try {
      expect((await viaSocket.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db).toBe('store_a');
    } finally {
      await viaSocket.end();
    }
    expect(url).toBe(cluster.urlOf('store_a'));
  });

  it('stop() ends the server and removes its dir', async () => {
    const other = await startPostgres();
    const client = new pg.Client({ connectionString: other.url });
    await client.connect();
    await client.end();
    await other.stop();
    expect(existsSync(other.dir)).toBe(false);
    const refused = new pg.Client({ connectionString: other.url, connectionTimeoutMillis: 5_000 });
    await expect(refused.connect()).rejects.toThrow();
    await other.stop(); // twice is harmless
  }, 120_000);
});
