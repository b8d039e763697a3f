import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { attachSession } from '../../src/net/ws-session.js';
import type { Session } from '../../src/protocol/session.js';
import { AuditLog } from '../../src/server/audit-log.js';
import { createOpsFeature } from '../../src/server/ops/index.js';
import { waitFor } from '../e2e/harness.js';
import { dialConnect, enrollNode, startTestServer, type TestServer } from '../server/helpers.js';

/**
 * audit.batch from a hostile node (issue 17, item 6): an enrolled node's real mTLS session floods the
 * audit log with forged, backdated and future-dated records. Rate and size per node are capped and
 * times are clamped to the receive time; the operator's own records survive.
 */

let srv: TestServer;
const sockets: WebSocket[] = [];
const DAY = 24 * 3_600_000;

async function attacker(name: string): Promise<{ nodeId: string; session: Session }> {
  const node = await enrollNode(srv, name);
  const outcome = await dialConnect(srv.url, { ca: node.caPem, cert: node.certPem, key: node.keyPem });
  if (outcome.kind !== 'open') throw new Error(`attacker could not connect: ${outcome.kind}`);
  sockets.push(outcome.ws);
  const session = attachSession(outcome.ws, { role: 'agent' });
  await session.handshake({ agentVersion: 'x' });
  return { nodeId: node.nodeId, session };
}

beforeAll(async () => {
  srv = await startTestServer({}, { features: [createOpsFeature({ agentAudit: { batchesPerMinute: 5, perNodeRecords: 300 } })] });
});
afterAll(async () => {
  for (const ws of sockets) ws.terminate();
  await srv.stop();
});

describe('agent-reported audit records are limited per node', () => {
  it('by rate, by stored size (oldest pruned), with timestamps clamped to the receive time', async () => {
    const audit = AuditLog.of(srv.server.store);
    const operatorRecord = await audit.record({ source: 'admin', actor: 'operator', operation: 'tokens', nodeId: null, target: null, result: 'ok' });
    const evil = await attacker('audit-flood');
    const sentAt = Date.now();
    for (let b = 0; b < 40; b++) {
      const records = Array.from({ length: 100 }, (_, i) => ({ ts: i % 2 === 0 ? sentAt + 365 * DAY : 1_000, action: `forged-${b}-${i}`, result: 'ok' }));
      evil.session.send('audit.batch', { records });
    }
    // A marker sent after the flood: once the server has taken in the session's messages, a ping
    // returns; their writes may still be queued (on PostgreSQL each is a round trip), so wait for the
    // end state: the newest 300 of the 5 admitted batches. Too few or the wrong ones time out.
    await evil.session.ping(10_000);
    const rows = await waitFor('the admitted records stored and pruned', async () => {
      // What the agent reported (the node's enrollment has a record of the server's too).
      const r = (await audit.ofNode(evil.nodeId, 10_000)).filter((a) => a.source === 'agent');
      return r.length === 300 && r.every((a) => /^forged-[234]-/.test(a.operation)) ? r : null;
    });
    const receivedBy = Date.now();
    // 5 batches admitted of 40 (burst 5), 100 records each, then pruned to the newest 300 (the wait).
    expect(rows[0]!.operation).toBe('forged-4-99');
    for (const r of rows) {
      expect(r.ts).toBeLessThanOrEqual(receivedBy);
      expect(r.ts).toBeGreaterThanOrEqual(sentAt - DAY);
      expect(r.details).toHaveProperty('agentTs');
    }
    // The operator's record is still there, and is not pushed out by the node's.
    expect((await audit.list(10_000)).some((r) => r.id === operatorRecord)).toBe(true);
  });
});

describe('the audit listing', () => {
  it('pages by bytes: 5,000 records of 4 KiB details fit an admin answer (newest first)', async () => {
    const audit = AuditLog.of(srv.server.store);
    const details = { blob: 'y'.repeat(4000) };
    await srv.server.store.database.transaction(async (tx) => {
      for (let i = 0; i < 5_000; i++) await audit.record({ source: 'admin', actor: 'op', operation: `bulk-${i}`, nodeId: null, target: null, result: 'ok', details }, tx);
    });
    const listed = await audit.list(10_000);
    expect(JSON.stringify(listed).length).toBeLessThan(16 * 1024 * 1024);
    expect(listed.length).toBeGreaterThan(1_000);
    expect(listed[0]!.operation).toBe('bulk-4999');
  });
});
