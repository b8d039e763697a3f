import { loadIdentity } from '../identity.js';
import type { AgentRunner } from '../connection.js';
import { VERSION } from '../../version.js';

/**
 * Built-in actions. Each returns its output and exit code; hooks (executables in the hooks dir) are
 * the extension point for anything host-specific.
 *
 * - ping: answers "pong" (proves the stream path end to end).
 * - diagnostics: JSON with versions, uptime, certificate expiry, connection figures and the agent's
 *   own resource counts (active handles, followers, transfers), used by tests to show nothing leaks.
 * - reconcile: re-checks the agent's state against what it runs with (identity on disk vs the
 *   certificate in use, a ping round trip to the server) and runs every reconciler another feature
 *   registered on the runner (addReconciler, e.g. the mesh); output is a JSON report, exit 1 on drift.
 */

/** What the built-ins read off the runner: identity, connection figures and the features' reconcilers. */
export type BuiltinRunner = Pick<AgentRunner, 'identity' | 'session' | 'state' | 'lastHeartbeatRttMs' | 'reconcilers'>;

export interface BuiltinContext {
  runner: BuiltinRunner;
  stateDir: string;
  buildId: string | null;
  /** Live counters of the ops feature. */
  counters(): Record<string, number>;
}

export interface BuiltinResult {
  output: string;
  exitCode: number;
}

export const BUILTIN_ACTIONS = ['ping', 'diagnostics', 'reconcile'] as const;

export async function runBuiltin(name: string, ctx: BuiltinContext): Promise<BuiltinResult | null> {
  switch (name) {
    case 'ping':
      return { output: 'pong\n', exitCode: 0 };
    case 'diagnostics':
      return { output: JSON.stringify(diagnostics(ctx), null, 2) + '\n', exitCode: 0 };
    case 'reconcile':
      return reconcile(ctx);
    default:
      return null;
  }
}

export function diagnostics(ctx: BuiltinContext): Record<string, unknown> {
  const id = ctx.runner.identity;
  const session = ctx.runner.session;
  const resources: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] ?? 0) + 1;
  const mem = process.memoryUsage();
  return {
    versions: { agent: VERSION, buildId: ctx.buildId, node: process.versions.node, openssl: process.versions.openssl },
    uptimeSec: Math.round(process.uptime()),
    pid: process.pid,
    certificate: id
      ? { serial: id.cert.serial, notAfter: id.cert.notAfter.toISOString(), expiresInDays: Math.floor((id.cert.notAfter.getTime() - Date.now()) / 86_400_000) }
      : null,
    connection: {
      state: ctx.runner.state,
      protocolVersion: session?.version ?? null,
      lastHeartbeatRttMs: ctx.runner.lastHeartbeatRttMs,
      openStreams: session?.streamCount ?? 0,
      inflightBytes: session?.inflightBytes ?? 0,
    },
    ops: ctx.counters(),
    activeResources: resources,
    memory: { rss: mem.rss, heapUsed: mem.heapUsed, external: mem.external, arrayBuffers: mem.arrayBuffers },
  };
}

async function reconcile(ctx: BuiltinContext): Promise<BuiltinResult> {
  const checks: Array<{ name: string; ok: boolean; detail: string }> = [];
  const running = ctx.runner.identity;
  try {
    const onDisk = await loadIdentity(ctx.stateDir);
    const same = running !== null && onDisk.cert.serial === running.cert.serial;
    checks.push({ name: 'identity', ok: same, detail: same ? `certificate ${onDisk.cert.serial} in use` : `disk has ${onDisk.cert.serial}, running with ${running?.cert.serial ?? 'none'}` });
  } catch (err) {
    checks.push({ name: 'identity', ok: false, detail: (err as Error).message });
  }
  const session = ctx.runner.session;
  if (session && session.state === 'open') {
    try {
      const rtt = await session.ping(5_000);
      checks.push({ name: 'server', ok: true, detail: `ping round trip ${rtt} ms` });
    } catch (err) {
      checks.push({ name: 'server', ok: false, detail: (err as Error).message });
    }
  } else checks.push({ name: 'server', ok: false, detail: 'not connected' });
  for (const fn of ctx.runner.reconcilers) {
    try {
      const r = await fn();
      checks.push({ name: r.name, ok: r.drift.length === 0, detail: r.drift.length === 0 ? 'in sync' : `corrected: ${r.drift.join('; ')}` });
    } catch (err) {
      checks.push({ name: 'reconciler', ok: false, detail: (err as Error).message });
    }
  }
  const ok = checks.every((c) => c.ok);
  return { output: JSON.stringify({ ok, checks }, null, 2) + '\n', exitCode: ok ? 0 : 1 };
}
