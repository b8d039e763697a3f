import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { InputOf, PayloadOf } from '../../protocol/registry.js';
import { writeFileAtomic } from '../../util/atomic-file.js';
import type { Logger } from '../../util/logger.js';
import { META_PUBLIC_URL } from '../nodes.js';
import type { AgentHandle, AgentSessions } from '../agent-sessions.js';
import { opsStoreOf, type BundleRow, type OpsStore } from './store.js';
import type { Store } from '../store/store.js';
import { MeshlinkError } from '../../errors.js';
import { BUILD_ID_PATTERN, buildIdOf, compareVersions, parseBundleHeader, releaseVersionSchema, verifyRelease, type ReleaseKey, type ReleaseManifest } from '../../contract/release.js';

/**
 * Agent self-upgrade, server side: `upgrade set` stores a signed bundle (build id = SHA-256 of its
 * bytes) and makes it the offer; agents in the roll-out percentage whose hello reports another build
 * id get {version, buildId, url, sha256, size, keyId, signature, allowDowngrade} in their welcome, and
 * connected ones an agent.upgrade at once. The bytes are served on the public gateway at
 * GET /v1/agent/bundle/<buildId> to agents with a valid client certificate (a public route of the ops
 * feature: the gateway authenticates, then calls serveAgentBundle).
 *
 * The server refuses, before storing anything: a file that is not a bundle (contract/release.ts
 * defines one), a build without a signature or whose signature does not verify against the release
 * keys it was started with (`server start --release-key`), and a version lower than the current
 * offer unless the operator forces it. It never signs: the release key stays with the operator, and
 * every agent verifies again against the key it pins, so this check spares operators a roll-out that
 * agents would refuse, it is not what agents rely on.
 *
 * Only agents that report a buildId (they run from a bundle) get offers: an agent installed from the
 * npm package has no single file to replace.
 */

export const BUNDLE_PATH_PREFIX = '/v1/agent/bundle/';

/** Deterministic roll-out bucket of a node for a build: 0..99. */
export function rolloutBucket(nodeId: string, buildId: string): number {
  return createHash('sha256').update(`${nodeId}:${buildId}`).digest().readUInt32BE(0) % 100;
}

export function inRollout(nodeId: string, bundle: Pick<BundleRow, 'buildId' | 'percent'>): boolean {
  return rolloutBucket(nodeId, bundle.buildId) < bundle.percent;
}

export interface UpgradeDistributorDeps {
  store: Store;
  ops: OpsStore;
  sessions: AgentSessions;
  dataDir: string;
  releaseKeys: readonly ReleaseKey[];
  logger: Logger;
}

export class UpgradeDistributor {
  readonly #deps: UpgradeDistributorDeps;
  /**
   * The current offer, kept in memory: welcomes are built synchronously (agent-sessions.ts,
   * WelcomeContributor) and the store is async. Only this distributor changes the offer (`upgrade
   * set` needs the running server), so the copy is the row. Replicas sharing one PostgreSQL database
   * would each keep their own copy: another replica's `upgrade set` reaches this one's welcomes only
   * after its restart (not solved here; WelcomeContributor would have to be async, or the copy refreshed).
   */
  #current: BundleRow | undefined;
  /**
   * The server's public URL (meta `public_url`) for the offer's `url`. The server stores it after the
   * features start, so it is read again whenever an offer is made and the next offer has the new one;
   * a first offer may name the previous start's URL. Agents take only the path from it and download
   * from the server they are enrolled with (agent/ops/upgrade.ts), so that costs nothing.
   */
  #base = '';
  #readingBase: Promise<void> | null = null;
  #setting: Promise<unknown> = Promise.resolve();

  private constructor(deps: UpgradeDistributorDeps) {
    this.#deps = deps;
  }

  /** A distributor with the stored offer loaded. */
  static async open(deps: UpgradeDistributorDeps): Promise<UpgradeDistributor> {
    const d = new UpgradeDistributor(deps);
    d.#current = await deps.ops.currentBundle();
    await d.#readBase();
    return d;
  }

  /** The offer for a node with this hello, if any (never a row stored before bundles were signed). */
  offerFor(nodeId: string, hello: Pick<PayloadOf<'hello'>, 'buildId'>): InputOf<'agent.upgrade'> | null {
    const b = this.#current;
    if (!b || b.signature === null || !hello.buildId || hello.buildId === b.buildId || !inRollout(nodeId, b)) return null;
    this.#refreshBase();
    return {
      version: b.version,
      buildId: b.buildId,
      url: `${this.#base}${BUNDLE_PATH_PREFIX}${b.buildId}`,
      sha256: b.sha256,
      size: b.size,
      ...(b.keyId ? { keyId: b.keyId } : {}),
      signature: Buffer.from(b.signature, 'base64'),
      ...(b.allowDowngrade ? { allowDowngrade: true } : {}),
    };
  }

