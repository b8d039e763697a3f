import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { rawEd25519PublicKeyOf } from '../../src/contract/ed25519.js';
import {
  buildIdOf,
  compareVersions,
  parseBundleHeader,
  parseReleaseKey,
  releaseKeyText,
  releaseManifestSchema,
  releaseStatement,
  signRelease,
  verifyRelease,
} from '../../src/contract/release.js';
import { MeshlinkError } from '../../src/errors.js';

/** A release key as `release keygen` makes one: the private key object and the pinned public key. */
function releaseKey() {
  const { privateKey } = generateKeyPairSync('ed25519');
  const raw = rawEd25519PublicKeyOf(privateKey);
  return { privateKey, raw, pinned: parseReleaseKey(releaseKeyText(raw)) };
}

const bundle = (version: string, body = 'console.log("agent");\n'): Buffer =>
  Buffer.from(`#!/usr/bin/env node\n// meshlink-agent-bundle version=${version} marker=t\n${body}`);

const codeOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    if (err instanceof MeshlinkError) return err.code;
    throw err;
  }
  return 'no error';
};

describe('what a bundle is', () => {
  it('is the bundle header then UTF-8 text; the header names the version', () => {
    expect(parseBundleHeader(bundle('1.2.3'))).toEqual({ version: '1.2.3' });
    expect(parseBundleHeader(bundle('2.0.0-rc.1'))).toEqual({ version: '2.0.0-rc.1' });
  });

  it.each([
    ['a 6-byte text file', Buffer.from('hello\n')],
    ['a header without a semantic version', Buffer.from('#!/usr/bin/env node\n// meshlink-agent-bundle version=latest\n')],
    ['binary after a good header', Buffer.concat([bundle('1.0.0'), Buffer.from([0, 1, 2])])],
    ['invalid UTF-8 after a good header', Buffer.concat([bundle('1.0.0'), Buffer.from([0xc3, 0x28])])],
    ['the header not at the start', Buffer.concat([Buffer.from('\n'), bundle('1.0.0')])],
  ])('refuses %s with ML_ERR_UPGRADE_NOT_BUNDLE', (_what, bytes) => {
    expect(codeOf(() => parseBundleHeader(bytes))).toBe('ML_ERR_UPGRADE_NOT_BUNDLE');
  });
});

describe('versions are ordered by semver precedence', () => {
  it.each([
    ['1.0.0', '1.0.1', -1],
    ['1.10.0', '1.9.0', 1],
    ['2.0.0-rc.1', '2.0.0', -1],
    ['2.0.0-rc.2', '2.0.0-rc.10', -1],
    ['2.0.0-alpha', '2.0.0-1', 1],
    ['2.0.0-rc.1', '2.0.0-rc.1.1', -1],
    ['1.0.0+build.1', '1.0.0+build.2', 0],
  ])('%s vs %s is %d', (a, b, expected) => {
    expect(compareVersions(a, b)).toBe(expected);
    expect(compareVersions(b, a)).toBe(-expected || 0);
  });
});

describe('release keys and signatures', () => {
  it('a release key as text round-trips and is named by its key id', () => {
    const k = releaseKey();
    expect(k.pinned.text).toMatch(/^ed25519:[A-Za-z0-9+/]{43}=$/);
    expect(k.pinned.raw.equals(k.raw)).toBe(true);
    expect(k.pinned.keyId).toMatch(/^[0-9a-f]{16}$/);
    expect(codeOf(() => parseReleaseKey('ed25519:short'))).toBe('ML_ERR_UPGRADE_KEY');
    expect(codeOf(() => parseReleaseKey('sha256:' + '0'.repeat(64)))).toBe('ML_ERR_UPGRADE_KEY');
  });

  it('the signed statement is four fixed lines (what another implementation reproduces)', () => {
    expect(releaseStatement({ version: '1.2.3', buildId: 'ab'.repeat(32), size: 42 }).toString()).toBe(
      `meshlink-agent-bundle/1\nversion=1.2.3\nbuildId=${'ab'.repeat(32)}\nsize=42\n`,
    );
  });

  it('signs a bundle into a manifest that verifies with the pinned key and only with it', () => {
    const k = releaseKey();
    const other = releaseKey();
    const b = bundle('1.4.0');
    const m = releaseManifestSchema.parse(signRelease(b, k.privateKey, k.raw));
    expect(m).toMatchObject({ format: 'meshlink-agent-bundle/1', version: '1.4.0', buildId: buildIdOf(b), size: b.length, keyId: k.pinned.keyId });
    const fields = { version: m.version, buildId: m.buildId, size: m.size, keyId: m.keyId, signature: Buffer.from(m.signature, 'base64') };
    expect(verifyRelease(fields, [other.pinned, k.pinned]).keyId).toBe(k.pinned.keyId);
    // Another key (even one named by the same key id hint) does not verify it.
    expect(codeOf(() => verifyRelease(fields, [other.pinned]))).toBe('ML_ERR_UPGRADE_SIGNATURE');
    expect(codeOf(() => verifyRelease({ ...fields, keyId: undefined }, [other.pinned]))).toBe('ML_ERR_UPGRADE_SIGNATURE');
    // Every signed field is covered.
    expect(codeOf(() => verifyRelease({ ...fields, version: '9.0.0' }, [k.pinned]))).toBe('ML_ERR_UPGRADE_SIGNATURE');
    expect(codeOf(() => verifyRelease({ ...fields, size: fields.size + 1 }, [k.pinned]))).toBe('ML_ERR_UPGRADE_SIGNATURE');
    expect(codeOf(() => verifyRelease({ ...fields, buildId: 'f'.repeat(64) }, [k.pinned]))).toBe('ML_ERR_UPGRADE_SIGNATURE');
    // No signature, and no trusted key, have their own codes.
    expect(codeOf(() => verifyRelease({ ...fields, signature: undefined }, [k.pinned]))).toBe('ML_ERR_UPGRADE_UNSIGNED');
    expect(codeOf(() => verifyRelease(fields, []))).toBe('ML_ERR_UPGRADE_NO_RELEASE_KEY');
  });

  it('refuses to sign what is not a bundle', () => {
    const k = releaseKey();
    expect(codeOf(() => signRelease(Buffer.from('hello\n'), k.privateKey, k.raw))).toBe('ML_ERR_UPGRADE_NOT_BUNDLE');
  });

  it('the manifest schema holds a build id to 64 hex digits', () => {
    const k = releaseKey();
    const m = signRelease(bundle('1.0.0'), k.privateKey, k.raw);
    expect(releaseManifestSchema.safeParse({ ...m, buildId: '../../../zz' }).success).toBe(false);
    expect(releaseManifestSchema.safeParse({ ...m, extra: 1 }).success).toBe(false);
  });
});
