import { createHash, randomBytes } from 'node:crypto';
import type { Store, TokenRow } from './store/store.js';
import { MeshlinkError } from '../errors.js';

/**
 * One-time enrollment tokens: 128 random bits, base64url (22 characters). Only the SHA-256 of a token
 * is stored, so a copy of the database does not contain usable tokens. Consumption is the single
 * conditional UPDATE in Store.commitEnrollment.
 */

export const DEFAULT_TOKEN_TTL_MS = 3_600_000;
const TOKEN_RE = /^[A-Za-z0-9_-]{22}$/;

export function generateToken(): string {
  return randomBytes(16).toString('base64url');
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export interface CreatedToken {
  token: string;
  /** The public id (not derived from the token): what listings show and a revocation names. */
  id: string;
  expiresAt: number;
  nodeId: string | null;
}

/** A token's public id: 64 random bits, hex. */
export function generateTokenId(): string {
  return randomBytes(8).toString('hex');
}

/** Creates a token. With `nodeId` it is a re-enrollment token: the enrolling agent keeps that node id. */
export async function createToken(
  store: Store,
  options: { ttlMs?: number; nodeId?: string | null; now?: number },
): Promise<CreatedToken> {
  const now = options.now ?? Date.now();
  const nodeId = options.nodeId ?? null;
  if (nodeId !== null) {
    const node = await store.getNode(nodeId);
    if (!node || node.removedAt !== null) throw new MeshlinkError('ML_ERR_NODE_NOT_FOUND', `no live node with id ${nodeId}`);
  }
  const token = generateToken();
  const id = generateTokenId();
  const expiresAt = now + (options.ttlMs ?? DEFAULT_TOKEN_TTL_MS);
  await store.insertToken({ hash: hashToken(token), id, createdAt: now, expiresAt, nodeId });
  return { token, id, expiresAt, nodeId };
}

/**
 * A read-only pre-check, done before any signing work so a bad token costs a hash and an index
 * lookup. It does not consume: the enrollment commit re-checks atomically.
 */
/** findUsableToken as a yes or no (the enrollment limiter's check of a source over its budget). */
export async function isUsableToken(store: Store, token: string, now: number): Promise<boolean> {
  const row = TOKEN_RE.test(token) ? await store.getToken(hashToken(token)) : undefined;
  return row !== undefined && row.consumedAt === null && row.expiresAt > now;
}

export async function findUsableToken(store: Store, token: string, now: number): Promise<TokenRow> {
  const row = TOKEN_RE.test(token) ? await store.getToken(hashToken(token)) : undefined;
  // One message for every case: do not tell a prober which tokens exist.
  if (!row || row.consumedAt !== null || row.revokedAt !== null || row.expiresAt <= now) {
    throw new MeshlinkError('ML_ERR_TOKEN_INVALID', 'the enrollment token is unknown, already used, expired, or revoked');
  }
  return row;
}

export type TokenState = 'usable' | 'used' | 'expired' | 'revoked';

/** What a token is now; a used token stays "used" whatever happened after. */
export function tokenState(row: Pick<TokenRow, 'consumedAt' | 'revokedAt' | 'expiresAt'>, now: number): TokenState {
  if (row.consumedAt !== null) return 'used';
  if (row.revokedAt !== null) return 'revoked';
  return row.expiresAt <= now ? 'expired' : 'usable';
}

/**
 * Revokes the token with this public id, so that it no longer enrolls. Revoking a revoked token
 * changes nothing (the first revocation's time stays); a used token cannot be revoked: the node it
 * enrolled is removed instead (ML_ERR_TOKEN_USED). An expired one can, so that a listing says what
 * the operator did.
 */
export async function revokeToken(store: Store, id: string, now = Date.now()): Promise<TokenRow> {
  const row = await store.getTokenById(id);
  if (!row) throw new MeshlinkError('ML_ERR_TOKEN_NOT_FOUND', `no enrollment token has the id ${id}`);
  if (row.consumedAt !== null) throw new MeshlinkError('ML_ERR_TOKEN_USED', `token ${id} was used at ${new Date(row.consumedAt).toISOString()}: remove the node it enrolled (\`server nodes remove\`) instead`);
  // A concurrent enrollment may consume it between the read and the update: the update's condition decides.
  if (row.revokedAt === null && !(await store.revokeToken(id, now))) return revokeToken(store, id, now);
  return (await store.getTokenById(id))!;
}
