import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { OPS_ERROR_CODES } from '../../src/agent/ops/errors.js';
import { OPS_EXIT } from '../../src/cli/server-ops.js';

/** docs/OPERATIONS.md must list exactly the codes and exit codes the code uses. */
const doc = readFileSync('docs/OPERATIONS.md', 'utf8');

describe('docs/OPERATIONS.md', () => {
  it('lists every ops error code with its description, and nothing else', () => {
    const section = doc.slice(doc.indexOf('## Error codes'), doc.indexOf('## Benchmarks'));
    const rows = [...section.matchAll(/^\| `(ML_ERR_[A-Z_]+)` \| (.+) \|$/gm)].map((m) => [m[1], m[2]]);
    expect(rows).toEqual(Object.entries(OPS_ERROR_CODES));
  });

  it('lists every exit code of the ops commands', () => {
    const section = doc.slice(doc.indexOf('## Exit codes of the ops commands'), doc.indexOf('## Error codes'));
    const listed = [...section.matchAll(/^\| (\d+) \|/gm)].map((m) => Number(m[1]));
    expect(listed).toEqual(Object.values(OPS_EXIT));
  });
});
