import { createHash, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { MeshlinkError } from '../errors.js';
import { signEd25519, signingKeyId, verifyEd25519 } from './ed25519.js';

/**
 * Signed agent releases (docs/OPERATIONS.md, "Agent upgrade"): what a bundle is, the release key that
 * signs it, and the manifest both the server (`upgrade set`) and the agent (before it installs) check.
 * One module for both roles and the CLI that signs, so the three agree byte for byte.
 *
 * Trust: the release key is the operator's, kept off the control plane (`meshlink release keygen`);
 * the server only checks signatures, it never signs. An agent pins the public key at enrollment or in
 * its config, so a control plane that is compromised (or a fake one) can offer only builds the key
 * holder signed.
 */

/** First line of the signed statement: ties a signature to this use of the key and this layout. */
export const RELEASE_FORMAT = 'meshlink-agent-bundle/1';

/** A build id is the SHA-256 of the bundle's bytes, lower-case hex: it is also a file name, so nothing else is accepted. */
export const BUILD_ID_PATTERN = /^[0-9a-f]{64}$/;
export const buildIdSchema = z.string().regex(BUILD_ID_PATTERN, 'a build id is 64 lower-case hex digits (the SHA-256 of the bundle)');

/** Semantic version (semver.org 2.0.0), at most 64 characters: releases are ordered by it (downgrade check). */
const SEMVER = /^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$/;
export const releaseVersionSchema = z.string().max(64).regex(SEMVER, 'a release version is a semantic version, e.g. 1.4.2 or 2.0.0-rc.1');

/** Agent bundles are refused above this size (the esbuild bundle is about 1 MiB). */
export const MAX_BUNDLE_BYTES = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// What a bundle is

/**
 * A bundle is what scripts/bundle-agent.mjs writes: UTF-8 JavaScript (no NUL byte) of at most 64 MiB
 * whose first two lines are exactly
 *   #!/usr/bin/env node
 *   // meshlink-agent-bundle version=<semver>[ <more words>]
 * The header is what tells a bundle from any other file; the version in it must be the signed one.
 */
const HEADER_PREFIX = '#!/usr/bin/env node\n// meshlink-agent-bundle version=';

export function parseBundleHeader(bytes: Uint8Array): { version: string } {
  const notBundle = (why: string): MeshlinkError => new MeshlinkError('ML_ERR_UPGRADE_NOT_BUNDLE', `not a meshlink agent bundle: ${why}`);
  if (bytes.byteLength > MAX_BUNDLE_BYTES) throw notBundle(`larger than ${MAX_BUNDLE_BYTES} bytes`);
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!buf.subarray(0, HEADER_PREFIX.length).equals(Buffer.from(HEADER_PREFIX))) {
    throw notBundle('it does not start with the bundle header ("#!/usr/bin/env node" then "// meshlink-agent-bundle version=…")');
  }
  const lineEnd = buf.indexOf(0x0a, HEADER_PREFIX.length);
  if (lineEnd < 0 || lineEnd - HEADER_PREFIX.length > 512) throw notBundle('the header line does not end');
  const version = buf.subarray(HEADER_PREFIX.length, lineEnd).toString('latin1').split(' ')[0]!;
  if (!releaseVersionSchema.safeParse(version).success) throw notBundle('the header names no semantic version');
  if (buf.indexOf(0) >= 0) throw notBundle('it holds a NUL byte (a bundle is text)');
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(buf);
  } catch {
    throw notBundle('it is not UTF-8 text');
  }
  return { version };
}

/** -1, 0 or 1 as `a` is lower than, equal to or higher than `b` in semver precedence (build metadata ignored). */
export function compareVersions(a: string, b: string): number {
  const pa = SEMVER.exec(a);
  const pb = SEMVER.exec(b);
  if (!pa || !pb) throw new MeshlinkError('ML_ERR_UPGRADE_NOT_BUNDLE', `cannot order versions "${a.slice(0, 64)}" and "${b.slice(0, 64)}"`);
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return Math.sign(d);
  }
  // A pre-release is lower than the release; identifiers compare numerically or in ASCII order.
  if (pa[4] === undefined || pb[4] === undefined) return pa[4] === pb[4] ? 0 : pa[4] === undefined ? 1 : -1;
  const xa = pa[4].split('.');
  const xb = pb[4].split('.');
  for (let i = 0; i < Math.min(xa.length, xb.length); i++) {
    const [x, y] = [xa[i]!, xb[i]!];
    const [nx, ny] = [/^\d+$/.test(x), /^\d+$/.test(y)];
    if (nx && ny && Number(x) !== Number(y)) return Math.sign(Number(x) - Number(y));
    if (nx !== ny) return nx ? -1 : 1;
    if (x !== y) return x < y ? -1 : 1;
  }
  return Math.sign(xa.length - xb.length);
}

// ---------------------------------------------------------------------------------------------
// The release key

/** A release public key as text: `ed25519:` + standard base64 of its raw 32 bytes (short enough to paste into a flag). */
const RELEASE_KEY_PATTERN = /^ed25519:[A-Za-z0-9+/]{43}=$/;
export const releaseKeySchema = z.string().regex(RELEASE_KEY_PATTERN, 'a release key is "ed25519:" followed by the base64 of 32 bytes (printed by `meshlink release keygen`)');

