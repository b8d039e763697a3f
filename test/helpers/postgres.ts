import { randomBytes } from 'node:crypto';
import { execFile, spawnSync } from 'node:child_process';
import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../../bench/lib/free-port.js';

/**
 * A throwaway PostgreSQL cluster for tests (issue 14): `initdb` into a temp dir, `pg_ctl start` on a
 * free loopback port with its unix socket in that dir, trust authentication for loopback and the
 * socket only (its own pg_hba.conf), `listen_addresses = 127.0.0.1`; `stop()` ends the server and
 * removes the dir. PostgreSQL refuses to run as root, so as root every command runs as the `postgres`
 * user (`runuser -u postgres --`) and the dir is given to it; as any other user, as that user.
 *
 * The binaries are Debian's (`postgresql`, installed by .ci/run), found under
 * /usr/lib/postgresql/<version>/bin, the newest version first. Durability is off (fsync,
 * synchronous_commit, full_page_writes): the cluster lives for one test file.
 */

const run = promisify(execFile);
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;

/** The newest installed PostgreSQL's bin dir, or null. */
export function postgresBinDir(): string | null {
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return null;
  const versions = readdirSync(base)
    .filter((v) => /^\d+(\.\d+)?$/.test(v) && existsSync(join(base, v, 'bin', 'initdb')) && existsSync(join(base, v, 'bin', 'pg_ctl')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? null : join(base, versions[0], 'bin');
}

/** Why a cluster cannot be made here, or null. */
export const POSTGRES_MISSING: string | null = (() => {
  if (postgresBinDir() === null) return 'PostgreSQL is not installed (apt-get install postgresql: /usr/lib/postgresql/*/bin/initdb)';
  if (IS_ROOT) {
    if (spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).status !== 0) return 'running as root and there is no postgres user to run PostgreSQL as';
    if (spawnSync('runuser', ['--help'], { encoding: 'utf8' }).error) return 'running as root and runuser (util-linux) is missing';
  }
  return null;
})();

export interface PostgresCluster {
  /** postgres://postgres@127.0.0.1:PORT/postgres (trust: no password). */
  readonly url: string;
  readonly port: number;
  /** The dir holding the data dir, the log and the unix socket. */
  readonly dir: string;
  /** The dir of the unix socket (`.s.PGSQL.PORT`). */
  readonly socketDir: string;
  /** A URL to another database of this cluster (created with `createDatabase`). */
  urlOf(database: string): string;
  /**
   * Creates an empty database (name: letters, digits, _). `icuLocale` (PostgreSQL 15+): its default
   * collation is that ICU locale's (en-US: 'a' < 'B'), as on most installations, instead of the
   * cluster's C (byte order, SQLite's).
   */
  createDatabase(name: string, options?: { icuLocale?: string }): Promise<string>;
  /** Drops a database, ending the sessions still connected to it (`dropdb --force`). */
  dropDatabase(name: string): Promise<void>;
  /** The server's log so far (for a failing test's message). */
  log(): string;
  /** Stops the server (immediate) and removes the dir. Safe to call twice. */
  stop(): Promise<void>;
}

const live = new Set<PostgresCluster>();
// A test process that dies without stopping its cluster must not leave a postmaster behind.
let exitHookInstalled = false;
function installExitHook(bin: string): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of live) spawnSync(...asPostgres(join(bin, 'pg_ctl'), ['-D', join(c.dir, 'data'), '-m', 'immediate', 'stop']), { timeout: 10_000 });
  });
}

/** [command, args] that run `cmd` as the postgres user when we are root. */
function asPostgres(cmd: string, args: string[]): [string, string[]] {
  return IS_ROOT ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args];
}

