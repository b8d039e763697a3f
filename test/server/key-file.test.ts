import { createCipheriv, createDecipheriv, randomBytes, scryptSync } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync, chmodSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { rawEd25519PublicKeyOf, signingKeyId } from '../../src/contract/ed25519.js';
import { CertificateAuthority } from '../../src/server/ca.js';
import { parseServerConfig } from '../../src/server/config.js';
import { openServerStore } from '../../src/server/features.js';
import { defaultKeyFiles, openKeyFile, SYSTEM_DATA_DIR, SYSTEM_KEY_FILE } from '../../src/server/key-file.js';
import { startServer } from '../../src/server/server.js';
import { createLogger } from '../../src/util/logger.js';
import { generateKeyPairSync } from 'node:crypto';
import { dialConnect, enrollNode, startTestServer, tempDir } from './helpers.js';

/**
 * Issue 17 item 16: the store's secrets are sealed with a key file kept outside the data dir, never
 * with something derivable from the store (its path). Real SQLite files, real servers on loopback.
 */

const silent = createLogger({ name: 'test', level: 'silent' });
const SCRYPT = { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };

/**
 * A reference of how earlier releases sealed a secret (blob version 1: scrypt of the store's absolute
 * path and the passphrase), written from their format so that a store "made by the old code" can be
 * built here without that code.
 */
function sealV1(plain: Buffer, storePathAbs: string, passphrase: string): { blob: Buffer; salt: Buffer } {
  const salt = randomBytes(16);
  const key = scryptSync(`${storePathAbs}\u0000${passphrase}`, salt, 32, SCRYPT);
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from('meshlink-ca-key-v1'));
  const ct = Buffer.concat([c.update(plain), c.final()]);
  return { blob: Buffer.concat([Buffer.from([1]), iv, c.getAuthTag(), ct]), salt };
}
/** What an attacker with only the database and its path would try: the version 1 derivation. */
function opensWithPathOnly(blob: Buffer, salt: Buffer, storePathAbs: string): boolean {
  try {
    const key = scryptSync(`${storePathAbs}\u0000`, salt, 32, SCRYPT);
    const d = createDecipheriv('aes-256-gcm', key, blob.subarray(1, 13));
    d.setAAD(Buffer.from(blob[0] === 1 ? 'meshlink-ca-key-v1' : 'meshlink-sealed-v2'));
    d.setAuthTag(blob.subarray(13, 29));
    Buffer.concat([d.update(blob.subarray(29)), d.final()]);
    return true;
  } catch {
    return false;
  }
}
/** The mesh's row sealing (SecretBox.seal): iv | tag | ciphertext under the master key, label as AAD. */
function boxSeal(master: Buffer, plain: Buffer, label: string): Buffer {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', master, iv);
  c.setAAD(Buffer.from(label));
  const ct = Buffer.concat([c.update(plain), c.final()]);
  return Buffer.concat([iv, c.getAuthTag(), ct]);
}

/** A data dir as an earlier release left it: CA key, mesh master key (and a signing key under it) sealed with the store path only. */
async function legacyDataDir(dataDir: string): Promise<{ caPin: string; signingKeyId: string; caPkcs8: Buffer }> {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = resolve(join(dataDir, 'meshlink.db'));
  const store = await openServerStore(path);
  const ca = await CertificateAuthority.create({ keyType: 'rsa2048' });
  const caBlob = sealV1(ca.exportKeyPkcs8Der(), path, '');
  await store.insertCa({ keyBlob: caBlob.blob, kdfSalt: caBlob.salt, certPem: ca.certPem, createdAt: Date.now() });
  const master = randomBytes(32);
  const masterBlob = sealV1(master, path, '');
  const db = store.database.sqlite!;
  db.prepare('INSERT INTO mesh_master (id, key_blob, kdf_salt) VALUES (1, ?, ?)').run(masterBlob.blob, masterBlob.salt);
  const { privateKey } = generateKeyPairSync('ed25519');
  const raw = rawEd25519PublicKeyOf(privateKey);
  const keyId = signingKeyId(raw);
  const pkcs8 = privateKey.export({ format: 'der', type: 'pkcs8' });
  db.prepare('INSERT INTO mesh_signing_keys (key_id, public_key, sealed_pkcs8, created_at) VALUES (?, ?, ?, ?)').run(keyId, Buffer.from(raw), boxSeal(master, pkcs8, `signing:${keyId}`), Date.now());
  await store.close();
  return { caPin: ca.pin, signingKeyId: keyId, caPkcs8: ca.exportKeyPkcs8Der() };
}

