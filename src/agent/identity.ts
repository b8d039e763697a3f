import { X509Certificate, createPublicKey, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, chmod, lstat, mkdir, readFile, readdir, readlink, rename, rm, stat, symlink, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { fsyncPath, writeFileAtomic } from '../util/atomic-file.js';
import { caPinSchema, spkiDerOf, spkiPinOf } from '../contract/ca-pin.js';
import { MeshlinkError } from '../errors.js';
import { zodErrorText } from '../util/zod-error.js';

/**
 * The agent's state dir. Layout (see docs/AGENT.md):
 *
 *   <stateDir>/                  0700
 *     current -> generations/G   symlink; THE commit point: one rename switches all four files at once
 *     identity.json -> current/identity.json
 *     key.pem       -> current/key.pem      (stable names for operators and tools)
 *     cert.pem      -> current/cert.pem
 *     ca.pem        -> current/ca.pem
 *     generations/G/             0700, one per enrollment or renewal, never modified once written
 *       identity.json 0600, key.pem 0600, cert.pem 0644, ca.pem 0644
 *     status.json                written by the running agent (`agent run`; state/status-file.ts)
 *
 * Why generations: key and certificate must change together. Two renames can be interrupted between
 * them; a symlink switch cannot. A crash before the switch leaves the old generation current (the new
 * one is garbage, pruned later); after it, the new one. Readers resolve `current` once and read every
 * file through that one target, so they never mix generations either.
 */

export const STATE_FILES = ['identity.json', 'key.pem', 'cert.pem', 'ca.pem'] as const;
export type StateFile = (typeof STATE_FILES)[number];

const CURRENT_LINK = 'current';
const GENERATIONS_DIR = 'generations';
const GENERATION_NAME = /^\d{13}-[0-9a-f]{1,64}-[0-9a-f]{8}$/;
/** Readers retry when a concurrent prune removed the generation they had just resolved. */
const LOAD_ATTEMPTS = 3;
const STALE_TMP_MS = 60_000;

const FILE_MODES: Record<StateFile, number> = {
  'identity.json': 0o600,
  'key.pem': 0o600,
  'cert.pem': 0o644,
  'ca.pem': 0o644,
};

export const nodeIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, 'must be 1-128 letters, digits, ".", "_", ":" or "-"');

export const identityFileSchema = z.object({
  version: z.literal(1),
  nodeId: nodeIdSchema,
  server: z.string().url(),
  caPins: z.array(caPinSchema).min(1),
  hostname: z.string().min(1).max(253),
  sans: z.array(z.string().max(253)),
  enrolledAt: z.string().datetime(),
});
export type IdentityFile = z.infer<typeof identityFileSchema>;

export interface CertificateInfo {
  /** Upper-case hex as reported by OpenSSL. */
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly fingerprint256: string;
}

export interface Identity {
  readonly stateDir: string;
  /** Name of the generation directory this identity was read from. */
  readonly generation: string;
  readonly nodeId: string;
  readonly server: string;
  readonly caPins: readonly string[];
  readonly hostname: string;
  readonly sans: readonly string[];
  readonly enrolledAt: string;
  readonly keyPem: string;
  readonly certPem: string;
  readonly caPem: string;
  readonly cert: CertificateInfo;
}

/** At most this many CA certificates in ca.pem (the server trusts two during a rotation). */
const MAX_BUNDLE = 4;

/** The PEM blocks of a certificate bundle, each with its armour. */
export function splitPemCertificates(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)?.map((block) => `${block}\n`) ?? [];
}

/**
 * The trust after the server handed out `bundle` (welcome, enroll or renew answer) on a channel this
 * agent authenticated with a pinned CA: ca.pem becomes the server's bundle (plus the CA of our own
 * certificate, should the bundle lack it), and the pins are exactly those CAs. The bundle must contain
 * a CA we already pin, or it is ignored (docs/AGENT.md, "CA rotation"). Returns null when nothing changes.
 */
