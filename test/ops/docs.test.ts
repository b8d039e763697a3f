import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { OPS_EXIT } from '../../src/cli/server-ops.js';

/** docs/OPERATIONS.md must list exactly the codes and exit codes the code uses. */
const doc = readFileSync('docs/OPERATIONS.md', 'utf8');

describe('docs/OPERATIONS.md', () => {
  it('lists every exit code of the ops commands', () => {
    const section = doc.slice(doc.indexOf('## Exit codes of the ops commands'), doc.indexOf('## Benchmarks'));
    const listed = [...section.matchAll(/^\| (\d+) \|/gm)].map((m) => Number(m[1]));
    expect(listed).toEqual(Object.values(OPS_EXIT));
  });
});
