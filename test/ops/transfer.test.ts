import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, chmod, chown, link, mkdir, open, readFile, readdir, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pullFile, pushFile, runTunnel } from '../../src/admin-api/tunnel-client.js';
import { tempDir } from '../server/helpers.js';
import { startOpsPair, waitUntil, type OpsPair } from './helpers.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('file transfer over real mTLS', () => {
  let p: OpsPair;
  let none: OpsPair;
  let local: { path: string; cleanup(): Promise<void> };
  let remote: string;
  beforeAll(async () => {
    local = await tempDir('ml-ops-local-');
    remote = join(local.path, 'agent-area');
    await mkdir(remote);
    [p, none] = await Promise.all([startOpsPair({ transferDirs: [remote] }), startOpsPair({})]);
  });
  afterAll(async () => {
    await Promise.all([p?.stop(), none?.stop()]);
    await local?.cleanup();
  });

  it('push and pull round trip with SHA-256 end to end', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    await writeFile(join(local.path, 'up.bin'), data);
    const up = await pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'up.bin'), remote: join(remote, 'up.bin') });
    expect(up).toMatchObject({ size: data.length, sha256: sha(data), resumedFrom: 0, attempts: 1 });
    expect(sha(await readFile(join(remote, 'up.bin')))).toBe(sha(data));
    expect((await stat(join(remote, 'up.bin'))).mode & 0o777).toBe(0o600);
    const down = await pullFile(p.socket, { node: p.nodeId, actor: 't', remote: join(remote, 'up.bin'), local: join(local.path, 'down.bin') });
    expect(down.sha256).toBe(sha(data));
    expect(sha(await readFile(join(local.path, 'down.bin')))).toBe(sha(data));
    // No temp or part files are left on either side.
    expect((await readdir(remote)).filter((n) => n.includes('meshlink-part'))).toEqual([]);
    expect((await readdir(local.path)).filter((n) => n.includes('meshlink-part'))).toEqual([]);
  });

  it('empty files work both ways', async () => {
    await writeFile(join(local.path, 'empty'), '');
    await pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'empty'), remote: join(remote, 'empty') });
    const r = await pullFile(p.socket, { node: p.nodeId, actor: 't', remote: join(remote, 'empty'), local: join(local.path, 'empty2') });
    expect(r.size).toBe(0);
    expect((await stat(join(local.path, 'empty2'))).size).toBe(0);
  });

  it('is refused without --transfer-dir, outside it, through a symlink, and for missing files', async () => {
    await writeFile(join(local.path, 'x'), 'x');
    await expect(pushFile(none.socket, { node: none.nodeId, actor: 't', local: join(local.path, 'x'), remote: join(remote, 'x') })).rejects.toMatchObject({ code: 'ML_ERR_OPS_TRANSFER_DISABLED' });
    await expect(pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'x'), remote: join(local.path, 'outside') })).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN' });
    await expect(pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'x'), remote: `${remote}/../escape` })).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN' });
    await symlink(local.path, join(remote, 'link'));
    await expect(pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'x'), remote: join(remote, 'link', 'escape') })).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN' });
    await symlink('/etc/hostname', join(remote, 'file-link'));
    await expect(pullFile(p.socket, { node: p.nodeId, actor: 't', remote: join(remote, 'file-link'), local: join(local.path, 'y') })).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN' });
    await expect(pullFile(p.socket, { node: p.nodeId, actor: 't', remote: join(remote, 'missing'), local: join(local.path, 'y') })).rejects.toMatchObject({ code: 'ML_ERR_OPS_NOT_FOUND' });
    expect(existsSync(join(local.path, 'outside'))).toBe(false);
    expect(existsSync(join(local.path, 'escape'))).toBe(false);
  });

  it('content that does not match its SHA-256 is never committed', async () => {
    const body = Buffer.from('the real bytes');
    const claimed = sha(Buffer.from('other bytes!!!'));
    await expect(
      runTunnel(p.socket, { op: 'push', node: p.nodeId, actor: 't', path: join(remote, 'bad'), size: body.length, sha256: claimed }, {
        onEvent(e, t) {
          if (e.type === 'resume') void t.send(body).then(() => t.event({ type: 'eof' }));
        },
      }),
    ).rejects.toMatchObject({ code: 'ML_ERR_OPS_CHECKSUM' });
    expect(existsSync(join(remote, 'bad'))).toBe(false);
    expect((await readdir(remote)).filter((n) => n.includes('meshlink-part'))).toEqual([]);
  });

  it('a pull of a file that shrinks or grows while it is read fails with ML_ERR_OPS_FILE_CHANGED and commits nothing', async () => {
    const MIB = 1024 * 1024;
    // 64 MiB: far more than flow control lets the agent read ahead of the first chunk we see.
    for (const [name, change] of [
      ['shrinks.bin', (path: string) => truncate(path, 20 * MIB)],
      ['grows.bin', (path: string) => appendFile(path, Buffer.alloc(MIB, 1))],
    ] as const) {
      const path = join(remote, name);
      await writeFile(path, randomBytes(64 * MIB));
      let changed = false;
      let bytes = 0;
      const pulled = runTunnel(p.socket, { op: 'pull', node: p.nodeId, actor: 't', path }, {
        async onData(chunk) {
          bytes += chunk.length;
          if (!changed) {
            changed = true;
            await change(path);
          }
        },
      });
      await expect(pulled).rejects.toMatchObject({ code: 'ML_ERR_OPS_FILE_CHANGED' });
      expect(changed).toBe(true);
      expect(bytes).toBeLessThanOrEqual(64 * MIB);
      // Through the CLI's own pull: nothing is committed locally.
      await writeFile(path, randomBytes(64 * MIB));
      const localTarget = join(local.path, `changed-${name}`);
      const localPart = join(local.path, `.changed-${name}.meshlink-part`);
      const cliPull = pullFile(p.socket, { node: p.nodeId, actor: 't', remote: path, local: localTarget });
      await waitUntil('local part has bytes', async () => ((await stat(localPart).catch(() => null))?.size ?? 0) > 0, 30_000, 2);
      await change(path);
      await expect(cliPull).rejects.toMatchObject({ code: 'ML_ERR_OPS_FILE_CHANGED' });
      expect(existsSync(localTarget)).toBe(false);
    }
  });

  it('a pull of a file with more than one hard link is refused (it could name a file outside the directory)', async () => {
    await writeFile(join(local.path, 'secret'), 'outside the transfer dir');
    await link(join(local.path, 'secret'), join(remote, 'hardlink'));
    await expect(pullFile(p.socket, { node: p.nodeId, actor: 't', remote: join(remote, 'hardlink'), local: join(local.path, 'stolen') })).rejects.toMatchObject({
      code: 'ML_ERR_OPS_PATH_FORBIDDEN',
      message: expect.stringMatching(/2 hard links/),
    });
    expect(existsSync(join(local.path, 'stolen'))).toBe(false);
  });

  it('a push keeps the owner and mode of the file it replaces; a new file is 0600 and the agent\'s', async () => {
    const script = join(remote, 'run.sh');
    await writeFile(script, '#!/bin/sh\necho old\n');
    await chown(script, 65534, 65534);
    await chmod(script, 0o755);
    await writeFile(join(local.path, 'run.sh'), '#!/bin/sh\necho new\n');
    await pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'run.sh'), remote: script });
    const st = await stat(script);
    expect(await readFile(script, 'utf8')).toContain('echo new');
    expect({ mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }).toEqual({ mode: 0o755, uid: 65534, gid: 65534 });
    await pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'run.sh'), remote: join(remote, 'fresh.sh') });
    const fresh = await stat(join(remote, 'fresh.sh'));
    expect({ mode: fresh.mode & 0o7777, uid: fresh.uid }).toEqual({ mode: 0o600, uid: process.getuid!() });
  });

  it('a 128 MiB push and pull keep the extra RSS of this process (server, agent and client together) under 100 MB', async () => {
    const MIB = 1024 * 1024;
    const block = randomBytes(MIB);
    const hash = createHash('sha256');
    const fh = await open(join(local.path, 'rss.bin'), 'w');
    for (let i = 0; i < 128; i++) {
      await fh.write(block);
      hash.update(block);
    }
    await fh.close();
    const base = process.memoryUsage.rss();
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
    try {
      await pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'rss.bin'), remote: join(remote, 'rss.bin') });
      const r = await pullFile(p.socket, { node: p.nodeId, actor: 't', remote: join(remote, 'rss.bin'), local: join(local.path, 'rss-back.bin') });
      expect(r.sha256).toBe(hash.digest('hex'));
    } finally {
      clearInterval(sampler);
    }
    console.log(`128 MiB push+pull in one process: extra RSS ${((peak - base) / MIB).toFixed(1)} MB`);
    expect((peak - base) / MIB).toBeLessThan(100);
  });

  it('a push resumes after the agent connection drops, from what the agent holds', async () => {
    const data = randomBytes(48 * 1024 * 1024);
    await writeFile(join(local.path, 'big.bin'), data);
    let dropped = false;
    const part = join(remote, `.big.bin.${sha(data).slice(0, 16)}.meshlink-part`);
    const dropper = waitUntil('part grows', async () => ((await stat(part).catch(() => null))?.size ?? 0) > 4 * 1024 * 1024, 30_000, 5).then(() => {
      dropped = true;
      p.ts.server.live.registry.closeAll(1012, 'test drop');
    });
    const r = await pushFile(p.socket, { node: p.nodeId, actor: 't', local: join(local.path, 'big.bin'), remote: join(remote, 'big.bin') }, { retries: 20, delayMs: 1_000 }); // the CLI's delay: a loaded machine's agent may take seconds to reconnect
    await dropper;
    expect(dropped).toBe(true);
    expect(r.attempts).toBeGreaterThanOrEqual(2);
    expect(r.resumedFrom).toBeGreaterThan(4 * 1024 * 1024);
    expect(sha(await readFile(join(remote, 'big.bin')))).toBe(sha(data));
  });

  it('a pull resumes after the agent connection drops, from the local part', async () => {
    const data = randomBytes(48 * 1024 * 1024);
    await writeFile(join(remote, 'big-down.bin'), data);
    const part = join(local.path, '.big-down.local.meshlink-part');
    const dropper = waitUntil('local part grows', async () => ((await stat(part).catch(() => null))?.size ?? 0) > 4 * 1024 * 1024, 30_000, 5).then(() =>
      p.ts.server.live.registry.closeAll(1012, 'test drop'),
    );
    const r = await pullFile(p.socket, { node: p.nodeId, actor: 't', remote: join(remote, 'big-down.bin'), local: join(local.path, 'big-down.local') }, { retries: 20, delayMs: 1_000 }); // the CLI's delay: a loaded machine's agent may take seconds to reconnect
    await dropper;
    expect(r.attempts).toBeGreaterThanOrEqual(2);
    expect(r.resumedFrom).toBeGreaterThan(4 * 1024 * 1024);
    expect(sha(await readFile(join(local.path, 'big-down.local')))).toBe(sha(data));
  });
});
