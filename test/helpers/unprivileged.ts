import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

/**
 * The agent CLI as another user runs it (uid/gid 65534 through setpriv), independent of where the
 * checkout lives: a checkout under a 0700 directory (root's home, a `mktemp -d`) is unreadable to that
 * user, so the CLI is built as the single-file agent bundle into a world-readable temp dir and run from
 * there. `skip` says why it cannot run here (not root, no setpriv, or a node binary that user cannot
 * execute).
 */
export interface UnprivilegedCli {
  /** command and arguments that run `node <bundle>` as uid 65534; append the CLI's arguments. */
  readonly argv: readonly string[];
  cleanup(): void;
}

const UID = '65534';
const DROP = ['setpriv', `--reuid=${UID}`, `--regid=${UID}`, '--clear-groups'];

export async function unprivilegedAgentCli(): Promise<UnprivilegedCli | { skip: string }> {
  if (process.getuid?.() !== 0) return { skip: 'needs root to run a command as uid 65534' };
  if (spawnSync('setpriv', ['--version']).status !== 0) return { skip: 'needs setpriv (util-linux)' };
  const dir = mkdtempSync(join(tmpdir(), 'ml-unpriv-cli-'));
  chmodSync(dir, 0o755);
  const bundle = join(dir, 'meshlink-agent.mjs');
  try {
    await promisify(execFile)(process.execPath, [resolve('scripts/bundle-agent.mjs'), '--out', bundle]);
    chmodSync(bundle, 0o644);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const argv = [...DROP, process.execPath, bundle];
  const probe = spawnSync(argv[0]!, [...argv.slice(1), '--version']);
  if (probe.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return { skip: `uid ${UID} cannot run ${process.execPath} ${bundle} (${probe.stderr.toString().trim().slice(0, 200)})` };
  }
  return { argv, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
