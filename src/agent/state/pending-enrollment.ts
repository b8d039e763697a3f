import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../../util/atomic-file.js';
import type { AgentKeyPair } from '../csr.js';

/**
 * The key and CSR of an enrollment in flight, `<stateDir>/enroll-pending.json` (0600), written before
 * the token is sent and removed once the certificate is committed. If the answer is lost (the command
 * killed, the connection dropped), running enroll again with the same token and server sends the same
 * CSR, and the server answers with the certificate it already issued (server/enroll.ts) instead of
 * refusing a spent token. Only the SHA-256 of the token is kept, never the token.
 */

const FILE = 'enroll-pending.json';
const schema = z.object({ version: z.literal(1), server: z.string(), tokenSha256: z.string().regex(/^[0-9a-f]{64}$/), keyPem: z.string().max(16_384), csrPem: z.string().max(65_536) }).strict();

const tokenSha256 = (token: string): string => createHash('sha256').update(token, 'utf8').digest('hex');

/** The key and CSR saved for this token and server, if any (anything unreadable counts as none). */
export async function loadPendingEnrollment(stateDir: string, server: string, token: string): Promise<{ keys: AgentKeyPair; csrPem: string } | null> {
  const raw = await readFile(join(stateDir, FILE), 'utf8').catch(() => null);
  if (raw === null) return null;
  try {
    const p = schema.parse(JSON.parse(raw));
    if (p.server !== server || p.tokenSha256 !== tokenSha256(token)) return null;
    const privateKey = createPrivateKey(p.keyPem);
    const publicKey = createPublicKey(privateKey);
    const keys: AgentKeyPair = Object.freeze({ privateKey, publicKey, privateKeyPem: p.keyPem, publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString() });
    return { keys, csrPem: p.csrPem };
  } catch {
    return null;
  }
}

export async function savePendingEnrollment(stateDir: string, server: string, token: string, keys: AgentKeyPair, csrPem: string): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const body = { version: 1, server, tokenSha256: tokenSha256(token), keyPem: keys.privateKeyPem, csrPem };
  await writeFileAtomic(join(stateDir, FILE), JSON.stringify(body), { mode: 0o600 });
}

export async function clearPendingEnrollment(stateDir: string): Promise<void> {
  await unlink(join(stateDir, FILE)).catch(() => {});
}
