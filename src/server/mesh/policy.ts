import { createHash } from 'node:crypto';
import type { Policy } from '../../admin-api/policy.js';

/**
 * Network policy (the document's schema is the operator API's, ../../admin-api/policy.ts). Two nodes are
 * peers when some rule lets either reach the other (WireGuard tunnels are symmetric). No policy at all
 * means a full mesh; `{"rules": []}` means no node sees any other.
 */

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

/**
 * Adds to `permitted` (permittedPeers' result, in place) the pairs of the nodes in `joined`, exactly as
 * permittedPeers(nodes, policy) would have them, at a cost of |joined| × n per rule instead of n².
 * For nodes that just enrolled: their pairs are the only new ones, since nobody's tags and the policy
 * did not change (an enrollment burst into a mesh of n nodes would otherwise redo the whole O(n²)
 * evaluation at every sweep).
 */
export function addJoinedPeers(permitted: Map<string, Set<string>>, nodes: readonly TaggedNode[], policy: Policy | null, joined: ReadonlySet<string>): void {
  const setOf = (id: string): Set<string> => {
    let set = permitted.get(id);
    if (!set) permitted.set(id, (set = new Set()));
    return set;
  };
  const link = (a: string, b: string): void => {
    if (a === b) return;
    setOf(a).add(b);
    setOf(b).add(a);
  };
  const fresh = nodes.filter((n) => joined.has(n.id));
  for (const x of fresh) setOf(x.id);
  if (policy === null) {
    for (const x of fresh) for (const n of nodes) link(x.id, n.id);
    return;
  }
  const matches = (n: TaggedNode, tag: string): boolean => tag === '*' || n.tags.includes(tag);
  for (const rule of policy.rules) {
    for (const x of fresh) {
      const xFrom = matches(x, rule.from);
      const xTo = matches(x, rule.to);
      if (!xFrom && !xTo) continue;
      for (const n of nodes) if ((xFrom && matches(n, rule.to)) || (xTo && matches(n, rule.from))) link(x.id, n.id);
    }
  }
}
