import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pullFile, pushFile } from '../../src/admin-api/tunnel-client.js';
import { MeshlinkError } from '../../src/errors.js';
import { escapeArea } from '../helpers/escape-area.js';
import { startOpsPair, type OpsPair } from './helpers.js';

/**
 * Issue 17, item 10: a local user swaps a subdirectory of the transfer dir for a symlink to the
 * outside, in a loop, while an operator pulls and pushes through it. With path checks followed by
 * use by path, pulls returned the outside file and pushes wrote outside. Beneath held descriptors,
 * every operation either lands in the real subdirectory or is refused: 0 escapes.
 */

/** Swaps DIR/sub for a symlink to OUTSIDE and back until STOP exists (or a bounded number of rounds). */
const SWAPPER = `
const fs = require('node:fs');
const [sub, hold, outside, stop] = process.argv.slice(1);
let swaps = 0;
for (let round = 0; round < 20_000_000; round++) {
  if (round % 64 === 0 && fs.existsSync(stop)) break;
  fs.renameSync(sub, hold);
  fs.symlinkSync(outside, sub);
  swaps++;
  fs.unlinkSync(sub);
  fs.renameSync(hold, sub);
}
process.stdout.write(String(swaps));
`;

const REFUSALS = new Set(['ML_ERR_OPS_PATH_FORBIDDEN', 'ML_ERR_OPS_NOT_FOUND']);

describe('transfers while a subdirectory is swapped for a symlink in a loop', () => {
  let p: OpsPair;
  let tmp: { path: string; cleanup(): Promise<void> };
  let area: string;
  let outside: string;
  beforeAll(async () => {
    ({ tmp, area, outside } = await escapeArea('ml-ops-race-'));
    await writeFile(join(tmp.path, 'payload'), 'pushed bytes');
    p = await startOpsPair({ transferDirs: [area] });
  });
  afterAll(async () => {
    await p?.stop();
    await tmp?.cleanup();
  });

  it('150 pulls and 80 pushes: 0 return or write a file outside the transfer directory', async () => {
    const stop = join(tmp.path, 'stop');
    const swapper = spawn(process.execPath, ['-e', SWAPPER, join(area, 'sub'), join(area, 'sub.hold'), outside, stop], { stdio: ['ignore', 'pipe', 'inherit'] });
    let swaps = '';
    swapper.stdout.on('data', (c: Buffer) => (swaps += c.toString()));
    const swapperDone = new Promise<number | null>((r) => swapper.once('exit', r));

    const outcomes = { ok: 0, refused: 0, pullEscapes: 0 };
    const settle = async (work: Promise<unknown>): Promise<void> => {
      try {
        await work;
        outcomes.ok++;
      } catch (err) {
        if (!(err instanceof MeshlinkError) || !REFUSALS.has(err.code)) throw err;
        outcomes.refused++;
      }
    };
    const pulls: Array<() => Promise<void>> = [];
    const pushes: Array<() => Promise<void>> = [];
    for (let i = 0; i < 150; i++) {
      const local = join(tmp.path, `pulled-${i}`);
      pulls.push(async () => {
        await settle(pullFile(p.socket, { node: p.nodeId, actor: 't', remote: join(area, 'sub', 'f'), local }));
        if (existsSync(local) && (await readFile(local, 'utf8')) === 'OUTSIDE') outcomes.pullEscapes++;
      });
    }
    for (let i = 0; i < 80; i++) {
      pushes.push(() => settle(pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(tmp.path, 'payload'), remote: join(area, 'sub', `pushed-${i}`) })));
    }
    // Pulls and pushes interleaved, four at a time.
    const jobs = pulls.flatMap((pull, i) => (i < pushes.length ? [pull, pushes[i]!] : [pull]));
    let next = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (next < jobs.length) await jobs[next++]!();
      }),
    );
    await writeFile(stop, '');
    expect(await swapperDone).toBe(0);

    // Whatever was written outside is an escape: only the original file may be there.
    const pushEscapes = (await readdir(outside)).filter((n) => n !== 'f');
    console.info(`race: ${swaps} swaps, ${outcomes.ok} transfers done, ${outcomes.refused} refused, ${outcomes.pullEscapes} pull and ${pushEscapes.length} push escapes`);
    expect(Number(swaps)).toBeGreaterThan(0);
    expect(outcomes.ok + outcomes.refused).toBe(230);
    expect({ pullEscapes: outcomes.pullEscapes, pushEscapes }).toEqual({ pullEscapes: 0, pushEscapes: [] });
  });
});
