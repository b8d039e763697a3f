import { z } from 'zod';
import type { TokenCreation } from '../../admin-api/routes.js';
import { createEnrollmentToken, resolveNode } from '../nodes.js';
import { MeshStore } from './store.js';
import type { Store } from '../store/store.js';
import { hashToken } from '../tokens.js';
import { TAG_RE, validatePolicy, type Policy } from '../../admin-api/policy.js';
import { policyId } from './policy.js';
import { MeshlinkError } from '../../errors.js';

/**
 * Operator actions on the mesh that need only the store: used by the admin routes (then the running
 * MeshService recomputes) and by the CLI when no server runs (the next start recomputes).
 */

export const tagListSchema = z.array(z.string().regex(TAG_RE, 'a tag: letters, digits, . _ - (at most 64)')).max(64);

export function checkTags(tags: readonly string[]): string[] {
  const r = tagListSchema.safeParse(tags);
  if (!r.success) {
    const bad = tags.find((t) => !TAG_RE.test(t));
    throw new MeshlinkError('ML_ERR_MESH_TAG', bad !== undefined ? `invalid tag "${bad}": letters, digits, . _ - (at most 64), not starting with . _ -` : 'at most 64 tags');
  }
  return [...new Set(r.data)];
}

export type TagMode = 'set' | 'add' | 'remove';

export async function tagNode(store: Store, idOrHostname: string, tags: readonly string[], mode: TagMode): Promise<{ id: string; hostname: string; tags: string[] }> {
  const wanted = checkTags(tags);
  const node = await resolveNode(store, idOrHostname);
  const db = new MeshStore(store.database);
  // Read and write in one transaction: two tag changes of one node at once must not lose one (add, remove).
  const next = await db.transaction(async (tx) => {
    const current = (await tx.listing(node.id)).get(node.id)?.tags ?? [];
    const next = mode === 'set' ? wanted : mode === 'add' ? [...new Set([...current, ...wanted])] : current.filter((t) => !wanted.includes(t));
    await tx.setTags(node.id, next);
    return next;
  });
  return { id: node.id, hostname: node.hostname, tags: next };
}

export async function createTaggedToken(store: Store, options: { ttlMs: number; nodeId: string | null; tags: readonly string[] }): Promise<TokenCreation & { tags: string[] }> {
  const tags = checkTags(options.tags);
  const created = await createEnrollmentToken(store, { ttlMs: options.ttlMs, nodeId: options.nodeId });
  await new MeshStore(store.database).tagToken(hashToken(created.token), tags);
  return { ...created, tags };
}

/** With no server running: stores the policy; the next start sends the events. */
export async function storePolicy(store: Store, input: unknown): Promise<{ policyId: string }> {
  const policy = input === null ? null : validatePolicy(input);
  const db = new MeshStore(store.database);
  if (policy === null) await db.deleteSetting('policy');
  else await db.setSetting('policy', JSON.stringify(policy));
  return { policyId: policyId(policy) };
}

export async function storedPolicy(store: Store): Promise<{ policy: Policy | null; policyId: string }> {
  const text = await new MeshStore(store.database).getSetting('policy');
  const policy = text === undefined ? null : validatePolicy(JSON.parse(text));
  return { policy, policyId: policyId(policy) };
}
