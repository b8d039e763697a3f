import { beforeAll, describe, expect } from 'vitest';
import { AuditLog } from '../../src/server/audit-log.js';
import { AgentAuditIntake } from '../../src/server/ops/agent-audit.js';
import { OPS_MIGRATIONS } from '../../src/server/ops/migrations.js';
import { MIGRATIONS as CORE_MIGRATIONS } from '../../src/server/store/migrations.js';
import { createLogger } from '../../src/util/logger.js';
import { storeBackends } from '../helpers/store-backends.js';

/**
 * The agent audit intake on both backends: batches arriving back to back (the handler does not wait
 * for the store) are admitted by rate as they arrive, written in arrival order, and pruned to the
 * newest per node, so the end state is the same on SQLite and on PostgreSQL's pool.
 */

const MIGRATIONS = [...CORE_MIGRATIONS, ...OPS_MIGRATIONS];
const silent = createLogger({ name: 'test', level: 'silent' });

const BACKENDS = storeBackends();

describe.each(BACKENDS.map((b) => [b.title, b] as const))('agent audit intake on %s', (_title, backend) => {
  beforeAll(() => backend.ready(), 180_000);

  backend.it('admits by rate at arrival, writes in arrival order and keeps the newest per node', async () => {
    const audit = AuditLog.of(await backend.openStore(MIGRATIONS));
    const operator = await audit.record({ source: 'admin', actor: 'op', operation: 'tokens', nodeId: null, target: null, result: 'ok' });
      const intake = new AgentAuditIntake(audit, silent, { batchesPerMinute: 4, perNodeRecords: 25 });
      const now = 10_000_000;
      const stored: Array<Promise<number>> = [];
      for (let b = 0; b < 10; b++) {
        for (const node of ['a', 'b']) {
          const records = Array.from({ length: 10 }, (_, i) => ({ ts: now - 1, action: `${node}-${b}-${i}`, result: 'ok' }));
          stored.push(intake.receive(node, { records }, now));
        }
      }
      // 4 batches of each node admitted (burst 4), the other 6 refused at once.
      expect(await Promise.all(stored)).toEqual([...Array(8).fill(10), ...Array(12).fill(0)]);
      for (const node of ['a', 'b']) {
        const kept = (await audit.ofNode(node, 1_000)).map((r) => r.operation);
        // Newest first: batch 3's ten, batch 2's ten, and the newest five of batch 1.
        const expected = [3, 2, 1].flatMap((b) => Array.from({ length: 10 }, (_, i) => `${node}-${b}-${9 - i}`)).slice(0, 25);
        expect(kept).toEqual(expected);
      }
      expect((await audit.list(1_000)).some((r) => r.id === operator)).toBe(true);
    });
});