export function adoptCaBundle(
  current: { caPins: readonly string[]; caPem: string },
  bundle: readonly string[] | undefined,
  ownCertPem: string,
): { caPins: string[]; caPem: string } | null {
  if (!bundle || bundle.length === 0 || bundle.length > MAX_BUNDLE) return null;
  let offered: X509Certificate[];
  try {
    offered = bundle.map((pem) => new X509Certificate(pem));
  } catch {
    return null;
  }
  if (!offered.every((ca) => ca.ca) || !offered.some((ca) => current.caPins.includes(spkiPinOf(ca)))) return null;
  const own = new X509Certificate(ownCertPem);
  const kept = [...offered];
  if (!kept.some((ca) => own.verify(ca.publicKey))) {
    const issuer = splitPemCertificates(current.caPem).map((pem) => new X509Certificate(pem)).find((ca) => own.verify(ca.publicKey));
    if (issuer) kept.push(issuer);
  }
  const caPem = kept.map((ca) => ca.toString()).join('');
  const caPins = [...new Set(kept.map((ca) => spkiPinOf(ca)))];
  const samePem = caPem === splitPemCertificates(current.caPem).map((pem) => new X509Certificate(pem).toString()).join('');
  const samePins = caPins.length === current.caPins.length && caPins.every((p) => current.caPins.includes(p));
  return samePem && samePins ? null : { caPins, caPem };
}

/**
 * The pins and ca.pem to keep after an answer carrying `bundle`: the adopted bundle, or (an unchanged
 * bundle) the current ones, or null when the server sent none (an older server: its one CA is kept).
 */
export function trustAfter(identity: Identity, bundle: readonly string[] | undefined, certPem: string): { caPins: string[]; caPem: string } | null {
  if (!bundle) return null;
  return adoptCaBundle(identity, bundle, certPem) ?? { caPins: [...identity.caPins], caPem: identity.caPem };
}

export function certificateInfo(cert: X509Certificate): CertificateInfo {
  return Object.freeze({
    serial: cert.serialNumber.toUpperCase(),
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
    fingerprint256: cert.fingerprint256,
  });
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

/**
 * Checks, without creating anything, that enrollment will be able to write the state dir; called
 * before the token is redeemed so a bad --state-dir does not burn a one-time token. An existing
 * directory must be writable and either 0700, empty, or already laid out by us: `--state-dir /tmp`
 * or `--state-dir ~` must not end with a shared directory being chmod-ed.
 */
export async function assertStateDirUsable(stateDir: string): Promise<void> {
  let info;
  try {
    info = await stat(stateDir);
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
    // It will be created: the nearest existing ancestor must be writable.
    let ancestor = dirname(stateDir);
    for (let depth = 0; depth < 64 && ancestor !== dirname(ancestor); depth++) {
      if (await access(ancestor).then(() => true, () => false)) break;
      ancestor = dirname(ancestor);
    }
    await access(ancestor, fsConstants.W_OK).catch((cause: unknown) => {
      throw new MeshlinkError('ML_ERR_STATE_ACCESS', `cannot create ${stateDir}: ${ancestor} is not writable`, { cause });
    });
    return;
  }
  if (!info.isDirectory()) throw new MeshlinkError('ML_ERR_STATE_ACCESS', `${stateDir} exists and is not a directory`);
  await access(stateDir, fsConstants.W_OK | fsConstants.R_OK | fsConstants.X_OK).catch((cause: unknown) => {
    throw new MeshlinkError('ML_ERR_STATE_ACCESS', `${stateDir} is not writable by this user`, { cause });
  });
  if ((info.mode & 0o777) === 0o700) return;
  const entries = await readdir(stateDir);
  if (entries.length > 0 && !entries.includes(CURRENT_LINK) && !entries.includes(GENERATIONS_DIR)) {
    throw new MeshlinkError(
      'ML_ERR_STATE_ACCESS',
      `${stateDir} is not empty and is open to other users (mode ${(info.mode & 0o777).toString(8)}); ` +
        'use a dedicated state directory for the agent',
    );
  }
}

/** Creates the state dir (0700), or tightens an existing one that assertStateDirUsable accepts. */
export async function ensureStateDir(stateDir: string): Promise<void> {
  await assertStateDirUsable(stateDir);
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await chmod(stateDir, 0o700);
}

/** The generation `current` points at, or null when there is none (never enrolled). */
export async function currentGeneration(stateDir: string): Promise<string | null> {
  let target: string;
  try {
    target = await readlink(join(stateDir, CURRENT_LINK));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    if (isErrno(err, 'ENOTDIR')) throw new MeshlinkError('ML_ERR_STATE_ACCESS', `${stateDir} is not a directory`, { cause: err });
    if (isErrno(err, 'EACCES')) {
      throw new MeshlinkError('ML_ERR_STATE_ACCESS', `cannot read ${stateDir}: permission denied (run as its owner, or pass --state-dir)`, { cause: err });
    }
    if (isErrno(err, 'EINVAL')) throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `${join(stateDir, CURRENT_LINK)} is not a symlink`);
    throw err;
  }
  const parts = target.split('/');
  const name = parts[1];
  if (parts.length !== 2 || parts[0] !== GENERATIONS_DIR || name === undefined || !GENERATION_NAME.test(name)) {
    // Never follow a pointer that leaves generations/: the state dir may be writable by an operator only.
    throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `${join(stateDir, CURRENT_LINK)} points outside generations/`);
  }
  return name;
}