async function sealedBlobs(dbPath: string): Promise<{ ca: { blob: Buffer; salt: Buffer }; master: { blob: Buffer; salt: Buffer }; signingKeyIds: string[] }> {
  const store = await openServerStore(dbPath);
  try {
    const ca = (await store.getCa())!;
    const m = store.database.sqlite!.prepare('SELECT key_blob, kdf_salt FROM mesh_master WHERE id = 1').get() as { key_blob: Buffer; kdf_salt: Buffer };
    const ids = (store.database.sqlite!.prepare('SELECT key_id FROM mesh_signing_keys ORDER BY created_at').all() as Array<{ key_id: string }>).map((r) => r.key_id);
    return { ca: { blob: ca.keyBlob, salt: ca.kdfSalt }, master: { blob: m.key_blob, salt: m.kdf_salt }, signingKeyIds: ids };
  } finally {
    await store.close();
  }
}

async function start(dataDir: string, keyFile?: string) {
  const config = parseServerConfig({ dataDir, keyFile: keyFile ?? null, listen: { host: '127.0.0.1', port: 0 }, caKeyType: 'rsa2048', logLevel: 'silent' }, {});
  return startServer(config, { logger: silent, passphrase: '' });
}

describe('the server key file', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });
  async function root(): Promise<string> {
    const dir = await tempDir('ml-keyfile-');
    cleanups.push(dir.cleanup);
    return dir.path;
  }

  it('is created at first start beside the data dir with mode 0600; a copy of the store at its own path does not open without it', async () => {
    const r = await root();
    const dataDir = join(r, 'server');
    const first = await startTestServer({}, { dataDir, passphrase: '' });
    const pin = first.server.caPin;
    const caPkcs8 = first.server.ca.exportKeyPkcs8Der();
    const kept = await enrollNode(first, 'kept');
    await first.server.close();

    const keyFile = join(r, 'server.key');
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(readFileSync(keyFile, 'utf8')).toMatch(/^[0-9a-f]{64}\n$/);
    expect(existsSync(join(dataDir, 'server.key'))).toBe(false);

    // The database holds no plain CA key, and what the old scheme derived from its path opens nothing.
    const dbPath = resolve(join(dataDir, 'meshlink.db'));
    const bytes = readFileSync(dbPath);
    expect(bytes.includes(caPkcs8)).toBe(false);
    expect(bytes.includes(Buffer.from('PRIVATE KEY'))).toBe(false);
    const blobs = await sealedBlobs(dbPath);
    expect([blobs.ca.blob[0], blobs.master.blob[0]]).toEqual([2, 2]);
    expect(opensWithPathOnly(blobs.ca.blob, blobs.ca.salt, dbPath)).toBe(false);
    expect(opensWithPathOnly(blobs.master.blob, blobs.master.salt, dbPath)).toBe(false);

    // The store copied elsewhere: without a key file it is refused, and no new key file is made for it.
    const moved = join(r, 'moved');
    mkdirSync(moved, { mode: 0o700 });
    copyFileSync(dbPath, join(moved, 'meshlink.db'));
    await expect(start(moved)).rejects.toMatchObject({ code: 'ML_ERR_KEY_FILE' });
    expect(existsSync(join(r, 'moved.key'))).toBe(false);
    // Another key file does not open it either.
    const other = join(r, 'other.key');
    writeFileSync(other, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    await expect(start(moved, other)).rejects.toMatchObject({ code: 'ML_ERR_CA_PASSPHRASE' });
    // With its key file it opens at the new path: same CA, and the node's certificate still connects.
    const again = await start(moved, keyFile);
    try {
      expect(again.caPin).toBe(pin);
      const ok = await dialConnect(`https://127.0.0.1:${again.address().port}`, { ca: kept.caPem, cert: kept.certPem, key: kept.keyPem });
      expect(ok.kind).toBe('open');
      if (ok.kind === 'open') ok.ws.terminate();
    } finally {
      await again.close();
    }
  });

  it('a store sealed the old way (path only) is re-sealed with the key file at its first start, keeping the CA and the signing key', async () => {
    const r = await root();
    const dataDir = join(r, 'old');
    const legacy = await legacyDataDir(dataDir);
    const dbPath = resolve(join(dataDir, 'meshlink.db'));
    const blobs = await sealedBlobs(dbPath);
    expect(opensWithPathOnly(blobs.ca.blob, blobs.ca.salt, dbPath)).toBe(true);

    const srv = await start(dataDir);
    expect(srv.caPin).toBe(legacy.caPin);
    await srv.close();
    expect(statSync(join(r, 'old.key')).mode & 0o777).toBe(0o600);
    const after = await sealedBlobs(dbPath);
    expect([after.ca.blob[0], after.master.blob[0]]).toEqual([2, 2]);
    expect(opensWithPathOnly(after.ca.blob, after.ca.salt, dbPath)).toBe(false);
    expect(opensWithPathOnly(after.master.blob, after.master.salt, dbPath)).toBe(false);
    expect(after.signingKeyIds).toEqual([legacy.signingKeyId]);
    expect(readFileSync(dbPath).includes(legacy.caPkcs8)).toBe(false);

    // Migrated once: it starts again, and now opens at another path with the key file.
    const moved = join(r, 'moved');
    mkdirSync(moved, { mode: 0o700 });
    copyFileSync(dbPath, join(moved, 'meshlink.db'));
    const there = await start(moved, join(r, 'old.key'));
    expect(there.caPin).toBe(legacy.caPin);
    await there.close();
  });

  it('refuses a key file open to group or others, a symlink, a malformed file, and one inside the data dir', async () => {
    const r = await root();
    const dataDir = join(r, 'd');
    const open = (keyFile: string) => openKeyFile({ dataDir, keyFile, passphrase: '', mayCreate: true, logger: silent });
    const loose = join(r, 'loose.key');
    writeFileSync(loose, `${randomBytes(32).toString('hex')}\n`);
    chmodSync(loose, 0o640);
    await expect(open(loose)).rejects.toMatchObject({ code: 'ML_ERR_KEY_FILE', message: expect.stringContaining('group or others') });
    const link = join(r, 'link.key');
    chmodSync(loose, 0o600);
    symlinkSync(loose, link);
    await expect(open(link)).rejects.toMatchObject({ code: 'ML_ERR_KEY_FILE', message: expect.stringContaining('symlink') });
    const bad = join(r, 'bad.key');
    writeFileSync(bad, 'not a key\n', { mode: 0o600 });
    await expect(open(bad)).rejects.toMatchObject({ code: 'ML_ERR_KEY_FILE', message: expect.stringContaining('malformed') });
    await expect(open(join(dataDir, 'server.key'))).rejects.toMatchObject({ code: 'ML_ERR_CONFIG' });
    // An accepted one opens to the same secret each time (what was created is what is read back).
    const made = await open(join(r, 'made.key'));
    expect(made.created).toBe(true);
    expect(statSync(made.path).mode & 0o777).toBe(0o600);
    expect((await open(join(r, 'made.key'))).created).toBe(false);
  });

  it('defaults: /etc/meshlink/server.key first for the system data dir, else beside the data dir', () => {
    expect(defaultKeyFiles(SYSTEM_DATA_DIR)).toEqual([SYSTEM_KEY_FILE, '/var/lib/meshlink/server.key']);
    expect(defaultKeyFiles('/srv/mesh/')).toEqual(['/srv/mesh.key']);
  });
});
