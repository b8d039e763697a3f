import { createHash } from 'node:crypto';
import { z } from 'zod';
import { MeshlinkError } from '../../errors.js';
import { zodErrorText } from '../../util/zod-error.js';

/**
 * Network policy: `{"rules": [{"from": TAG, "to": TAG}, ...]}`, `*` matching any node. Two nodes are
 * peers when some rule lets either reach the other (WireGuard tunnels are symmetric). No policy at all
 * means a full mesh; `{"rules": []}` means no node sees any other.
 */

export const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const tagOrAny = z.string().refine((t) => t === '*' || TAG_RE.test(t), 'a tag (letters, digits, . _ -; at most 64) or "*"');

export const policySchema = z
  .object({ rules: z.array(z.object({ from: tagOrAny, to: tagOrAny }).strict()).max(10_000) })
  .strict();
export type Policy = z.infer<typeof policySchema>;

/** Bigger policy files are refused before parsing (10,000 rules fit in well under this). */
export const POLICY_MAX_BYTES = 1024 * 1024;

/** Parses and validates a policy document; the error names the fault (JSON position or field path). */
export function parsePolicy(text: string): Policy {
  if (Buffer.byteLength(text) > POLICY_MAX_BYTES) throw new MeshlinkError('ML_ERR_MESH_POLICY', `policy file is larger than ${POLICY_MAX_BYTES} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new MeshlinkError('ML_ERR_MESH_POLICY', `policy is not valid JSON: ${(err as Error).message}`);
  }
  return validatePolicy(value);
}

export function validatePolicy(value: unknown): Policy {
  const r = policySchema.safeParse(value);
  if (!r.success) {
    throw new MeshlinkError('ML_ERR_MESH_POLICY', `invalid policy at ${zodErrorText(r.error)}`);
  }
  return r.data;
}

/** A short stable id of a policy (or of "no policy"). */
export function policyId(policy: Policy | null): string {
  if (policy === null) return 'full-mesh';
  const canonical = JSON.stringify(policy.rules.map((r) => [r.from, r.to]));
  return createHash('sha256').update(canonical).digest('hex').slice(0, 16);
}

export interface TaggedNode {
  readonly id: string;
  readonly tags: readonly string[];
}

/**
 * Who may talk to whom: for each node, the set of its permitted peers (symmetric, never itself).
 * Cost is the sum over rules of |from| x |to| (a full mesh is n^2, as it must be).
 */
export function permittedPeers(nodes: readonly TaggedNode[], policy: Policy | null): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>(nodes.map((n) => [n.id, new Set<string>()]));
  const link = (a: string, b: string): void => {
    if (a === b) return;
    out.get(a)!.add(b);
    out.get(b)!.add(a);
  };
  if (policy === null) {
    for (let i = 0; i < nodes.length; i++) for (let j = i + 1; j < nodes.length; j++) link(nodes[i]!.id, nodes[j]!.id);
    return out;
  }
  const matching = (tag: string): string[] => (tag === '*' ? nodes.map((n) => n.id) : nodes.filter((n) => n.tags.includes(tag)).map((n) => n.id));
  const cache = new Map<string, string[]>();
  const members = (tag: string): string[] => {
    let m = cache.get(tag);
    if (!m) cache.set(tag, (m = matching(tag)));
    return m;
  };
  for (const rule of policy.rules) {
    const from = members(rule.from);
    const to = members(rule.to);
    for (const a of from) for (const b of to) link(a, b);
  }
  return out;
}
