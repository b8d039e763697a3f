import type { z } from 'zod';

/** `field.path: message` of a schema failure's first issue (the operator fixes one thing at a time). */
export function formatIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  const where = issue && issue.path.length > 0 ? issue.path.join('.') : '(input)';
  return `${where}: ${issue?.message ?? 'invalid'}`;
}
