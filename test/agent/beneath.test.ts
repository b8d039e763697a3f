import { constants } from 'node:fs';
import { link, open, readFile, rename, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openParentBeneath, openRegularForRead } from '../../src/agent/ops/beneath.js';
import { escapeArea } from '../helpers/escape-area.js';

const hasProc = await open('/proc/self/fd', constants.O_RDONLY | constants.O_DIRECTORY).then(
  async (fh) => (await fh.close(), true),
  () => false,
);

describe.skipIf(!hasProc)('resolution beneath a held directory descriptor (real files; needs Linux /proc)', () => {
  let tmp: { path: string; cleanup(): Promise<void> };
  let area: string;
  let outside: string;
  beforeEach(async () => {
    ({ tmp, area, outside } = await escapeArea('ml-beneath-'));
  });
  afterEach(async () => tmp.cleanup());

  it('/proc/self/fd/N/name is looked up in the directory N holds, not by re-walking the path N was opened by', async () => {
    const dir = await open(join(area, 'sub'), constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      // The path the descriptor was opened by now leads elsewhere: a symlink to the outside.
      await rename(join(area, 'sub'), join(area, 'moved'));
      await symlink(outside, join(area, 'sub'));
      expect(await readFile(join(area, 'sub', 'f'), 'utf8')).toBe('OUTSIDE'); // by path: the link is followed
      expect(await readFile(`/proc/self/fd/${dir.fd}/f`, 'utf8')).toBe('inside'); // by descriptor: the held directory
    } finally {
      await dir.close();
    }
  });

  it('walks real directories and returns the final name in the held parent', async () => {
    const parent = await openParentBeneath([area], join(area, 'sub', 'f'));
    try {
      expect(parent.name).toBe('f');
      const { fh, st } = await openRegularForRead(parent, 'f');
      expect(st.size).toBe(6);
      await fh.close();
    } finally {
      await parent.close();
    }
  });

  it('refuses a symlink anywhere beneath the transfer dir, paths outside it, and the dir itself', async () => {
    await symlink(outside, join(area, 'link'));
    await expect(openParentBeneath([area], join(area, 'link', 'f'))).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN' });
    await symlink(join(outside, 'f'), join(area, 'sub', 'flink'));
    const parent = await openParentBeneath([area], join(area, 'sub', 'flink'));
    await expect(openRegularForRead(parent, 'flink')).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN', message: expect.stringMatching(/symbolic link/) });
    await parent.close();
    await expect(openParentBeneath([area], join(outside, 'f'))).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN' });
    await expect(openParentBeneath([area], `${area}/sub/../../outside/f`)).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN' });
    await expect(openParentBeneath([area], area)).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN' });
    await expect(openParentBeneath([area], 'relative/f')).rejects.toMatchObject({ code: 'ML_ERR_OPS_BAD_REQUEST' });
    await expect(openParentBeneath([], join(area, 'f'))).rejects.toMatchObject({ code: 'ML_ERR_OPS_TRANSFER_DISABLED' });
    await expect(openParentBeneath([area], join(area, 'nope', 'f'))).rejects.toMatchObject({ code: 'ML_ERR_OPS_NOT_FOUND' });
  });

  it('a transfer dir configured through a symlink works by either name', async () => {
    await symlink(area, join(tmp.path, 'alias'));
    for (const path of [join(tmp.path, 'alias', 'sub', 'f'), join(area, 'sub', 'f')]) {
      const parent = await openParentBeneath([join(tmp.path, 'alias')], path);
      expect(parent.name).toBe('f');
      await parent.close();
    }
  });

  it('refuses a file with more than one hard link for reading', async () => {
    await link(join(outside, 'f'), join(area, 'sub', 'hard'));
    const parent = await openParentBeneath([area], join(area, 'sub', 'hard'));
    await expect(openRegularForRead(parent, 'hard')).rejects.toMatchObject({ code: 'ML_ERR_OPS_PATH_FORBIDDEN', message: expect.stringMatching(/hard links/) });
    await parent.close();
  });
});
