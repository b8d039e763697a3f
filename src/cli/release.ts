import { createPrivateKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { access, readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { z } from 'zod';
import { rawEd25519PublicKeyOf, signingKeyId } from '../contract/ed25519.js';
import { parseBundleHeader, releaseKeyText, signRelease, MAX_BUNDLE_BYTES } from '../contract/release.js';
import { MeshlinkError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { withFailureReport } from './failure.js';

/**
 * `meshlink release keygen|sign` (docs/OPERATIONS.md, "Agent upgrade"): the operator's release key,
 * made and used away from the control plane. keygen writes the private key (PKCS#8 PEM, mode 0600)
 * and `<key>.pub` with the public key as text; sign writes `<bundle>.sig`, the manifest that
 * `server upgrade set` and every agent verify. Neither talks to a server.
 */
export function registerReleaseCommands(program: Command): void {
  const release = program.command('release').description('the release key that signs agent bundles: make one, sign a bundle');

  release
    .command('keygen')
    .description('make an Ed25519 release key: the private key in FILE (0600), the public key in FILE.pub and on stdout')
    .requiredOption('--out <file>', 'where to write the private key')
    .option('--force', 'replace an existing key file (agents that pin the old key then refuse new builds)', false)
    .option('--json', 'print {"publicKey","keyId","privateKeyFile"}', false)
    .action(
      withFailureReport(async (raw: unknown) => {
        const o = z.object({ out: z.string().min(1), force: z.boolean(), json: z.boolean() }).parse(raw);
        if (!o.force && (await exists(o.out))) throw new MeshlinkError('ML_ERR_USAGE', `${o.out} exists; pass --force to replace it`);
        const { privateKey, publicKey } = generateKeyPairSync('ed25519');
        const raw32 = rawEd25519PublicKeyOf(publicKey);
        const text = releaseKeyText(raw32);
        await writeFileAtomic(o.out, privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, { mode: 0o600 });
        await writeFileAtomic(`${o.out}.pub`, `${text}\n`, { mode: 0o644 });
        const keyId = signingKeyId(raw32);
        if (o.json) process.stdout.write(`${JSON.stringify({ publicKey: text, keyId, privateKeyFile: o.out })}\n`);
        else
          process.stdout.write(
            `release key ${keyId} written to ${o.out} (keep it off the control plane)\n` +
              `public key: ${text}\n` +
              `server: meshlink server start --release-key ${text} …\n` +
              `agents: meshlink agent enroll --release-key ${text} …   (or "releaseKey" in the agent config)\n`,
          );
      }),
    );

  release
    .command('sign')
    .description('sign an agent bundle: writes BUNDLE.sig (version, build id, size, signature) for `server upgrade set`')
    .argument('<bundle>', 'the single-file agent bundle (npm run bundle)')
    .requiredOption('--key <file>', 'the private key `release keygen` wrote')
    .option('--out <file>', 'where to write the signature file (default: <bundle>.sig)')
    .option('--json', 'print the signature file on stdout too', false)
    .action(
      withFailureReport(async (bundle: string, raw: unknown) => {
        const o = z.object({ key: z.string().min(1), out: z.string().optional(), json: z.boolean() }).parse(raw);
        const privateKey = await readReleaseKey(o.key);
        const bytes = await readFile(bundle);
        if (bytes.length > MAX_BUNDLE_BYTES) throw new MeshlinkError('ML_ERR_UPGRADE_NOT_BUNDLE', `${bundle} is larger than ${MAX_BUNDLE_BYTES} bytes`);
        parseBundleHeader(bytes);
        const manifest = signRelease(bytes, privateKey, rawEd25519PublicKeyOf(privateKey));
        const out = o.out ?? `${bundle}.sig`;
        await writeFileAtomic(out, `${JSON.stringify(manifest)}\n`, { mode: 0o644 });
        if (o.json) process.stdout.write(`${JSON.stringify(manifest)}\n`);
        else process.stdout.write(`signed build ${manifest.buildId} (version ${manifest.version}, ${manifest.size} bytes) with release key ${manifest.keyId}: ${out}\n`);
      }),
    );
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** The private key file `release keygen` wrote (an Ed25519 PKCS#8 PEM); never echoed. */
async function readReleaseKey(path: string): Promise<KeyObject> {
  const pem = await readFile(path, 'utf8').catch((err: unknown) => {
    throw new MeshlinkError('ML_ERR_USAGE', `cannot read the release key ${path}: ${(err as Error).message}`);
  });
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch {
    throw new MeshlinkError('ML_ERR_UPGRADE_KEY', `${path} is not a private key PEM`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new MeshlinkError('ML_ERR_UPGRADE_KEY', `${path} is a ${key.asymmetricKeyType} key; a release key is Ed25519 (meshlink release keygen)`);
  return key;
}
