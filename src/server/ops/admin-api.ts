import { MeshlinkError } from '../../errors.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import type { AdminRoutes } from '../admin-routes.js';
import { readBody, sendError, sendJson } from '../http-json.js';
import type { AuditLog } from '../audit-log.js';
import type { OpsStore } from './store.js';
import { MAX_BUNDLE_BYTES, type UpgradeDistributor } from './upgrades.js';

/**
 * JSON endpoints of the ops feature on the admin socket (docs/OPERATIONS.md, "Admin API"):
 *
 *   GET  /v1/ops/audit?limit=N                              → AuditRecord[] (newest first)
 *   POST /v1/ops/upgrade?percent=N[&version=V]&actor=A      body: the bundle bytes → {buildId, sha256, version, size, percent, notified}
 *   GET  /v1/ops/upgrade                                    → {current, nodes: UpgradeStatusRow[]}
 *
 * Streaming operations (action, exec, logs, cp) use the WebSocket at /v1/ops/stream (tunnel-protocol.ts).
 */

const auditQuery = z.object({ limit: z.coerce.number().int().min(1).max(10_000).default(100) });
const upgradeQuery = z.object({
  percent: z.coerce.number().int().min(0).max(100).default(100),
  version: z.string().regex(/^[0-9A-Za-z.+-]{1,64}$/).optional(),
  actor: z.string().min(1).max(128).default('unknown'),
});

function query<T extends z.ZodType>(req: IncomingMessage, schema: T): z.output<T> {
  const params = Object.fromEntries(new URL(req.url ?? '/', 'http://admin').searchParams);
  const parsed = schema.safeParse(params);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new MeshlinkError('ML_ERR_OPS_BAD_REQUEST', `invalid query: ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`);
  }
  return parsed.data;
}

function guarded(handler: (req: IncomingMessage, res: ServerResponse) => Promise<void>) {
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    try {
      await handler(req, res);
    } catch (err) {
      sendError(res, err);
    }
  };
}

export function registerOpsAdminRoutes(admin: AdminRoutes, deps: { ops: OpsStore; audit: AuditLog; upgrades: UpgradeDistributor }): void {
  admin.add(
    'GET /v1/ops/audit',
    guarded(async (req, res) => {
      const { limit } = query(req, auditQuery);
      sendJson(res, 200, deps.audit.list(limit));
    }),
  );

  admin.add(
    'POST /v1/ops/upgrade',
    guarded(async (req, res) => {
      const q = query(req, upgradeQuery);
      const auditId = deps.audit.start({ actor: q.actor, operation: 'upgrade.set', nodeId: null, target: null, details: { percent: q.percent } });
      try {
        const bytes = await readBody(req, MAX_BUNDLE_BYTES);
        const { bundle, notified } = await deps.upgrades.set(bytes, { percent: q.percent, version: q.version ?? null });
        deps.audit.finish(auditId, 'ok', { percent: q.percent, buildId: bundle.buildId, version: bundle.version, size: bundle.size, notified });
        sendJson(res, 200, { buildId: bundle.buildId, sha256: bundle.sha256, version: bundle.version, size: bundle.size, percent: bundle.percent, notified });
      } catch (err) {
        deps.audit.finish(auditId, `error:${(err as { code?: string }).code ?? 'INTERNAL'}`);
        throw err;
      }
    }),
    { auditsItself: true },
  );

  admin.add(
    'GET /v1/ops/upgrade',
    guarded(async (_req, res) => {
      const current = deps.ops.currentBundle();
      sendJson(res, 200, { current: current ? { ...current, file: undefined } : null, nodes: deps.ops.listUpgradeStatus() });
    }),
  );
}
