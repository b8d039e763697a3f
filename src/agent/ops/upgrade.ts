import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { request } from 'undici';
import { BUILD_ID_PATTERN, compareVersions, MAX_BUNDLE_BYTES, parseBundleHeader, releaseVersionSchema, verifyRelease, type ReleaseKey } from '../../contract/release.js';
import { MeshlinkError } from '../../errors.js';
import type { PayloadOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import { VERSION } from '../../version.js';
import type { AgentRunner } from '../connection.js';
import { AGENT_EXIT_CODES } from '../config.js';
import { proxyFor } from '../proxy.js';
import { proxyErrorOf, serverDispatcher } from '../proxy-dial.js';
import { errorMessage, wireCode } from './errors.js';
import { readUpgradeRecord, writeUpgradeRecord, type UpgradeRecord } from './upgrade-record.js';
import { runTrial, type TrialResult } from './upgrade-trial.js';

/**
 * Self-upgrade of an agent that runs from a single-file bundle (docs/OPERATIONS.md, "Agent upgrade").
 *
 * Build identity is the SHA-256 of the bundle file the agent runs from, computed at start and sent
 * in hello.buildId. An offer (welcome.upgrade or agent.upgrade) whose buildId equals it is ignored,
 * so an agent never upgrades to itself and cannot loop.
 *
 * An offer is refused before anything is downloaded when its build id is not 64 hex digits (it names
 * files), when this agent pins no release key, when it carries no signature or one that no pinned key
 * verifies (the statement covers version, build id and size: contract/release.ts), or when its version
 * is lower than this build's and the operator did not force it. The control plane is trusted to say
 * which build to run, not what a build is: that is the release key's word.
 *
 * Then: download from the agent's own server over its mTLS identity (undici, through the runner's
 * proxy when it uses one), hashing while writing to a temp file next to the bundle; the bytes must be
 * the signed build (SHA-256 = build id, size) and a bundle whose header names the signed version.
 * Then the health trial (upgrade-trial.ts): the runner stops, the new file runs as a child with this
 * process's arguments and must connect within the health deadline. Only if it does is the running
 * bundle kept as `<bundle>.previous` and the new one renamed over it (directory fsynced). Either way
 * the outcome is written to the state dir (upgrade-record.ts) and the process ends with exit code 75,
 * which the systemd unit restarts (RestartForceExitStatus=75): the new build after a pass, the same
 * one after a failure, which reports it and does not try that build again. A failure before the trial
 * leaves everything running and is reported at once; a download failure is retried after
 * RETRY_FAILED_AFTER_MS, a refused build never (by this process).
 */

export const MAX_DOWNLOAD_BYTES = MAX_BUNDLE_BYTES;
const RETRY_FAILED_AFTER_MS = 10 * 60_000;
const DOWNLOAD_TIMEOUT_MS = 120_000;
/** How long the stopped runner may take to close its session before the trial starts anyway. */
const STOP_WAIT_MS = 10_000;

export type Offer = PayloadOf<'agent.upgrade'>;
type Outcome = 'ignored' | 'applied' | 'failed';

export async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export interface UpgraderOptions {
  bundlePath: string;
  /** Where the outcome of a trial is kept across the restart (the agent's state dir). */
  stateDir: string;
  logger: Logger;
  /** Release keys this agent trusts (enrollment's and `agent run`'s). */
  releaseKeys: readonly ReleaseKey[];
  /** Insecure: an offer without a signature is accepted (one with a signature is still verified). */
  allowUnsigned: boolean;
  /** How long the new build has to connect. */
  healthTimeoutMs: number;
  /** The version of this build (default: VERSION); offers below it are downgrades. */
  version?: string;
  /** How to start a file as this agent: node and arguments (default: this process's node, execArgv, file, and its arguments). */
  trialCommand?: (file: string) => { command: string; args: string[] };
  /** Ends the process so the service starts the bundle again (default: exit 75 once stopped). */
  restart?: () => void;
}

/** What the upgrader reads off the runner: the session (status messages), the identity and proxy (download), stop and its state (trial). */
export type UpgraderRunner = Pick<AgentRunner, 'session' | 'identity' | 'proxy' | 'stop' | 'state' | 'once'>;

export class SelfUpgrader {
  readonly buildId: string;
  #busy = false;
  /** Builds not to try again, with when they failed (Infinity: never by this process). */
  readonly #failed = new Map<string, number>();
  /** The last refusal or failure (code and message), for tests and logs. */
  lastFailure: { buildId: string; code: string; message: string } | null = null;
  #record: UpgradeRecord | null;

  private constructor(
    private readonly runner: UpgraderRunner,
    private readonly opts: UpgraderOptions,
    buildId: string,
    record: UpgradeRecord | null,
  ) {
    this.buildId = buildId;
    this.#record = record;
    // The build the previous process tried and rolled back from is not tried again.
    if (record?.state === 'failed') this.#failed.set(record.buildId, Infinity);
  }

  static async create(runner: UpgraderRunner, opts: UpgraderOptions): Promise<SelfUpgrader> {
    return new SelfUpgrader(runner, opts, await fileSha256(opts.bundlePath), await readUpgradeRecord(opts.stateDir));
  }

  /** Sends the outcome the previous process recorded, once (call when connected). */
  async reportRecorded(): Promise<void> {
    const r = this.#record;
    const session = this.runner.session;
    if (!r || r.reported || !session || session.state !== 'open') return;
    session.send('agent.upgrade.status', { buildId: r.buildId, state: r.state, ...(r.code ? { code: r.code } : {}), ...(r.message ? { message: r.message } : {}) });
    this.#record = { ...r, reported: true };
    await writeUpgradeRecord(this.opts.stateDir, this.#record).catch((err: unknown) => this.opts.logger.warn({ err: errorMessage(err) }, 'cannot mark the upgrade report sent'));
  }

  /** Handles an offer; resolves when it was applied (the process then restarts), ignored or failed (never throws). */
  async offer(o: Offer): Promise<Outcome> {
    // The id names files: nothing but 64 hex digits goes further, not even into a status message.
    if (typeof o.buildId !== 'string' || !BUILD_ID_PATTERN.test(o.buildId)) {
      const shown = String(o.buildId).slice(0, 80);
      this.lastFailure = { buildId: shown, code: 'ML_ERR_UPGRADE_BUILD_ID', message: `refusing an offer whose build id "${shown}" is not 64 hex digits` };
      this.opts.logger.warn({ code: this.lastFailure.code, buildId: shown }, this.lastFailure.message);
      return 'failed';
    }
    if (o.buildId === this.buildId || this.#busy) return 'ignored';
    const failedAt = this.#failed.get(o.buildId);
    if (failedAt !== undefined && Date.now() - failedAt < RETRY_FAILED_AFTER_MS) return 'ignored';
    this.#busy = true;
    const log = this.opts.logger.child({ buildId: o.buildId, version: o.version });
    // Hidden, next to the bundle (same file system for the rename), and with the bundle's own file
    // name at the end: node picks the module type by extension, and the trial runs this very file.
    const tmp = join(dirname(this.opts.bundlePath), `.${o.buildId.slice(0, 12)}.${basename(this.opts.bundlePath)}`);
    let stage: 'check' | 'download' | 'trial' = 'check';
    try {
      const size = this.#check(o, log);
      stage = 'download';
      this.#status(o.buildId, 'downloading');
      log.info('downloading agent upgrade');
      await this.#download(o, tmp, size);
      this.#status(o.buildId, 'verified');
      stage = 'trial';
      return await this.#trialThenInstall(o, tmp, log);
    } catch (err) {
      await unlink(tmp).catch(() => {});
      // A build that fails its checks fails them every time: never again. A download may work later.
      this.#failed.set(o.buildId, stage === 'download' ? Date.now() : Infinity);
      const code = wireCode(err) === 'ML_ERR_INTERNAL' || wireCode(err) === 'ML_ERR_OPS_IO' ? 'ML_ERR_OPS_UPGRADE' : wireCode(err);
      this.lastFailure = { buildId: o.buildId, code, message: errorMessage(err) };
      log.warn({ code, err: errorMessage(err) }, 'agent upgrade refused or failed; keeping the running build');
      this.#status(o.buildId, 'failed', code, errorMessage(err));
      return 'failed';
    } finally {
      this.#busy = false;
    }
  }

  /** The checks made before any byte is fetched; returns the signed size (or null when unsigned and allowed). */
  #check(o: Offer, log: Logger): number | null {
    if (o.sha256 !== o.buildId) throw new MeshlinkError('ML_ERR_UPGRADE_BUILD_ID', `the offer's sha256 ${o.sha256} is not its build id`);
    if (!releaseVersionSchema.safeParse(o.version).success) throw new MeshlinkError('ML_ERR_UPGRADE_NOT_BUNDLE', `the offer names no semantic version ("${o.version.slice(0, 64)}")`);
    const signed = o.signature !== undefined && this.opts.releaseKeys.length > 0;
    if (!signed && this.opts.allowUnsigned) {
      log.warn('INSECURE: accepting an agent upgrade without a verified release signature (--allow-unsigned-upgrade)');
    } else {
      if (this.opts.releaseKeys.length === 0) {
        throw new MeshlinkError('ML_ERR_UPGRADE_NO_RELEASE_KEY', 'this agent pins no release key (agent enroll --release-key, or --release-key on agent run), so it takes no upgrade');
      }
      if (o.size === undefined && o.signature !== undefined) throw new MeshlinkError('ML_ERR_UPGRADE_BUILD_ID', 'a signed offer must name the size of the build');
      const key = verifyRelease({ version: o.version, buildId: o.buildId, size: o.size ?? 0, keyId: o.keyId, signature: o.signature }, this.opts.releaseKeys);
      log.info({ keyId: key.keyId }, 'release signature verified');
    }
    const running = this.opts.version ?? VERSION;
    if (releaseVersionSchema.safeParse(running).success && compareVersions(o.version, running) < 0) {
      if (o.allowDowngrade !== true) throw new MeshlinkError('ML_ERR_UPGRADE_DOWNGRADE', `version ${o.version} is lower than this agent's ${running}; the operator did not force a downgrade`);
      log.warn({ running }, 'taking a downgrade the operator forced');
    }
    return o.size ?? null;
  }

  async #trialThenInstall(o: Offer, tmp: string, log: Logger): Promise<Outcome> {
    log.info({ deadlineMs: this.opts.healthTimeoutMs }, 'stopping to start the new build on trial');
    await this.#stopRunner();
    const { command, args } = (this.opts.trialCommand ?? defaultTrialCommand)(tmp);
    let result: TrialResult;
    try {
      result = await runTrial({ command, args, buildId: o.buildId, deadlineMs: this.opts.healthTimeoutMs });
    } catch (err) {
      result = { ok: false, reason: errorMessage(err) };
    }
    let record: UpgradeRecord;
    if (result.ok) {
      try {
        await this.#install(tmp);
        record = { buildId: o.buildId, state: 'applied', ts: Date.now(), reported: false };
        log.info({ previous: `${this.opts.bundlePath}.previous` }, 'the new build connected on trial and is installed; restarting');
      } catch (err) {
        await unlink(tmp).catch(() => {});
        record = { buildId: o.buildId, state: 'failed', code: 'ML_ERR_OPS_UPGRADE', message: `installing the new build failed: ${errorMessage(err)}`, ts: Date.now(), reported: false };
        log.error({ err: errorMessage(err) }, 'installing the new build failed; keeping the running build');
      }
    } else {
      await unlink(tmp).catch(() => {});
      record = { buildId: o.buildId, state: 'failed', code: 'ML_ERR_UPGRADE_HEALTH', message: `${result.reason}; kept the running build`, ts: Date.now(), reported: false };
      log.error({ code: record.code, reason: result.reason }, 'the new build failed its trial; rolled back to the running build');
    }
    if (record.state === 'failed') {
      this.#failed.set(o.buildId, Infinity);
      this.lastFailure = { buildId: o.buildId, code: record.code!, message: record.message! };
    }
    await writeUpgradeRecord(this.opts.stateDir, record).catch((err: unknown) => log.error({ err: errorMessage(err) }, 'cannot record the upgrade outcome'));
    this.#record = record;
    (this.opts.restart ?? (() => defaultRestart(this.runner)))();
    return record.state;
  }

  /** Stops the runner (one session per node: the trial connects as this node) and waits, bounded, until it has. */
  async #stopRunner(): Promise<void> {
    if (this.runner.state === 'stopped') return;
    const stopped = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, STOP_WAIT_MS);
      const onState = (state: string): void => {
        if (state === 'stopped') {
          clearTimeout(timer);
          resolve();
        } else this.runner.once('state', onState);
      };
      this.runner.once('state', onState);
    });
    this.runner.stop();
    await stopped;
  }

  #status(buildId: string, state: 'downloading' | 'verified' | 'applied' | 'failed', code?: string, message?: string): void {
    const session = this.runner.session;
    if (session && session.state === 'open') session.send('agent.upgrade.status', { buildId, state, ...(code ? { code } : {}), ...(message ? { message } : {}) });
  }

  async #download(o: Offer, tmp: string, size: number | null): Promise<void> {
    const identity = this.runner.identity;
    if (!identity) throw new Error('no identity loaded');
    // Only ever from the server this agent is enrolled with: the offer's path on our server's origin.
    const path = new URL(o.url, identity.server).pathname;
    if (path !== `/v1/agent/bundle/${o.buildId}`) throw new Error(`refusing to download from ${path.slice(0, 200)}`);
    const url = new URL(path, identity.server);
    const dispatcher = serverDispatcher(
      identity.server,
      this.runner.proxy,
      { ca: identity.caPem, cert: identity.certPem, key: identity.keyPem, rejectUnauthorized: true },
      { connectMs: 15_000, headersMs: 30_000, bodyMs: 30_000 },
    );
    const limit = size ?? MAX_DOWNLOAD_BYTES;
    const signal = AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS);
    try {
      const res = await request(url, { method: 'GET', dispatcher, signal }).catch((err: unknown) => {
        const endpoint = proxyFor(url, this.runner.proxy);
        throw (endpoint === null ? null : proxyErrorOf(err, endpoint, url.host)) ?? err;
      });
      if (res.statusCode !== 200) {
        await res.body.dump().catch(() => {});
        throw new Error(`download answered HTTP ${res.statusCode}`);
      }
      const hash = createHash('sha256');
      let received = 0;
      const mode = (await stat(this.opts.bundlePath)).mode & 0o777;
      const out = createWriteStream(tmp, { flags: 'w', mode });
      try {
        for await (const chunk of res.body) {
          received += (chunk as Buffer).length;
          if (received > limit) throw new MeshlinkError('ML_ERR_UPGRADE_BUILD_ID', `the download is larger than the ${limit} bytes ${size === null ? 'allowed' : 'signed'}`);
          hash.update(chunk as Buffer);
          if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
        }
      } finally {
        await new Promise<void>((r, reject) => out.end((err?: Error | null) => (err ? reject(err) : r())));
      }
      const digest = hash.digest('hex');
      if (digest !== o.buildId) throw new MeshlinkError('ML_ERR_OPS_CHECKSUM', `checksum mismatch: downloaded ${digest}, the signed build is ${o.buildId}`);
      if (size !== null && received !== size) throw new MeshlinkError('ML_ERR_UPGRADE_BUILD_ID', `downloaded ${received} bytes, the signed build has ${size}`);
      // The signed bytes are a bundle of the signed version (a signature over a non-bundle is still refused).
      const { version } = parseBundleHeader(await readFile(tmp));
      if (version !== o.version) throw new MeshlinkError('ML_ERR_UPGRADE_NOT_BUNDLE', `the bundle header says version ${version}, the offer ${o.version}`);
      const fh = await open(tmp, 'r');
      await fh.sync().finally(() => fh.close());
    } finally {
      await dispatcher.close().catch(() => {});
    }
  }

  async #install(tmp: string): Promise<void> {
    const bundle = this.opts.bundlePath;
    const dir = dirname(bundle);
    const prevTmp = join(dir, `.${basename(bundle)}.previous.tmp`);
    await copyFile(bundle, prevTmp);
    await rename(prevTmp, `${bundle}.previous`);
    await rename(tmp, bundle);
    const d = await open(dir, 'r');
    await d.sync().finally(() => d.close());
  }
}

/** The new file started as this process was: same node, same node flags, same arguments after the script. */
function defaultTrialCommand(file: string): { command: string; args: string[] } {
  return { command: process.execPath, args: [...process.execArgv, file, ...process.argv.slice(2)] };
}

function defaultRestart(runner: UpgraderRunner): void {
  // Whatever `agent run` sets as exit code after the graceful stop, the process leaves with 75.
  process.on('exit', () => {
    process.exitCode = AGENT_EXIT_CODES.upgradeRestart;
  });
  setTimeout(() => process.exit(AGENT_EXIT_CODES.upgradeRestart), 10_000).unref();
  runner.stop();
}
