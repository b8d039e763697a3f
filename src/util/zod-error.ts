import type { z } from 'zod';

export interface ZodErrorTextOptions {
  /** What to call the value itself, for an issue with an empty path: `(root)` unless the caller names it (`body`, `request`). */
  readonly root?: string;
  /** Every issue, `; `-separated, instead of the first only. */
  readonly all?: boolean;
}

/**
 * The one way a ZodError becomes error text: one line, `field: message`, the field a dotted path
 * (`rules.1.to`), the first issue unless every issue is asked for. Never the input value: zod 4 puts
 * it on an issue only under `reportInput`, and this reads only paths and messages, so a token that
 * fails its schema is named, not echoed. zod's own `z.prettifyError` is multi-line (`✖ …\n  → at …`)
 * and sorts issues by path length, so it is not used: callers prefix this with what was invalid
 * (`invalid server config: `) and the CLI prints it after `error CODE: `.
 */
export function zodErrorText(error: z.ZodError, options: ZodErrorTextOptions = {}): string {
  const root = options.root ?? '(root)';
  const issues = options.all === true ? error.issues : error.issues.slice(0, 1);
  if (issues.length === 0) return `${root}: invalid`;
  // A custom message could hold a line break; the text stays one line whatever a schema says.
  return issues.map((issue) => `${pathText(issue.path) || root}: ${messageText(issue)}`).join('; ').replace(/[\r\n]+/g, ' ');
}

/** zod 4 paths are PropertyKey[]: a symbol segment would make a plain `join('.')` throw. */
function pathText(path: readonly PropertyKey[]): string {
  return path.map((segment) => String(segment)).join('.');
}

/**
 * A union that no alternative matched says only "Invalid input"; the alternatives' own first issues
 * (their paths relative to the union) say why, e.g. `Invalid input (expected string, received
 * boolean | expected number, received boolean)`.
 */
function messageText(issue: z.core.$ZodIssue): string {
  if (issue.code !== 'invalid_union' || issue.errors.length === 0) return issue.message;
  const reasons = issue.errors.flatMap((branch) => {
    const first = branch[0];
    if (!first) return [];
    const where = pathText(first.path);
    return [where ? `${where}: ${messageText(first)}` : messageText(first)];
  });
  return reasons.length === 0 ? issue.message : `${issue.message} (${[...new Set(reasons)].join(' | ')})`;
}
