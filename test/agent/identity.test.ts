import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  currentGeneration,
  isEnrolled,
  loadIdentity,
  saveEnrollment,
  saveRenewedCertificate,
  saveSteps,
  type GenerationContent,
} from '../../src/agent/identity.js';
import { createTestCa, identityFor, makePair, tempDirs, type CertPair } from './helpers/fixtures.js';
import type { TestCa } from './helpers/pki.js';

const DIST_IDENTITY = resolve('dist/src/agent/identity.js');

describe('state dir identity', () => {
  const dirs = tempDirs();
  let ca: TestCa;
  let pairA: CertPair;
  let pairB: CertPair;
  let content: GenerationContent;

  beforeAll(async () => {
    ca = await createTestCa();
    pairA = await makePair(ca, 'node-test-1');
    pairB = await makePair(ca, 'node-test-1');
    content = { identity: identityFor(ca), caPem: ca.certPem, ...pairA };
  });
  afterEach(() => dirs.cleanup());

  /** Which prepared pair the state dir currently holds; fails the test on a mix. */
  async function loadedPair(stateDir: string): Promise<'A' | 'B'> {
    const id = await loadIdentity(stateDir); // also checks key ↔ cert internally
    if (id.keyPem === pairA.keyPem && id.certPem === pairA.certPem) return 'A';
    if (id.keyPem === pairB.keyPem && id.certPem === pairB.certPem) return 'B';
    throw new Error('loaded a pair that is neither A nor B');
  }

  it('saves, then loads a frozen identity with parsed certificate fields', async () => {
    const stateDir = join(dirs.make(), 'agent');
    const saved = await saveEnrollment(stateDir, content);
    const loaded = await loadIdentity(stateDir);
    expect(loaded).toEqual(saved);
    expect(Object.isFrozen(loaded)).toBe(true);
    expect(loaded.nodeId).toBe('node-test-1');
    expect(loaded.cert.serial).toMatch(/^[0-9A-F]+$/);
    expect(loaded.cert.notAfter.getTime()).toBeGreaterThan(Date.now());
    expect(loaded.cert.notBefore.getTime()).toBeLessThan(Date.now());
    expect(await isEnrolled(stateDir)).toBe(true);
  });

  it('uses 0700 for the state dir, 0600 for key and identity, and keeps operator file names working', async () => {
    const stateDir = join(dirs.make(), 'agent');
    await saveEnrollment(stateDir, content);
    expect(statSync(stateDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(stateDir, 'key.pem')).mode & 0o777).toBe(0o600);
    expect(statSync(join(stateDir, 'identity.json')).mode & 0o777).toBe(0o600);
    expect(statSync(join(stateDir, 'cert.pem')).mode & 0o777).toBe(0o644);
    expect(readFileSync(join(stateDir, 'key.pem'), 'utf8')).toBe(pairA.keyPem);
    expect(readFileSync(join(stateDir, 'cert.pem'), 'utf8')).toBe(pairA.certPem);
    expect(readFileSync(join(stateDir, 'ca.pem'), 'utf8')).toBe(ca.certPem);
    expect(JSON.parse(readFileSync(join(stateDir, 'identity.json'), 'utf8'))).toMatchObject({ nodeId: 'node-test-1' });
    expect(readlinkSync(join(stateDir, 'key.pem'))).toBe('current/key.pem');
  });

  it('tightens a pre-existing state dir to 0700', async () => {
    const stateDir = join(dirs.make(), 'agent');
    mkdirSync(stateDir, { mode: 0o755 });
    await saveEnrollment(stateDir, content);
    expect(statSync(stateDir).mode & 0o777).toBe(0o700);
  });

  it('refuses a shared, non-empty directory instead of chmod-ing it', async () => {
    const shared = dirs.make();
    chmodSync(shared, 0o755);
    writeFileSync(join(shared, 'someone-elses-file'), 'x');
    await expect(saveEnrollment(shared, content)).rejects.toMatchObject({ code: 'ML_ERR_STATE_ACCESS' });
    expect(statSync(shared).mode & 0o777).toBe(0o755);
    expect(readdirSync(shared)).toEqual(['someone-elses-file']);
  });

  it('renewal replaces the pair and keeps the identity', async () => {
    const stateDir = dirs.make();
    const first = await saveEnrollment(stateDir, content);
    const renewed = await saveRenewedCertificate(stateDir, pairB.keyPem, pairB.certPem);
    expect(renewed.nodeId).toBe(first.nodeId);
    expect(renewed.enrolledAt).toBe(first.enrolledAt);
    expect(renewed.cert.serial).not.toBe(first.cert.serial);
    expect(await loadedPair(stateDir)).toBe('B');
    expect(readFileSync(join(stateDir, 'key.pem'), 'utf8')).toBe(pairB.keyPem);
  });

  it('refuses to write a key and certificate that do not belong together', async () => {
    const stateDir = dirs.make();
    await saveEnrollment(stateDir, content);
    await expect(saveRenewedCertificate(stateDir, pairB.keyPem, pairA.certPem)).rejects.toMatchObject({ code: 'ML_ERR_STATE_CORRUPT' });
    expect(await loadedPair(stateDir)).toBe('A');
  });

  describe('a crash at any point of a renewal leaves the old pair or the new pair, never a mix', () => {
    it('crash while writing the new generation (only key written): old pair', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      const partial = join(stateDir, 'generations', `${Date.now()}-abc-00000000`);
      mkdirSync(partial);
      writeFileSync(join(partial, 'key.pem'), pairB.keyPem, { mode: 0o600 });
      expect(await loadedPair(stateDir)).toBe('A');
    });

    it('crash after the generation is written, before the switch: old pair', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      await saveSteps.writeGeneration(stateDir, { ...content, ...pairB });
      expect(await loadedPair(stateDir)).toBe('A');
      await saveSteps.ensureOperatorLinks(stateDir);
      expect(await loadedPair(stateDir)).toBe('A');
      expect(readFileSync(join(stateDir, 'cert.pem'), 'utf8')).toBe(pairA.certPem);
    });

    it('crash between creating the temp symlink and renaming it: old pair', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      const generation = await saveSteps.writeGeneration(stateDir, { ...content, ...pairB });
      symlinkSync(`generations/${generation}`, join(stateDir, '.current.deadbeef0000.tmp'));
      expect(await loadedPair(stateDir)).toBe('A');
    });

    it('crash right after the switch: new pair, through both loadIdentity and the operator names', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      const generation = await saveSteps.writeGeneration(stateDir, { ...content, ...pairB });
      await saveSteps.switchCurrent(stateDir, generation);
      expect(await loadedPair(stateDir)).toBe('B');
      expect(readFileSync(join(stateDir, 'key.pem'), 'utf8')).toBe(pairB.keyPem);
      expect(readFileSync(join(stateDir, 'cert.pem'), 'utf8')).toBe(pairB.certPem);
    });

    it('first enrollment interrupted before the switch counts as not enrolled', async () => {
      const stateDir = dirs.make();
      await saveSteps.writeGeneration(stateDir, content);
      await saveSteps.ensureOperatorLinks(stateDir);
      expect(await isEnrolled(stateDir)).toBe(false);
      await expect(loadIdentity(stateDir)).rejects.toMatchObject({ code: 'ML_ERR_NOT_ENROLLED' });
    });

    it('pruning keeps the current and previous generations and drops abandoned ones', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      const first = await currentGeneration(stateDir);
      await saveRenewedCertificate(stateDir, pairB.keyPem, pairB.certPem);
      const second = await currentGeneration(stateDir);
      const abandoned = await saveSteps.writeGeneration(stateDir, { ...content, ...pairA });
      await saveRenewedCertificate(stateDir, pairA.keyPem, pairA.certPem);
      const third = await currentGeneration(stateDir);
      const left = readdirSync(join(stateDir, 'generations')).sort();
      expect(left).toEqual([second, third].sort());
      expect(left).not.toContain(first);
      expect(left).not.toContain(abandoned);
    });

    it.skipIf(!existsSync(DIST_IDENTITY))('SIGKILL of a process renewing in a loop never leaves a mixed pair (needs npm run build)', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      const pairsFile = join(dirs.make(), 'pairs.json');
      writeFileSync(pairsFile, JSON.stringify([pairA, pairB]));
      const script = `
        import { saveRenewedCertificate } from ${JSON.stringify(DIST_IDENTITY)};
        import { readFileSync } from 'node:fs';
        const pairs = JSON.parse(readFileSync(${JSON.stringify(pairsFile)}, 'utf8'));
        process.stdout.write('ready\\n');
        for (let i = 0; i < 100000; i++) {
          const p = pairs[i % 2];
          await saveRenewedCertificate(${JSON.stringify(stateDir)}, p.keyPem, p.certPem);
          process.stdout.write('.');
        }`;
      for (let round = 0; round < 6; round++) {
        const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
        // Kill once the loop has completed 1–4 saves (counted, not timed: a loaded machine saves slowly),
        // then after 0–19 ms more, so that the kill lands at a random point of a save in progress.
        const target = 1 + Math.floor(Math.random() * 4);
        let saves = 0;
        await new Promise<void>((res) =>
          child.stdout.on('data', (d: Buffer) => {
            saves += d.toString().split('.').length - 1;
            if (saves >= target) res();
          }),
        );
        await new Promise((res) => setTimeout(res, Math.floor(Math.random() * 20)));
        const exited = new Promise((res) => child.once('exit', res));
        child.kill('SIGKILL');
        await exited;
        await loadedPair(stateDir); // the old pair or the new one; throws on a mix
        // the operator names agree with the pointer
        const id = await loadIdentity(stateDir);
        expect(readFileSync(join(stateDir, 'key.pem'), 'utf8')).toBe(id.keyPem);
        expect(readFileSync(join(stateDir, 'cert.pem'), 'utf8')).toBe(id.certPem);
      }
      // The directory stays bounded: current + previous + at most one abandoned per crash.
      expect(readdirSync(join(stateDir, 'generations')).length).toBeLessThanOrEqual(2 + 6);
    });
  });

  describe('load errors', () => {
    it('an empty dir is ML_ERR_NOT_ENROLLED', async () => {
      await expect(loadIdentity(dirs.make())).rejects.toMatchObject({ code: 'ML_ERR_NOT_ENROLLED' });
    });

    it('a generation whose key was swapped is ML_ERR_STATE_CORRUPT', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      const generation = await currentGeneration(stateDir);
      writeFileSync(join(stateDir, 'generations', generation!, 'key.pem'), pairB.keyPem);
      await expect(loadIdentity(stateDir)).rejects.toMatchObject({ code: 'ML_ERR_STATE_CORRUPT' });
    });

    it('an identity.json failing its schema is ML_ERR_STATE_CORRUPT', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      const generation = await currentGeneration(stateDir);
      writeFileSync(join(stateDir, 'generations', generation!, 'identity.json'), JSON.stringify({ version: 1, nodeId: '../x' }));
      await expect(loadIdentity(stateDir)).rejects.toMatchObject({ code: 'ML_ERR_STATE_CORRUPT' });
    });

    it('a CA that is not pinned is ML_ERR_STATE_CORRUPT', async () => {
      const stateDir = dirs.make();
      const other = await createTestCa();
      await saveEnrollment(stateDir, { ...content, identity: identityFor(other) }).catch(() => {});
      await expect(loadIdentity(stateDir)).rejects.toMatchObject({ code: 'ML_ERR_STATE_CORRUPT' });
    });

    it('a `current` link pointing outside generations/ is refused', async () => {
      const stateDir = dirs.make();
      await saveEnrollment(stateDir, content);
      const elsewhere = dirs.make();
      const { rmSync } = await import('node:fs');
      rmSync(join(stateDir, 'current'));
      symlinkSync(elsewhere, join(stateDir, 'current'));
      await expect(loadIdentity(stateDir)).rejects.toMatchObject({ code: 'ML_ERR_STATE_CORRUPT' });
    });
  });

  afterAll(() => dirs.cleanup());
});
