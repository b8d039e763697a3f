import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, open, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { request } from 'undici';
import type { PayloadOf } from '../../protocol/registry.js';
import type { Logger } from '../../util/logger.js';
import type { AgentRunner } from '../connection.js';
import { AGENT_EXIT_CODES } from '../config.js';
import { proxyFor } from '../proxy.js';
import { proxyErrorOf, serverDispatcher } from '../proxy-dial.js';
import { errorMessage } from './errors.js';

/**
 * Self-upgrade of an agent that runs from a single-file bundle (docs/OPERATIONS.md, "Agent upgrade").
 *
 * Build identity is the SHA-256 of the bundle file the agent runs from, computed at start and sent
 * in hello.buildId. An offer (welcome.upgrade or agent.upgrade) whose buildId equals it is ignored,
 * so an agent never upgrades to itself and cannot loop; version strings are never compared.
 *
 * Otherwise: download from the agent's own server over its mTLS identity (undici, through the
 * runner's proxy when it uses one, proxy-dial.ts), hashing while
 * writing to a temp file next to the bundle; the SHA-256 must equal the one the control plane sent.
 * Then the current bundle is kept as `<bundle>.previous` (rollback), the new one renamed over it, the
 * directory fsynced, agent.upgrade.status "applied" sent, and the process ends with exit code 75,
 * which the systemd unit restarts (RestartForceExitStatus=75). Any failure leaves the running bundle
 * untouched and is reported as "failed"; the same build is not retried for RETRY_FAILED_AFTER_MS.
 */

export const MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024;
const RETRY_FAILED_AFTER_MS = 10 * 60_000;
const DOWNLOAD_TIMEOUT_MS = 120_000;

export type Offer = PayloadOf<'agent.upgrade'>;

export async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export interface UpgraderOptions {
  bundlePath: string;
  logger: Logger;
  /** Ends the process so the new bundle starts (default: graceful stop, then exit 75). */
  restart?: () => void;
}

/** What the upgrader reads off the runner: the session (status messages), the identity and proxy (download), stop (restart). */
export type UpgraderRunner = Pick<AgentRunner, 'session' | 'identity' | 'proxy' | 'stop'>;

export class SelfUpgrader {
  readonly buildId: string;
  #busy = false;
  readonly #failed = new Map<string, number>();

  private constructor(
    private readonly runner: UpgraderRunner,
    private readonly opts: UpgraderOptions,
    buildId: string,
  ) {
    this.buildId = buildId;
  }

  static async create(runner: UpgraderRunner, opts: UpgraderOptions): Promise<SelfUpgrader> {
    return new SelfUpgrader(runner, opts, await fileSha256(opts.bundlePath));
  }

  /** Handles an offer; resolves when it was applied, ignored or failed (never throws). */
  async offer(o: Offer): Promise<'ignored' | 'applied' | 'failed'> {
    if (o.buildId === this.buildId || this.#busy) return 'ignored';
    const failedAt = this.#failed.get(o.buildId);
    if (failedAt !== undefined && Date.now() - failedAt < RETRY_FAILED_AFTER_MS) return 'ignored';
    this.#busy = true;
    const log = this.opts.logger.child({ buildId: o.buildId, version: o.version });
    const tmp = join(dirname(this.opts.bundlePath), `.${basename(this.opts.bundlePath)}.${o.buildId.slice(0, 12)}.download`);
    try {
      this.#status(o.buildId, 'downloading');
      log.info('downloading agent upgrade');
      await this.#download(o, tmp);
      this.#status(o.buildId, 'verified');
      await this.#install(tmp);
      log.info({ previous: `${this.opts.bundlePath}.previous` }, 'agent upgrade applied; restarting');
      this.#status(o.buildId, 'applied');
      (this.opts.restart ?? (() => defaultRestart(this.runner)))();
      return 'applied';
    } catch (err) {
      await unlink(tmp).catch(() => {});
      this.#failed.set(o.buildId, Date.now());
      log.warn({ err: errorMessage(err) }, 'agent upgrade failed; keeping the running build');
      this.#status(o.buildId, 'failed', errorMessage(err));
      return 'failed';
    } finally {
      this.#busy = false;
    }
  }

  #status(buildId: string, state: 'downloading' | 'verified' | 'applied' | 'failed', message?: string): void {
    const session = this.runner.session;
    if (session && session.state === 'open') session.send('agent.upgrade.status', { buildId, state, ...(message ? { message } : {}) });
  }

  async #download(o: Offer, tmp: string): Promise<void> {
    const identity = this.runner.identity;
    if (!identity) throw new Error('no identity loaded');
    // Only ever from the server this agent is enrolled with: the offer's path on our server's origin.
    const path = new URL(o.url, identity.server).pathname;
    if (!path.startsWith('/v1/agent/bundle/')) throw new Error(`refusing to download from ${path}`);
    const url = new URL(path, identity.server);
    const dispatcher = serverDispatcher(
      identity.server,
      this.runner.proxy,
      { ca: identity.caPem, cert: identity.certPem, key: identity.keyPem, rejectUnauthorized: true },
      { connectMs: 15_000, headersMs: 30_000, bodyMs: 30_000 },
    );
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
      let size = 0;
      const mode = (await stat(this.opts.bundlePath)).mode & 0o777;
      const out = createWriteStream(tmp, { flags: 'w', mode });
      try {
        for await (const chunk of res.body) {
          size += (chunk as Buffer).length;
          if (size > MAX_DOWNLOAD_BYTES) throw new Error(`bundle larger than ${MAX_DOWNLOAD_BYTES} bytes`);
          hash.update(chunk as Buffer);
          if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
        }
      } finally {
        await new Promise<void>((r, reject) => out.end((err?: Error | null) => (err ? reject(err) : r())));
      }
      const digest = hash.digest('hex');
      if (digest !== o.sha256) throw new Error(`checksum mismatch: downloaded ${digest}, the control plane announced ${o.sha256}`);
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

function defaultRestart(runner: UpgraderRunner): void {
  // Whatever `agent run` sets as exit code after the graceful stop, the process leaves with 75.
  process.on('exit', () => {
    process.exitCode = AGENT_EXIT_CODES.upgradeRestart;
  });
  setTimeout(() => process.exit(AGENT_EXIT_CODES.upgradeRestart), 10_000).unref();
  runner.stop();
}