/** True when the state dir holds a committed identity. */
export async function isEnrolled(stateDir: string): Promise<boolean> {
  const generation = await currentGeneration(stateDir);
  if (generation === null) return false;
  try {
    await lstat(join(stateDir, GENERATIONS_DIR, generation, 'identity.json'));
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}

/**
 * Reads the committed identity and checks it hangs together: key matches certificate, certificate
 * signed by the stored CA, CA pinned. A failed check is ML_ERR_STATE_CORRUPT rather than a later
 * TLS failure with a confusing message.
 */
export async function loadIdentity(stateDir: string): Promise<Identity> {
  for (let attempt = 1; ; attempt++) {
    const generation = await currentGeneration(stateDir);
    if (generation === null) {
      throw new MeshlinkError('ML_ERR_NOT_ENROLLED', `no agent identity in ${stateDir}; run \`meshlink agent enroll\` first`);
    }
    try {
      return await loadGeneration(stateDir, generation);
    } catch (err) {
      if (isErrno(err, 'ENOENT') && attempt < LOAD_ATTEMPTS) continue;
      if (isErrno(err, 'ENOENT')) {
        throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `generation ${generation} in ${stateDir} is incomplete`, { cause: err });
      }
      throw err;
    }
  }
}

async function loadGeneration(stateDir: string, generation: string): Promise<Identity> {
  const dir = join(stateDir, GENERATIONS_DIR, generation);
  const [identityRaw, keyPem, certPem, caPem] = await Promise.all(
    STATE_FILES.map((name) => readFile(join(dir, name), 'utf8')),
  ) as [string, string, string, string];

  let parsedJson: unknown;
  try {
    parsedJson = JSON.parse(identityRaw);
  } catch (err) {
    throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `${join(dir, 'identity.json')} is not valid JSON`, { cause: err });
  }
  const parsed = identityFileSchema.safeParse(parsedJson);
  if (!parsed.success) {
    throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `${join(dir, 'identity.json')} is invalid: ${zodErrorText(parsed.error, { all: true })}`);
  }
  const file = parsed.data;

  let cert: X509Certificate;
  let cas: X509Certificate[];
  try {
    cert = new X509Certificate(certPem);
    cas = splitPemCertificates(caPem).map((pem) => new X509Certificate(pem));
  } catch (err) {
    throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `certificate files in ${dir} do not parse`, { cause: err });
  }
  assertPairMatches(keyPem, cert, dir);
  // ca.pem holds one CA, or two during a CA rotation (docs/AGENT.md, "CA rotation"): every one pinned.
  if (cas.length === 0 || cas.length > MAX_BUNDLE || !cas.some((ca) => cert.verify(ca.publicKey))) {
    throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `cert.pem in ${dir} is not signed by ca.pem`);
  }
  if (!cas.every((ca) => file.caPins.includes(spkiPinOf(ca)))) {
    throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `ca.pem in ${dir} does not match the pinned CA`);
  }

  return Object.freeze({
    stateDir,
    generation,
    nodeId: file.nodeId,
    server: file.server,
    caPins: Object.freeze([...file.caPins]),
    hostname: file.hostname,
    sans: Object.freeze([...file.sans]),
    enrolledAt: file.enrolledAt,
    keyPem,
    certPem,
    caPem,
    cert: certificateInfo(cert),
  });
}

