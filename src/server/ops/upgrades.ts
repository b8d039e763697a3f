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

/**
 * Agent self-upgrade, server side: `upgrade set` stores a bundle (build id = SHA-256 of its bytes)
 * and makes it the offer; agents in the roll-out percentage whose hello reports another build id get
 * {version, buildId, url, sha256} in their welcome, and connected ones an agent.upgrade at once.
 * The bytes are served on the public gateway at GET /v1/agent/bundle/<buildId> to agents with a
 * valid client certificate (a public route of the ops feature: the gateway authenticates, then calls
 * serveAgentBundle).
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

/** The version a bundle names in its banner (`// meshlink-agent-bundle version=X`), if any. */
export function bundleVersion(bytes: Buffer): string | null {
  const head = bytes.subarray(0, 512).toString('utf8');
  return /meshlink-agent-bundle version=([0-9A-Za-z.+-]{1,64})/.exec(head)?.[1] ?? null;
}

export class UpgradeDistributor {
  constructor(
    private readonly deps: { store: Store; ops: OpsStore; sessions: AgentSessions; dataDir: string; logger: Logger },
  ) {}

  /** The offer for a node with this hello, if any. */
  offerFor(nodeId: string, hello: Pick<PayloadOf<'hello'>, 'buildId'>): InputOf<'agent.upgrade'> | null {
    const b = this.deps.ops.currentBundle();
    if (!b || !hello.buildId || hello.buildId === b.buildId || !inRollout(nodeId, b)) return null;
    const base = this.deps.store.getMeta(META_PUBLIC_URL) ?? '';
    return { version: b.version, buildId: b.buildId, url: `${base}${BUNDLE_PATH_PREFIX}${b.buildId}`, sha256: b.sha256 };
  }

  /** Stores the bundle and offers it to connected agents in the roll-out. Returns the row and how many were told. */
  async set(bytes: Buffer, opts: { percent: number; version: string | null }): Promise<{ bundle: BundleRow; notified: number }> {
    if (bytes.length === 0) throw new MeshlinkError('ML_ERR_OPS_UPGRADE', 'the bundle is empty');
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const version = opts.version ?? bundleVersion(bytes) ?? 'unknown';
    const file = join(this.deps.dataDir, 'ops', 'bundles', `${sha256}.mjs`);
    await writeFileAtomic(file, bytes, { mode: 0o600 });
    const bundle = this.deps.ops.setCurrentBundle({ buildId: sha256, sha256, version, size: bytes.length, file, percent: opts.percent });
    let notified = 0;
    for (const agent of this.deps.sessions.snapshot()) if (this.notify(agent)) notified++;
    this.deps.logger.info({ buildId: sha256, version, percent: opts.percent, notified }, 'agent bundle set');
    return { bundle, notified };
  }

  /** Sends agent.upgrade to one connected agent if it should move; true if sent. */
  notify(agent: AgentHandle): boolean {
    const offer = this.offerFor(agent.nodeId, agent.hello);
    // Backpressure is fine here: the offer is queued, and an agent that misses it gets it in its next welcome.
    return offer !== null && this.deps.sessions.send(agent, 'agent.upgrade', offer) !== 'closed';
  }
}

/** GET /v1/agent/bundle/<buildId> for an authenticated agent (called by the gateway). */
export async function serveAgentBundle(store: Store, req: IncomingMessage, res: ServerResponse, buildId: string): Promise<void> {
  const row = /^[0-9a-f]{64}$/.test(buildId) ? opsStoreOf(store).getBundle(buildId) : undefined;
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

