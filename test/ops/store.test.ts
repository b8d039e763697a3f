import { beforeAll, describe, expect, it } from 'vitest';
import { OPS_MIGRATIONS } from '../../src/server/ops/migrations.js';
import { NodeSerial } from '../../src/util/node-serial.js';
import { OpsStore } from '../../src/server/ops/store.js';
import { MIGRATIONS as CORE_MIGRATIONS } from '../../src/server/store/migrations.js';
import { storeBackends } from '../helpers/store-backends.js';

/**
 * The ops store on both backends (a real SQLite file; a throwaway PostgreSQL cluster): one current
 * bundle at a time, re-offering a build updates its row, the last upgrade status per node; and the
 * per-node write chain the ops and observability handlers queue their writes on.
 */

const MIGRATIONS = [...CORE_MIGRATIONS, ...OPS_MIGRATIONS];

const BACKENDS = storeBackends();

const bundle = (buildId: string, extra: Partial<{ percent: number; version: string; allowDowngrade: boolean; signature: string | null }> = {}) => ({
  buildId,
  sha256: buildId,
  version: extra.version ?? '1.0.0',
  size: 1234,
  file: `/data/ops/bundles/${buildId}.mjs`,
  percent: extra.percent ?? 100,
  signature: extra.signature === undefined ? 'c2ln' : extra.signature,
  keyId: 'k1',
  allowDowngrade: extra.allowDowngrade ?? false,
});

describe.each(BACKENDS.map((b) => [b.title, b] as const))('the ops store on %s', (_title, backend) => {
  beforeAll(() => backend.ready(), 180_000);
  const fresh = async (): Promise<OpsStore> => new OpsStore(await backend.openStore(MIGRATIONS));

  backend.it('makes the stored bundle the one current offer; setting a build again updates it in place', async () => {
    const ops = await fresh();
    expect(await ops.currentBundle()).toBeUndefined();
    const a = await ops.setCurrentBundle(bundle('a'.repeat(64), { percent: 10 }), 1_000);
    expect(a).toEqual({ ...bundle('a'.repeat(64), { percent: 10 }), current: true, createdAt: 1_000 });
    await ops.setCurrentBundle(bundle('b'.repeat(64), { version: '2.0.0', signature: null }), 2_000);
    expect((await ops.currentBundle())?.buildId).toBe('b'.repeat(64));
    expect((await ops.getBundle('a'.repeat(64)))?.current).toBe(false);
    expect((await ops.getBundle('b'.repeat(64)))?.signature).toBeNull();
    // Back to a, forced: percent, version and flags change, created_at stays the first one.
    const again = await ops.setCurrentBundle(bundle('a'.repeat(64), { percent: 50, version: '1.0.1', allowDowngrade: true }), 3_000);
    expect(again).toMatchObject({ percent: 50, version: '1.0.1', allowDowngrade: true, current: true, createdAt: 1_000 });
    expect((await ops.getBundle('b'.repeat(64)))?.current).toBe(false);
    expect(await ops.getBundle('c'.repeat(64))).toBeUndefined();
  });

  backend.it('keeps the last upgrade status of each node, listed by node id', async () => {
    const ops = await fresh();
    await ops.setUpgradeStatus({ nodeId: 'n2', buildId: 'x', state: 'downloading', code: null, message: null, ts: 1 });
    await ops.setUpgradeStatus({ nodeId: 'n1', buildId: 'x', state: 'verified', code: null, message: null, ts: 2 });
    await ops.setUpgradeStatus({ nodeId: 'n2', buildId: 'y', state: 'failed', code: 'ML_ERR_UPGRADE_SIGNATURE', message: 'bad', ts: 3 });
    expect(await ops.listUpgradeStatus()).toEqual([
      { nodeId: 'n1', buildId: 'x', state: 'verified', code: null, message: null, ts: 2 },
      { nodeId: 'n2', buildId: 'y', state: 'failed', code: 'ML_ERR_UPGRADE_SIGNATURE', message: 'bad', ts: 3 },
    ]);
  });
});

describe('a node’s write chain', () => {
  const later = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

  it('runs one node’s tasks in the order queued, even when an earlier one is slower; other nodes do not wait', async () => {
    const serial = new NodeSerial();
    const done: string[] = [];
    const first = serial.run('a', async () => {
      await later(50);
      done.push('a1');
    });
    const second = serial.run('a', async () => {
      done.push('a2');
      return 2;
    });
    const other = serial.run('b', async () => {
      done.push('b1');
    });
    await other;
    expect(done).toEqual(['b1']);
    expect(await second).toBe(2);
    await first;
    expect(done).toEqual(['b1', 'a1', 'a2']);
    expect(serial.pending('a')).toBe(0);
  });

  it('goes on after a task that fails (its caller gets the error)', async () => {
    const serial = new NodeSerial();
    const failed = serial.run('a', () => Promise.reject(new Error('store down')));
    const next = serial.run('a', async () => 'ok');
    await expect(failed).rejects.toThrow('store down');
    expect(await next).toBe('ok');
  });

  it('refuses a task while the node has maxPending queued, and takes tasks again once they settle', async () => {
    const serial = new NodeSerial(3);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const queued = [serial.run('a', () => gate), serial.run('a', async () => {}), serial.run('a', async () => {})];
    expect(queued.every((q) => q !== null)).toBe(true);
    expect(serial.run('a', async () => {})).toBeNull();
    expect(serial.run('b', async () => {})).not.toBeNull();
    release();
    await serial.idle();
    expect(serial.pending('a')).toBe(0);
    expect(serial.run('a', async () => {})).not.toBeNull();
  });
});
