import { EXIT_CODES, MeshlinkError } from '../errors.js';
import { exitCodeFor, reportFailure, withFailureReport } from './failure.js';
import { readFile, stat } from 'node:fs/promises';
import { basename, join, posix } from 'node:path';
import { Option, type Command } from 'commander';
import { z } from 'zod';
import { localActor } from '../admin-api/actor.js';
import * as api from '../admin-api/routes.js';
import { actionName } from '../admin-api/tunnel.js';
import { pullFile, pushFile, runAction, runExec, tailLogs } from '../admin-api/tunnel-client.js';
import { adminSocketOf, withOperator } from './operator.js';
import { parseDuration } from '../util/duration.js';
import { printable, printTable } from './table.js';
import { terminalProgress } from './progress.js';

/**
 * `meshlink server action|exec|logs|cp|audit|upgrade` (docs/OPERATIONS.md): thin clients of the
 * running server's admin socket. NODE is a node id or a unique hostname.
 *
 * Exit codes: exec and action pass the remote command's exit code through (128+n for a signal);
 * meshlink's own failures print `error CODE: message` on stderr and exit with their class's number (OPS_EXIT).
 */
/** The exit numbers the ops commands use (docs/OPERATIONS.md lists them); each error's comes from its exit class. */
export const OPS_EXIT = {
  OK: EXIT_CODES.ok,
  INTERNAL: EXIT_CODES.internal,
  USAGE: EXIT_CODES.usage,
  NODE: EXIT_CODES.nodeNotResolved,
  OFFLINE: EXIT_CODES.nodeOffline,
  REFUSED: EXIT_CODES.refused,
  TIMEOUT: EXIT_CODES.timeout,
  TRANSFER: EXIT_CODES.transfer,
  NO_SERVER: EXIT_CODES.noServer,
} as const;

const action = withFailureReport;

/** Exit with `code` once stdout is flushed (stdin of exec may otherwise keep the process alive). */
function exitAfterFlush(code: number): void {
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}

const actor = localActor;
const socketOf = adminSocketOf;

const dataDirOption = () => new Option('--data-dir <dir>', 'server data dir (default: MESHLINK_DATA_DIR or the documented default)');
const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

function remoteExit(exitCode: number | null, signal: string | null | undefined): number {
  if (exitCode !== null) return exitCode;
  const n = signal ? (({ SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15 }) as Record<string, number>)[signal] : undefined;
  return n ? 128 + n : OPS_EXIT.INTERNAL;
}

/** `NODE:/abs/path` → {node, path}; anything else is local. */
export function parseRemote(spec: string): { node: string; path: string } | null {
  const m = /^([^:/\s]+):(\/.*)$/.exec(spec);
  return m ? { node: m[1]!, path: m[2]! } : null;
}

/**
 * `cp FILE NODE:/dir/`: a trailing slash names a directory on the agent; the file keeps its local
 * name in it. The agent then checks `/dir/NAME` as any other path: its directory must exist and be
 * inside a transfer directory once symlinks are resolved (src/agent/ops/transfer.ts), so naming a
 * directory never widens what the agent accepts.
 */
export function remoteTarget(remote: string, local: string): string {
  return remote.endsWith('/') ? `${remote}${basename(local)}` : remote;
}

/**
 * `cp NODE:/path/file DIR/` (or an existing DIR): the file keeps its remote name in the local
 * directory. A trailing slash on a directory that does not exist is an error, as for cp(1), rather
 * than a file named after the directory.
 */
export async function localTarget(local: string, remote: string): Promise<string> {
  if (remote.endsWith('/')) throw new MeshlinkError('ML_ERR_USAGE', `the remote source ${remote} names a directory; cp copies one file`);
  const st = await stat(local).catch(() => null);
  if (st?.isDirectory()) return join(local, posix.basename(remote));
  if (local.endsWith('/')) throw new MeshlinkError('ML_ERR_USAGE', `${local} is not an existing directory`);
  return local;
}