async function pg(cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  const [file, argv] = asPostgres(cmd, args);
  try {
    const { stdout } = await run(file, argv, { timeout: timeoutMs, env: { ...process.env, LC_ALL: 'C', LANG: 'C' } });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

export async function startPostgres(): Promise<PostgresCluster> {
  if (POSTGRES_MISSING !== null) throw new Error(POSTGRES_MISSING);
  const bin = postgresBinDir()!;
  installExitHook(bin);
  const dir = await mkdtemp(join(tmpdir(), 'ml-pg-'));
  const data = join(dir, 'data');
  const logPath = join(dir, 'postgres.log');
  if (IS_ROOT) {
    const { uid, gid } = postgresIds();
    await chown(dir, uid, gid);
  }
  await chmod(dir, 0o700);
  const removeDir = (): Promise<void> => rm(dir, { recursive: true, force: true });
  try {
    const superuser = 'postgres';
    // TCP on loopback asks for a random password: another local user of a shared machine must not get
    // a superuser (and with it a shell as postgres, COPY … PROGRAM). The socket, in this 0700 dir of
    // the postgres user, needs none. The password file is read by initdb as postgres, then removed.
    const password = randomBytes(18).toString('base64url');
    const pwfile = join(dir, 'pwfile');
    await writeHba(pwfile, `${password}\n`);
    await pg(join(bin, 'initdb'), ['-D', data, '-U', superuser, '-A', 'scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions']);
    await rm(pwfile, { force: true });
    // Loopback and the socket only, whatever initdb wrote (its replication lines too).
    const hba = ['local all all trust', 'host all all 127.0.0.1/32 scram-sha-256', 'host all all ::1/128 scram-sha-256', ''].join('\n');
    await writeHba(join(data, 'pg_hba.conf'), hba);
    // A free port can be taken between the probe and the bind: a few tries.
    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freePort();
      const options = [
        `-p ${port}`,
        `-k ${dir}`,
        "-c listen_addresses='127.0.0.1'",
        '-c fsync=off',
        '-c synchronous_commit=off',
        '-c full_page_writes=off',
        '-c max_connections=100',
      ].join(' ');
      try {
        await pg(join(bin, 'pg_ctl'), ['-D', data, '-l', logPath, '-w', '-t', '60', '-o', options, 'start']);
      } catch (err) {
        lastError = new Error(`${(err as Error).message}\n${readLog(logPath).slice(-2000)}`);
        continue;
      }
      const cluster: PostgresCluster = {
        url: `postgres://${superuser}:${password}@127.0.0.1:${port}/postgres`,
        port,
        dir,
        socketDir: dir,
        urlOf: (database) => `postgres://${superuser}:${password}@127.0.0.1:${port}/${database}`,
        async createDatabase(name, options = {}) {
          if (!/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(name)) throw new Error(`not a plain database name: ${name}`);
          const locale = options.icuLocale === undefined ? [] : ['--template=template0', '--locale-provider=icu', `--icu-locale=${options.icuLocale}`];
          await pg(join(bin, 'createdb'), ['-h', dir, '-p', String(port), '-U', superuser, ...locale, name], 30_000);
          return cluster.urlOf(name);
        },
        async dropDatabase(name) {
          if (!/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(name)) throw new Error(`not a plain database name: ${name}`);
          await pg(join(bin, 'dropdb'), ['-h', dir, '-p', String(port), '-U', superuser, '--force', '--if-exists', name], 30_000);
        },
        log: () => readLog(logPath),
        async stop() {
          if (!live.delete(cluster)) return;
          await pg(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', '-t', '30', 'stop'], 60_000).catch(() => undefined);
          await removeDir();
        },
      };
      live.add(cluster);
      return cluster;
    }
    throw lastError;
  } catch (err) {
    await removeDir();
    throw err;
  }
}

function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** pg_hba.conf is the postgres user's file in its 0700 data dir; root writes it and gives it back. */
async function writeHba(path: string, text: string): Promise<void> {
  await writeFile(path, text, { mode: 0o600 });
  if (IS_ROOT) {
    const { uid, gid } = postgresIds();
    await chown(path, uid, gid);
  }
}

function postgresIds(): { uid: number; gid: number } {
  const id = (flag: string): number => Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}

/** Who the cluster's processes run as (for a test's message). */
export function postgresRunsAs(): string {
  return IS_ROOT ? 'postgres' : userInfo().username;
}