function assertPairMatches(keyPem: string, cert: X509Certificate, where: string): void {
  let publicDer: Buffer;
  try {
    publicDer = createPublicKey(keyPem).export({ type: 'spki', format: 'der' });
  } catch (err) {
    throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `key.pem in ${where} is not a valid private key`, { cause: err });
  }
  if (!publicDer.equals(spkiDerOf(cert))) {
    throw new MeshlinkError('ML_ERR_STATE_CORRUPT', `key.pem and cert.pem in ${where} do not belong together`);
  }
}

export interface GenerationContent {
  readonly identity: IdentityFile;
  readonly keyPem: string;
  readonly certPem: string;
  readonly caPem: string;
}

function newGenerationName(certPem: string): string {
  const serial = new X509Certificate(certPem).serialNumber.toLowerCase().replace(/^0+(?=.)/, '').slice(0, 64);
  return `${Date.now().toString().padStart(13, '0')}-${serial}-${randomBytes(4).toString('hex')}`;
}

/**
 * Step 1: writes a complete, fsynced generation directory that nothing points at yet. Refuses a
 * key/certificate pair that does not match, so a mismatched pair can never become current.
 */
async function writeGeneration(stateDir: string, content: GenerationContent): Promise<string> {
  assertPairMatches(content.keyPem, new X509Certificate(content.certPem), 'the new generation');
  const identity = identityFileSchema.parse(content.identity);
  const generationsDir = join(stateDir, GENERATIONS_DIR);
  await mkdir(generationsDir, { recursive: true, mode: 0o700 });
  const name = newGenerationName(content.certPem);
  const dir = join(generationsDir, name);
  await mkdir(dir, { mode: 0o700 });
  const data: Record<StateFile, string> = {
    'identity.json': `${JSON.stringify(identity, null, 2)}\n`,
    'key.pem': content.keyPem,
    'cert.pem': content.certPem,
    'ca.pem': content.caPem,
  };
  for (const file of STATE_FILES) {
    await writeFileAtomic(join(dir, file), data[file], { mode: FILE_MODES[file] });
  }
  await fsyncPath(generationsDir);
  return name;
}

