import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushFile, runAction, tailLogs } from '../../src/admin-api/tunnel-client.js';
import { tempDir } from '../server/helpers.js';
import { startOpsPair, waitUntil, type OpsPair } from './helpers.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('many operations at once on one agent connection', () => {
  let p: OpsPair;
  let local: { path: string; cleanup(): Promise<void> };
  beforeAll(async () => {
    local = await tempDir('ml-ops-many-');
    await mkdir(join(local.path, 'area'));
    p = await startOpsPair({ transferDirs: [join(local.path, 'area')], maxActions: 10 }, { server: { heartbeatIntervalMs: 200, offlineAfterMs: 3_000 } });
    const hooks = join(p.stateDir, 'hooks');
    await mkdir(hooks, { recursive: true, mode: 0o700 });
    await writeFile(join(hooks, 'work'), '#!/bin/sh\ni=0; while [ $i -lt 200 ]; do echo "work $MESHLINK_ARG_N line $i"; i=$((i+1)); done; sleep 0.3\n', { mode: 0o700 });
  });
  afterAll(async () => {
    await p?.stop();
    await local?.cleanup();
  });

  it('50 log tails, 5 transfers and 10 actions together; heartbeats keep arriving < 1 s apart', async () => {
    const session = p.ts.server.sessions!.current(p.nodeId)!.session;
    const beats: number[] = [];
    const onMsg = (m: { name: string }): void => {
      if (m.name === 'heartbeat') beats.push(Date.now());
    };
    session.on('message', onMsg);
    await waitUntil('heartbeats flowing', () => beats.length >= 2);

    // 50 followers.
    const aborts = Array.from({ length: 50 }, () => new AbortController());
    const outs = aborts.map(() => {
      const s = new PassThrough();
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      return { s, text: () => Buffer.concat(chunks).toString('utf8') };
    });
    const tails = aborts.map((a, i) => tailLogs(p.socket, { op: 'logs', node: p.nodeId, actor: 't', lines: 10, follow: true }, outs[i]!.s, a.signal));
    await waitUntil('50 followers', () => p.ops.logs.followers === 50);

    // 5 transfers of 16 MiB and 10 actions, all at once, while lines are logged.
    const files = await Promise.all(
      Array.from({ length: 5 }, async (_, i) => {
        const data = randomBytes(16 * 1024 * 1024);
        await writeFile(join(local.path, `f${i}`), data);
        return { data, path: join(local.path, `f${i}`), remote: join(local.path, 'area', `f${i}`) };
      }),
    );
    const started = Date.now();
    const transfers = files.map((f) => pushFile(p.socket, { node: p.nodeId, actor: 't', local: f.path, remote: f.remote }));
    const actions = Array.from({ length: 10 }, (_, n) => {
      const out = new PassThrough();
      const chunks: Buffer[] = [];
      out.on('data', (c: Buffer) => chunks.push(c));
      return runAction(p.socket, { op: 'action', node: p.nodeId, actor: 't', action: 'work', args: { n: String(n) } }, { stdout: out, stderr: new PassThrough() }).then((r) => ({ r, text: Buffer.concat(chunks).toString('utf8') }));
    });
    let logging = true;
    const logger = (async () => {
      let i = 0;
      while (logging) {
        p.logger.info({ i: i++ }, 'load-marker');
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const [tr, ac] = await Promise.all([Promise.all(transfers), Promise.all(actions)]);
    p.logger.info('final-marker');
    logging = false;
    await logger;
    const elapsed = Date.now() - started;

    for (const [i, t] of tr.entries()) {
      expect(t.sha256).toBe(sha(files[i]!.data));
      expect(sha(await readFile(files[i]!.remote))).toBe(sha(files[i]!.data));
    }
    for (const [n, a] of ac.entries()) {
      expect(a.r.exitCode).toBe(0);
      expect(a.text.split('\n').filter(Boolean)).toHaveLength(200);
      expect(a.text).toContain(`work ${n} line 199`);
    }
    await waitUntil('every tail saw the final line', () => outs.every((o) => o.text().includes('final-marker')), 10_000);
    for (const a of aborts) a.abort();
    await Promise.all(tails);
    await waitUntil('followers gone', () => p.ops.logs.followers === 0, 5_000);

    session.off('message', onMsg);
    const during = beats.filter((t) => t >= started - 1000);
    const gaps = during.slice(1).map((t, i) => t - during[i]!);
    const maxGap = Math.max(...gaps);
    console.log(`many-at-once: ${elapsed} ms, ${during.length} heartbeats, max gap ${maxGap} ms`);
    expect(during.length).toBeGreaterThan(3);
    expect(maxGap).toBeLessThan(1000);
  });
});
