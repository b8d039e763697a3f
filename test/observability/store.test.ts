import { beforeAll, describe, expect } from 'vitest';
import { OBSERVABILITY_MIGRATIONS } from '../../src/server/observability/migrations.js';
import { NodeSerial } from '../../src/util/node-serial.js';
import { ObservabilityStore, type RetentionLimits } from '../../src/server/observability/store.js';
import { MIGRATIONS as CORE_MIGRATIONS } from '../../src/server/store/migrations.js';
import { storeBackends } from '../helpers/store-backends.js';

/**
 * The observability store on both backends (a real SQLite file; a throwaway PostgreSQL cluster):
 * latest value per series, the per-node bounds (series by newest ts, warning lines by newest id),
 * drop counters, pruning by age. The same assertions run on each, so the SQL both accept is checked
 * to mean the same on both.
 */

const MIGRATIONS = [...CORE_MIGRATIONS, ...OBSERVABILITY_MIGRATIONS];
const LIMITS: RetentionLimits = { logsPerNode: 5, seriesPerNode: 3, maxAgeMs: 60_000 };

const BACKENDS = storeBackends();

describe.each(BACKENDS.map((b) => [b.title, b] as const))('the observability store on %s', (_title, backend) => {
  beforeAll(() => backend.ready(), 180_000);
  const fresh = async (): Promise<ObservabilityStore> => new ObservabilityStore(await backend.openStore(MIGRATIONS));

  backend.it('keeps the latest value of each series (labels in any key order are one series); an older sample does not overwrite', async () => {
    const obs = await fresh();
    await obs.saveMetrics('n1', [
      { name: 'cpu', labels: { b: '2', a: '1' }, value: 1, ts: 1_000 },
      // The same series twice in one batch: the newer wins, as it did one statement at a time.
      { name: 'cpu', labels: { a: '1', b: '2' }, value: 2, ts: 2_000 },
      { name: 'mem', labels: {}, value: 7.5, ts: 1_500 },
    ], LIMITS);
    await obs.saveMetrics('n1', [{ name: 'cpu', labels: { a: '1', b: '2' }, value: 99, ts: 1_999 }], LIMITS);
    expect(await obs.metricsOf('n1')).toEqual([
      { name: 'cpu', labels: { a: '1', b: '2' }, value: 2, ts: 2_000 },
      { name: 'mem', labels: {}, value: 7.5, ts: 1_500 },
    ]);
    await obs.saveMetrics('n1', [{ name: 'cpu', labels: { a: '1', b: '2' }, value: 3, ts: 2_000 }], LIMITS);
    expect((await obs.metricsOf('n1'))[0]!.value).toBe(3);
  });

  backend.it('bounds a node to its newest series by ts, leaving other nodes alone', async () => {
    const obs = await fresh();
    await obs.saveMetrics('n2', [{ name: 'keep', labels: {}, value: 1, ts: 10 }], LIMITS);
    // An agent inventing label values: 10 series, only the 3 newest stay.
    const invented = Array.from({ length: 10 }, (_, i) => ({ name: 'x', labels: { i: String(i) }, value: i, ts: 5_000 + i }));
    await obs.saveMetrics('n1', invented, LIMITS);
    const kept = await obs.metricsOf('n1');
    expect(kept.map((m) => m.labels.i).sort()).toEqual(['7', '8', '9']);
    expect(await obs.metricsOf('n2')).toEqual([{ name: 'keep', labels: {}, value: 1, ts: 10 }]);
  });

  backend.it('keeps the newest warning lines per node, newest first, with their fields', async () => {
    const obs = await fresh();
    const lines = (from: number, n: number) => Array.from({ length: n }, (_, i) => ({ ts: from + i, level: 'warn', msg: `line ${from + i}`, fields: i % 2 === 0 ? { k: from + i } : null }));
    await obs.saveLogs('n1', lines(0, 4), LIMITS, 100);
    await obs.saveLogs('n2', lines(1000, 2), LIMITS, 100);
    await obs.saveLogs('n1', lines(10, 4), LIMITS, 200);
    const recent = await obs.recentLogs('n1', 50);
    expect(recent.map((l) => l.msg)).toEqual(['line 13', 'line 12', 'line 11', 'line 10', 'line 3']);
    expect(recent[1]).toEqual({ ts: 12, level: 'warn', msg: 'line 12', fields: { k: 12 }, receivedAt: 200 });
    expect(recent[0]!.fields).toBeNull();
    expect((await obs.recentLogs('n1', 2)).map((l) => l.msg)).toEqual(['line 13', 'line 12']);
    expect((await obs.recentLogs('n2', 50)).length).toBe(2);
    expect(await obs.logCount()).toBe(7);
  });

  backend.it('adds up drop counters per node and kind, ignoring zero', async () => {
    const obs = await fresh();
    await obs.addDrops('n3', 'logs', 2);
    await obs.addDrops('n3', 'logs', 5);
    await obs.addDrops('n3', 'metrics.rate_limited', 1);
    await obs.addDrops('n3', 'audit', 0);
    expect(await obs.drops('n3')).toEqual({ logs: 7, 'metrics.rate_limited': 1 });
    expect(await obs.drops('nobody')).toEqual({});
  });

  backend.it('keeps a node’s batches in the order they arrived when their writes are queued back to back (the handlers’ chain)', async () => {
    const obs = await fresh();
    const serial = new NodeSerial();
    // 40 batches of one node and 40 of another, queued without waiting, as the handlers do: on
    // PostgreSQL the pool runs them on several connections at once without the chain, and this fails
    // (saveLogs straight into Promise.all: wrong lines kept, 2 runs of 2); SQLite passes either way.
    const queued: Array<Promise<void>> = [];
    for (let i = 0; i < 40; i++) {
      for (const node of ['a', 'b']) {
        const q = serial.run(node, () => obs.saveLogs(node, [{ ts: i, level: 'warn', msg: `${node}${i}`, fields: null }], LIMITS, i));
        if (q === null) throw new Error('the chain refused a batch below its cap');
        queued.push(q);
      }
    }
    await Promise.all(queued);
    expect((await obs.recentLogs('a', 50)).map((l) => l.msg)).toEqual(['a39', 'a38', 'a37', 'a36', 'a35']);
    expect((await obs.recentLogs('b', 50)).map((l) => l.msg)).toEqual(['b39', 'b38', 'b37', 'b36', 'b35']);
  });

  backend.it('prunes lines received and series reported before the age limit', async () => {
    const o = await fresh();
    await o.saveLogs('a', [{ ts: 1, level: 'error', msg: 'old', fields: null }], LIMITS, 1_000);
    await o.saveLogs('a', [{ ts: 2, level: 'error', msg: 'new', fields: null }], LIMITS, 100_000);
    await o.saveMetrics('a', [{ name: 'old', labels: {}, value: 1, ts: 1_000 }, { name: 'new', labels: {}, value: 1, ts: 100_000 }], LIMITS);
    await o.prune(LIMITS, 100_000);
    expect((await o.recentLogs('a', 10)).map((l) => l.msg)).toEqual(['new']);
    expect((await o.metricsOf('a')).map((m) => m.name)).toEqual(['new']);
  });
});
