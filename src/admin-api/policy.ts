import { z } from 'zod';
import { MeshlinkError } from '../errors.js';
import { zodErrorText } from '../util/zod-error.js';

/**
 * The mesh policy document an operator writes (docs/MESH.md): `{"rules": [{"from": TAG, "to": TAG}, ...]}`,
 * `*` matching any node. The CLI validates a policy file with it before sending; the server validates
 * what arrives on the admin socket with the same schema.
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

/** At most this many issues are named in the error (a policy of 10,000 bad rules would make a huge message). */
const MAX_POLICY_ISSUES = 20;

/**
 * Validates a policy document. The error names every issue (up to MAX_POLICY_ISSUES), each as
 * `path: message`, `; `-separated after `invalid policy at `: the console lists them under the editor.
 */
export function validatePolicy(value: unknown): Policy {
  const r = policySchema.safeParse(value);
  if (!r.success) {
    const issues = r.error.issues;
    // zodErrorText reads only the issues: the first MAX_POLICY_ISSUES of them.
    const shown = { issues: issues.slice(0, MAX_POLICY_ISSUES) } as typeof r.error;
    const more = issues.length > MAX_POLICY_ISSUES ? ` (and ${issues.length - MAX_POLICY_ISSUES} more)` : '';
    throw new MeshlinkError('ML_ERR_MESH_POLICY', `invalid policy at ${zodErrorText(shown, { all: true })}${more}`);
  }
  return r.data;
}