/** Atomically points `name` (a symlink in stateDir) at `target`: temp symlink, rename, dir fsync. */
async function replaceSymlink(stateDir: string, name: string, target: string): Promise<void> {
  const tmp = join(stateDir, `.${name}.${randomBytes(6).toString('hex')}.tmp`);
  await symlink(target, tmp);
  try {
    await rename(tmp, join(stateDir, name));
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fsyncPath(stateDir);
}

/** Step 2: the stable operator names, each a symlink through `current` (dangling until step 3). */
async function ensureOperatorLinks(stateDir: string): Promise<void> {
  for (const file of STATE_FILES) {
    const want = `${CURRENT_LINK}/${file}`;
    try {
      if ((await readlink(join(stateDir, file))) === want) continue;
    } catch (err) {
      if (!isErrno(err, 'ENOENT') && !isErrno(err, 'EINVAL')) throw err;
    }
    await replaceSymlink(stateDir, file, want);
  }
}

/** Step 3: the commit. One rename of the `current` symlink switches the whole pair (and CA, identity). */
async function switchCurrent(stateDir: string, generation: string): Promise<void> {
  if (!GENERATION_NAME.test(generation)) throw new Error(`bad generation name ${generation}`);
  await replaceSymlink(stateDir, CURRENT_LINK, `${GENERATIONS_DIR}/${generation}`);
}

/**
 * Step 4 (housekeeping, safe to skip or interrupt): keeps the current generation and `previous` (the
 * one current before the switch, for a manual rollback), removes the rest, including generations a
 * crash left behind before their switch, and stale temp symlinks.
 */
async function pruneGenerations(stateDir: string, previous: string | null = null): Promise<void> {
  const current = await currentGeneration(stateDir);
  if (current === null) return;
  const generationsDir = join(stateDir, GENERATIONS_DIR);
  for (const name of await readdir(generationsDir)) {
    if (!GENERATION_NAME.test(name) || name === current || name === previous) continue;
    await rm(join(generationsDir, name), { recursive: true, force: true });
  }
  const now = Date.now();
  for (const entry of await readdir(stateDir)) {
    if (!entry.startsWith('.') || !entry.endsWith('.tmp')) continue;
    if (!STATE_FILES.some((f) => entry.startsWith(`.${f}.`)) && !entry.startsWith(`.${CURRENT_LINK}.`)) continue;
    const info = await lstat(join(stateDir, entry)).catch(() => null);
    if (info?.isSymbolicLink() === true && now - info.mtimeMs > STALE_TMP_MS) {
      await unlink(join(stateDir, entry)).catch(() => {});
    }
  }
}

/** Individual steps of a save, exported so tests can stop between them like a crash would. */
export const saveSteps = Object.freeze({ writeGeneration, ensureOperatorLinks, switchCurrent, pruneGenerations });

/** Writes and commits a whole identity (enrollment, or re-enrollment with --force). */
export async function saveEnrollment(stateDir: string, content: GenerationContent): Promise<Identity> {
  await ensureStateDir(stateDir);
  const previous = await currentGeneration(stateDir).catch(() => null);
  const generation = await writeGeneration(stateDir, content);
  await ensureOperatorLinks(stateDir);
  await switchCurrent(stateDir, generation);
  await pruneGenerations(stateDir, previous);
  return loadIdentity(stateDir);
}

/**
 * Commits a renewed key + certificate pair, keeping the identity. `caPem` defaults to the stored CA
 * (a renewal response carries the CA too; the caller has already checked its pin).
 */
export async function saveRenewedCertificate(
  stateDir: string,
  keyPem: string,
  certPem: string,
  caPem?: string,
  trust?: { caPins: string[]; caPem: string } | null,
): Promise<Identity> {
  const current = await loadIdentity(stateDir);
  if (trust) return saveEnrollment(stateDir, { identity: { ...identityFileOf(current), caPins: trust.caPins }, keyPem, certPem, caPem: trust.caPem });
  return saveEnrollment(stateDir, { identity: identityFileOf(current), keyPem, certPem, caPem: caPem ?? current.caPem });
}

/** Commits a new CA bundle and its pins (adoptCaBundle), keeping key and certificate. */
export async function saveCaTrust(stateDir: string, trust: { caPins: string[]; caPem: string }): Promise<Identity> {
  const current = await loadIdentity(stateDir);
  return saveEnrollment(stateDir, { identity: { ...identityFileOf(current), caPins: trust.caPins }, keyPem: current.keyPem, certPem: current.certPem, caPem: trust.caPem });
}

/** Commits a new server URL (the server's public URL moved), keeping key, certificate and CA. */
export async function saveServerUrl(stateDir: string, server: string): Promise<Identity> {
  const current = await loadIdentity(stateDir);
  return saveEnrollment(stateDir, { identity: { ...identityFileOf(current), server }, keyPem: current.keyPem, certPem: current.certPem, caPem: current.caPem });
}

function identityFileOf(current: Identity): IdentityFile {
  return {
    version: 1,
    nodeId: current.nodeId,
    server: current.server,
    caPins: [...current.caPins],
    hostname: current.hostname,
    sans: [...current.sans],
    enrolledAt: current.enrolledAt,
  };
}
