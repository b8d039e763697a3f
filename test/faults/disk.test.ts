import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync, rmSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCsrPem, generateAgentKeyPair } from '../../src/agent/csr.js';
import { loadIdentity, saveRenewedCertificate } from '../../src/agent/identity.js';
import type { RunningServer } from '../../src/server/server.js';
import { enrollAgent, startFaultServer, tempDir } from './helpers.js';

/**
 * A full disk under the agent's state dir: a real 512 KiB tmpfs (needs root and mount; skipped
 * otherwise). The renewal write must fail with a clear error and leave the old identity loadable.
 * (A SIGKILL while writing the certificate is covered by test/agent/identity.test.ts, "SIGKILL of a
 * process renewing in a loop never leaves a mixed pair".)
 */
function canMountTmpfs(): boolean {
  if (process.getuid?.() !== 0) return false;
  let probe = '';
  try {
    probe = execFileSync('mktemp', ['-d'], { encoding: 'utf8' }).trim();
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], { stdio: 'ignore' });
    execFileSync('umount', [probe], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    if (probe) rmSync(probe, { recursive: true, force: true });
  }
}

const MOUNTABLE = canMountTmpfs();

describe.skipIf(!MOUNTABLE)('full disk on the agent state write (tmpfs; skipped without root/mount)', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let server: RunningServer;
  let mnt = '';

  beforeAll(async () => {
    dir = await tempDir('ml-disk-');
    server = await startFaultServer(join(dir.path, 'server'));
    mnt = join(dir.path, 'mnt');
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k,mode=0700', 'tmpfs', mnt]);
  }, 60_000);

  afterAll(async () => {
    if (mnt) execFileSync('umount', [mnt]);
    await server?.close();
    await dir?.cleanup();
  });

  it('a renewal that hits ENOSPC is a clear error and the old identity stays; with space it succeeds', async () => {
    const stateDir = join(mnt, 'agent');
    const nodeId = await enrollAgent(server, stateDir, 'disk-1');
    const old = await loadIdentity(stateDir);
    const keys = await generateAgentKeyPair('rsa2048');
    const issued = await server.enrollment.issueNodeCertificate(nodeId, createCsrPem(keys, { hostname: 'disk-1', sans: [] }));

    // Fill the file system to the last byte.
    const filler = join(mnt, 'filler');
    const fd = openSync(filler, 'w');
    const block = Buffer.alloc(4096, 1);
    try {
      for (let i = 0; i < 1024; i++) writeSync(fd, block);
      throw new Error('tmpfs did not fill up');
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    } finally {
      closeSync(fd);
    }
    // Single bytes too, so no partial block is left.
    try {
      for (let i = 0; i < 8192; i++) writeFileSync(join(mnt, `f${i}`), 'x');
    } catch {
      /* full */
    }

    const err = await saveRenewedCertificate(stateDir, keys.privateKeyPem, issued.certificate).then(
      () => null,
      (e: unknown) => e as NodeJS.ErrnoException,
    );
    expect(err).not.toBeNull();
    expect(`${err!.code ?? ''} ${err!.message}`).toMatch(/ENOSPC|no space/i);
    const still = await loadIdentity(stateDir);
    expect(still.cert.serial).toBe(old.cert.serial);
    expect(still.keyPem).toBe(old.keyPem);

    rmSync(filler);
    const renewed = await saveRenewedCertificate(stateDir, keys.privateKeyPem, issued.certificate);
    expect(renewed.cert.serial).not.toBe(old.cert.serial);
    expect((await loadIdentity(stateDir)).cert.serial).toBe(renewed.cert.serial);
  }, 60_000);
});