export function registerOpsCommands(server: Command): void {
  server
    .command('action')
    .description('run a built-in (ping, diagnostics, reconcile) or hook action on a node')
    .argument('<node>', 'node id or hostname')
    .argument('<name>', 'action name')
    .option('--arg <key=value>', 'argument for the action (repeatable; hooks get MESHLINK_ARG_<KEY>)', collect)
    .option('--timeout <duration>', 'kill the action after this long', '60s')
    .option('--json', 'print the result as JSON (output included) instead of streaming it')
    .addOption(dataDirOption())
    .action(
      action(async (node: string, name: string, raw: unknown) => {
        const o = z.object({ arg: z.array(z.string()).default([]), timeout: z.string(), json: z.boolean().default(false), dataDir: z.string().optional() }).parse(raw);
        if (!actionName.safeParse(name).success) throw new MeshlinkError('ML_ERR_USAGE', `invalid action name ${name}`);
        const args: Record<string, string> = {};
        for (const a of o.arg) {
          const i = a.indexOf('=');
          if (i <= 0) throw new MeshlinkError('ML_ERR_USAGE', `--arg must be KEY=VALUE: ${a}`);
          args[a.slice(0, i)] = a.slice(i + 1);
        }
        const timeoutMs = parseDuration(o.timeout);
        const chunks: Buffer[] = [];
        const errChunks: Buffer[] = [];
        const collectTo = (list: Buffer[]) => ({ write: (c: Buffer) => (list.push(Buffer.from(c)), true), once: () => {} });
        const io = o.json
          ? { stdout: collectTo(chunks) as never, stderr: collectTo(errChunks) as never }
          : { stdout: process.stdout, stderr: process.stderr, onAck: (queued: boolean) => queued && process.stderr.write('queued behind other actions…\n') };
        const r = await runAction(socketOf(o.dataDir), { op: 'action', node, actor: actor(), action: name, args, timeoutMs }, io);
        if (o.json) {
          process.stdout.write(JSON.stringify({ ...r, type: undefined, output: Buffer.concat(chunks).toString('utf8'), stderr: Buffer.concat(errChunks).toString('utf8') }) + '\n');
        } else if (r.truncated) process.stderr.write('(output truncated at the agent’s cap)\n');
        if (r.error) {
          const code = /^(ML_ERR_[A-Z0-9_]+)/.exec(r.error)?.[1];
          if (!o.json) process.stderr.write(`error ${printable(r.error)}\n`);
          process.exitCode = exitCodeFor(MeshlinkError.fromWire(code, r.error));
          return;
        }
        process.exitCode = remoteExit(r.exitCode, r.signal);
      }),
    );

  server
    .command('exec')
    .description('run a command on a node (agent needs --allow-exec); stdin/stdout/stderr stream both ways; exits with its exit code')
    .argument('<node>', 'node id or hostname')
    .argument('<command...>', 'command and arguments (after --)')
    .addOption(dataDirOption())
    .action(
      action(async (node: string, command: string[], raw: unknown) => {
        const o = z.object({ dataDir: z.string().optional() }).parse(raw);
        const [cmd, ...args] = command;
        if (!cmd) throw new MeshlinkError('ML_ERR_USAGE', 'no command given: meshlink server exec NODE -- CMD [ARGS…]');
        try {
          const r = await runExec(socketOf(o.dataDir), { op: 'exec', node, actor: actor(), command: cmd, args }, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr });
          exitAfterFlush(remoteExit(r.exitCode, r.signal));
        } catch (err) {
          // A terminal on stdin would keep the process alive after a failure: exit explicitly.
          reportFailure(err);
          exitAfterFlush(typeof process.exitCode === 'number' ? process.exitCode : OPS_EXIT.INTERNAL);
        }
      }),
    );

  server
    .command('logs')
    .description('print the agent’s own log; --follow keeps streaming until interrupted')
    .argument('<node>', 'node id or hostname')
    .option('--follow', 'keep printing new lines')
    .option('--lines <n>', 'lines from the end to start with', '100')
    .addOption(dataDirOption())
    .action(
      action(async (node: string, raw: unknown) => {
        const o = z.object({ follow: z.boolean().default(false), lines: z.coerce.number().int().min(0).max(100_000), dataDir: z.string().optional() }).parse(raw);
        const abort = new AbortController();
        const stop = (): void => abort.abort();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        await tailLogs(socketOf(o.dataDir), { op: 'logs', node, actor: actor(), lines: o.lines, follow: o.follow }, process.stdout, abort.signal);
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }),
    );

  server
    .command('cp')
    .description('copy a file to or from a node: cp LOCAL NODE:/PATH or cp NODE:/PATH LOCAL; a trailing slash (NODE:/DIR/, LOCALDIR/) or an existing local directory copies into it under the file\'s name (agent needs --transfer-dir)')
    .argument('<source>')
    .argument('<destination>')
    .option('--retries <n>', 'resume this many times after a dropped connection', '5')
    .option('--json', 'print {"size","sha256","resumedFrom","attempts"}')
    .addOption(dataDirOption())
    .action(
      action(async (source: string, destination: string, raw: unknown) => {
        const o = z.object({ retries: z.coerce.number().int().min(0).max(1000), json: z.boolean().default(false), dataDir: z.string().optional() }).parse(raw);
        const src = parseRemote(source);
        const dst = parseRemote(destination);
        if ((src === null) === (dst === null)) throw new MeshlinkError('ML_ERR_USAGE', 'exactly one side must be NODE:/absolute/path');
        const policy = { retries: o.retries, delayMs: 1000, onRetry: (e: MeshlinkError, n: number) => process.stderr.write(`transfer interrupted (${e.code}); resuming (attempt ${n + 1})\n`) };
        const socket = socketOf(o.dataDir);
        // Bytes, rate and ETA on stderr when it is a terminal; nothing otherwise (stdout is the result).
        const progress = terminalProgress();
        const onProgress = progress ? progress.update.bind(progress) : undefined;
        const r = await (dst
          ? pushFile(socket, { node: dst.node, actor: actor(), local: source, remote: remoteTarget(dst.path, source) }, policy, onProgress)
          : pullFile(socket, { node: src!.node, actor: actor(), remote: src!.path, local: await localTarget(destination, src!.path) }, policy, onProgress)
        ).finally(() => progress?.finish());
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        else process.stderr.write(`${r.size} bytes, sha256 ${r.sha256}${r.resumedFrom > 0 ? `, resumed at ${r.resumedFrom}` : ''}\n`);
      }),
    );

  server
    .command('audit')
    .description('the audit log of operations (newest first)')
    .option('--json', 'print a JSON array')
    .option('--limit <n>', 'records to show', '100')
    .addOption(dataDirOption())
    .action(
      action(async (raw: unknown) => {
        const o = z.object({ json: z.boolean().default(false), limit: z.coerce.number().int().min(1).max(10_000), dataDir: z.string().optional() }).parse(raw);
        const list = await withOperator(o.dataDir, (op) => op.call(api.listAudit, { limit: o.limit }));
        if (o.json) {
          process.stdout.write(JSON.stringify(list) + '\n');
          return;
        }
        const rows = [['TIME', 'SOURCE', 'ACTOR', 'OPERATION', 'NODE', 'TARGET', 'RESULT'], ...list.map((a) => [new Date(a.ts).toISOString(), a.source, a.actor ?? '-', a.operation, a.nodeId ?? '-', a.target ?? '-', a.result])];
        printTable(rows);
      }),
    );

  const upgrade = server.command('upgrade').description('agent self-upgrade: the bundle the server offers');
  upgrade
    .command('set')
    .description('offer this signed agent bundle to agents (build id = its SHA-256); --percent stages the roll-out')
    .argument('<bundle>', 'single-file agent bundle (npm run bundle), signed with `meshlink release sign`')
    .option('--signature <file>', 'its signature file (default: <bundle>.sig)')
    .option('--percent <n>', 'share of nodes (by a stable hash of node and build) that get it', '100')
    .option('--allow-downgrade', 'offer it even though its version is lower than the current offer (agents then take it too)')
    .option('--json', 'print the result as JSON')
    .addOption(dataDirOption())
    .action(
      action(async (bundle: string, raw: unknown) => {
        const o = z.object({ percent: z.coerce.number().int().min(0).max(100), signature: z.string().optional(), allowDowngrade: z.boolean().default(false), json: z.boolean().default(false), dataDir: z.string().optional() }).parse(raw);
        const bytes = await readFile(bundle);
        // The server checks the bundle and the signature; here only that the file is there and small.
        const manifest = await readSignatureFile(o.signature ?? `${bundle}.sig`, o.signature !== undefined);
        const r = await withOperator(o.dataDir, (op) =>
          op.call(api.setUpgrade, { percent: o.percent, allowDowngrade: o.allowDowngrade, ...(manifest !== null ? { manifest } : {}) }, { body: bytes, timeoutMs: 60_000 }),
        );
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        else process.stdout.write(`offering build ${r.buildId} (version ${r.version}, ${r.size} bytes, release key ${r.keyId}) to ${r.percent}% of nodes; ${r.notified} connected agent(s) notified\n`);
      }),
    );
  upgrade
    .command('status')
    .description('the offered build and what each node reported')
    .option('--json', 'print JSON')
    .addOption(dataDirOption())
    .action(
      action(async (raw: unknown) => {
        const o = z.object({ json: z.boolean().default(false), dataDir: z.string().optional() }).parse(raw);
        const r = await withOperator(o.dataDir, (op) => op.call(api.showUpgrade, {}));
        if (o.json) {
          process.stdout.write(JSON.stringify(r) + '\n');
          return;
        }
        process.stdout.write(r.current ? `offered: ${r.current.buildId} (version ${r.current.version}, ${r.current.percent}%)\n` : 'no bundle offered\n');
        for (const n of r.nodes) process.stdout.write(printable(`${n.nodeId}  ${n.state}  ${n.buildId}${n.code ? `  ${n.code}` : ''}${n.message ? `  ${n.message}` : ''}`) + '\n');
      }),
    );
}

/** The signature file's text (at most 4 KiB), or null when the default one is absent (the server then answers ML_ERR_UPGRADE_UNSIGNED). */
async function readSignatureFile(path: string, explicit: boolean): Promise<string | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !explicit) return null;
    throw new MeshlinkError('ML_ERR_USAGE', `cannot read the signature file ${path}: ${(err as Error).message}`);
  }
  if (text.length > 4096) throw new MeshlinkError('ML_ERR_UPGRADE_NOT_BUNDLE', `${path} is not a signature file (larger than 4 KiB)`);
  return text.trim();
}
