import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SERVER_ERROR_CODES } from '../../src/server/errors.js';

describe('docs/SERVER.md', () => {
  const doc = readFileSync(new URL('../../docs/SERVER.md', import.meta.url), 'utf8');
  it.each(Object.entries(SERVER_ERROR_CODES))('documents %s with its HTTP status', (code, spec) => {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${code}\``));
    expect(row, `${code} missing from the error table`).toBeDefined();
    const status = spec.status === 500 && !row!.includes('500') ? '—' : String(spec.status);
    expect(row).toContain(`| ${status} |`);
  });
});