export interface ReleaseKey {
  /** The key as text (`ed25519:…`). */
  readonly text: string;
  /** First 16 hex digits of SHA-256 over the raw key (as for mesh signing keys). */
  readonly keyId: string;
  readonly raw: Buffer;
}

export function parseReleaseKey(text: string): ReleaseKey {
  const parsed = releaseKeySchema.safeParse(text.trim());
  if (!parsed.success) throw new MeshlinkError('ML_ERR_UPGRADE_KEY', `invalid release key "${text.slice(0, 80)}": expected ed25519:<base64 of 32 bytes>`);
  const raw = Buffer.from(parsed.data.slice('ed25519:'.length), 'base64');
  if (raw.length !== 32) throw new MeshlinkError('ML_ERR_UPGRADE_KEY', 'a release key has 32 bytes');
  return { text: parsed.data, keyId: signingKeyId(raw), raw };
}

export function releaseKeyText(rawPublicKey: Uint8Array): string {
  return `ed25519:${Buffer.from(rawPublicKey).toString('base64')}`;
}

// ---------------------------------------------------------------------------------------------
// The manifest

/**
 * The detached signature file `meshlink release sign` writes next to a bundle (`<bundle>.sig`), JSON.
 * `buildId` and `size` describe the bytes; `keyId` names the key (a hint: verification tries the
 * pinned key of that id only); `signature` is Ed25519 over releaseStatement(), base64.
 */
export const releaseManifestSchema = z
  .object({
    format: z.literal(RELEASE_FORMAT),
    version: releaseVersionSchema,
    buildId: buildIdSchema,
    size: z.number().int().min(1).max(MAX_BUNDLE_BYTES),
    keyId: z.string().regex(/^[0-9a-f]{16}$/),
    signature: z.string().regex(/^[A-Za-z0-9+/]{86}==$/, 'an Ed25519 signature is 64 bytes of base64'),
  })
  .strict();
export type ReleaseManifest = z.infer<typeof releaseManifestSchema>;

export interface ReleaseFields {
  version: string;
  buildId: string;
  size: number;
}

/**
 * The bytes a release signature covers: four lines, each ending in "\n" (UTF-8; every field is ASCII
 * by its schema). A fixed text layout rather than JSON, so another implementation needs no
 * canonical JSON to reproduce it:
 *   meshlink-agent-bundle/1
 *   version=<version>
 *   buildId=<64 hex>
 *   size=<decimal bytes>
 */
export function releaseStatement(f: ReleaseFields): Buffer {
  return Buffer.from(`${RELEASE_FORMAT}\nversion=${f.version}\nbuildId=${f.buildId}\nsize=${f.size}\n`, 'utf8');
}

/** SHA-256 of a bundle, hex: its build id. */
export function buildIdOf(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Signs a bundle: checks it is one, then the manifest for its bytes (the CLI's `release sign`). */
export function signRelease(bundle: Uint8Array, privateKey: KeyObject, rawPublicKey: Uint8Array): ReleaseManifest {
  const { version } = parseBundleHeader(bundle);
  const fields = { version, buildId: buildIdOf(bundle), size: bundle.byteLength };
  return {
    format: RELEASE_FORMAT,
    ...fields,
    keyId: signingKeyId(rawPublicKey),
    signature: signEd25519(privateKey, releaseStatement(fields)).toString('base64'),
  };
}

/**
 * Verifies a release signature against trusted keys; returns the key that signed. Errors:
 * ML_ERR_UPGRADE_UNSIGNED (no signature), ML_ERR_UPGRADE_NO_RELEASE_KEY (no key trusted),
 * ML_ERR_UPGRADE_SIGNATURE (no trusted key of that id, or the signature does not verify).
 */
export function verifyRelease(f: ReleaseFields & { keyId?: string | undefined; signature?: Uint8Array | undefined }, trusted: readonly ReleaseKey[]): ReleaseKey {
  if (f.signature === undefined || f.signature.byteLength === 0) throw new MeshlinkError('ML_ERR_UPGRADE_UNSIGNED', `build ${f.buildId.slice(0, 64)} carries no release signature`);
  if (trusted.length === 0) throw new MeshlinkError('ML_ERR_UPGRADE_NO_RELEASE_KEY', 'no release key is trusted here, so no build can be verified');
  const statement = releaseStatement(f);
  const candidates = f.keyId === undefined ? trusted : trusted.filter((k) => k.keyId === f.keyId);
  for (const key of candidates) if (verifyEd25519(key.raw, statement, f.signature)) return key;
  throw new MeshlinkError(
    'ML_ERR_UPGRADE_SIGNATURE',
    candidates.length === 0
      ? `build ${f.buildId} is signed by release key ${String(f.keyId).slice(0, 16)}, which is not trusted here (trusted: ${trusted.map((k) => k.keyId).join(', ')})`
      : `the release signature of build ${f.buildId} does not verify (version ${f.version}, ${f.size} bytes)`,
  );
}