  /**
   * Checks, stores and offers a bundle to connected agents in the roll-out. `manifest` is the
   * detached signature file (`release sign`); its build id and size must be those of `bytes`.
   * Returns the row and how many were told.
   */
  set(bytes: Buffer, opts: { percent: number; manifest: ReleaseManifest | null; allowDowngrade: boolean }): Promise<{ bundle: BundleRow; notified: number }> {
    // One at a time: each is checked against the offer the one before it left (the downgrade check),
    // and the kept copy is the row of the last commit (on PostgreSQL two commits could settle out of order).
    const result = this.#setting.then(() => this.#set(bytes, opts));
    this.#setting = result.catch(() => undefined);
    return result;
  }

  async #set(bytes: Buffer, opts: { percent: number; manifest: ReleaseManifest | null; allowDowngrade: boolean }): Promise<{ bundle: BundleRow; notified: number }> {
    const { version } = parseBundleHeader(bytes);
    const buildId = buildIdOf(bytes);
    const m = opts.manifest;
    if (m === null) throw new MeshlinkError('ML_ERR_UPGRADE_UNSIGNED', 'the bundle has no release signature: sign it with `meshlink release sign BUNDLE --key KEY` and pass the .sig file');
    if (m.buildId !== buildId || m.size !== bytes.length) {
      throw new MeshlinkError('ML_ERR_UPGRADE_BUILD_ID', `the signature file is for build ${m.buildId} (${m.size} bytes), this bundle is ${buildId} (${bytes.length} bytes)`);
    }
    if (m.version !== version) throw new MeshlinkError('ML_ERR_UPGRADE_NOT_BUNDLE', `the bundle header says version ${version}, its signature file ${m.version}`);
    if (this.#deps.releaseKeys.length === 0) {
      throw new MeshlinkError('ML_ERR_UPGRADE_NO_RELEASE_KEY', 'this server has no release key to verify bundles with: start it with --release-key ed25519:… (printed by `meshlink release keygen`)');
    }
    const key = verifyRelease({ version, buildId, size: bytes.length, keyId: m.keyId, signature: Buffer.from(m.signature, 'base64') }, this.#deps.releaseKeys);
    const current = this.#current;
    if (current && current.buildId !== buildId && releaseVersionSchema.safeParse(current.version).success && compareVersions(version, current.version) < 0 && !opts.allowDowngrade) {
      throw new MeshlinkError('ML_ERR_UPGRADE_DOWNGRADE', `version ${version} is lower than the offered ${current.version}; pass --allow-downgrade to roll back to it`);
    }
    const file = join(this.#deps.dataDir, 'ops', 'bundles', `${buildId}.mjs`);
    await writeFileAtomic(file, bytes, { mode: 0o600 });
    const bundle = await this.#deps.ops.setCurrentBundle({
      buildId,
      sha256: buildId,
      version,
      size: bytes.length,
      file,
      percent: opts.percent,
      signature: m.signature,
      keyId: key.keyId,
      allowDowngrade: opts.allowDowngrade,
    });
    this.#current = bundle;
    await this.#readBase();
    let notified = 0;
    for (const agent of this.#deps.sessions.snapshot()) if (this.notify(agent)) notified++;
    this.#deps.logger.info({ buildId, version, keyId: key.keyId, percent: opts.percent, allowDowngrade: opts.allowDowngrade, notified }, 'agent bundle set');
    return { bundle, notified };
  }

  /** Sends agent.upgrade to one connected agent if it should move; true if sent. */
  notify(agent: AgentHandle): boolean {
    const offer = this.offerFor(agent.nodeId, agent.hello);
    // Backpressure is fine here: the offer is queued, and an agent that misses it gets it in its next welcome.
    return offer !== null && this.#deps.sessions.send(agent, 'agent.upgrade', offer) !== 'closed';
  }

  async #readBase(): Promise<void> {
    this.#base = (await this.#deps.store.getMeta(META_PUBLIC_URL)) ?? '';
  }

  /** Re-reads the public URL in the background (one read at a time; a failed read keeps the old one). */
  #refreshBase(): void {
    if (this.#readingBase) return;
    this.#readingBase = this.#readBase()
      .catch((err: unknown) => this.#deps.logger.warn({ err }, 'could not read the public URL for upgrade offers'))
      .finally(() => (this.#readingBase = null));
  }
}

/** GET /v1/agent/bundle/<buildId> for an authenticated agent (called by the gateway). */
export async function serveAgentBundle(store: Store, req: IncomingMessage, res: ServerResponse, buildId: string): Promise<void> {
  const row = BUILD_ID_PATTERN.test(buildId) ? await opsStoreOf(store).getBundle(buildId) : undefined;
  if (!row) {
    res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'ML_ERR_OPS_NOT_FOUND', message: `no agent bundle ${buildId}` }));
    return;
  }
  const st = await stat(row.file);
  res.writeHead(200, { 'content-type': 'application/javascript', 'content-length': String(st.size), 'cache-control': 'no-store', 'x-meshlink-sha256': row.sha256 });
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  await new Promise<void>((resolve) => {
    const src = createReadStream(row.file);
    src.on('error', () => {
      res.destroy();
      resolve();
    });
    res.on('close', resolve);
    src.pipe(res);
  });
}

