import { describe, expect, it } from 'vitest';
import { printable } from '../../src/cli/table.js';

describe('printable', () => {
  it('shows control characters an agent might send as \\xNN, and leaves the rest', () => {
    expect(printable('web-1\u001b]0;owned\u0007')).toBe('web-1\\x1b]0;owned\\x07');
    expect(printable('a\nb\rc\u007f\u009b')).toBe('a\\x0ab\\x0dc\\x7f\\x9b');
    expect(printable('grüße, 日本, tab\tend')).toBe('grüße, 日本, tab\\x09end');
  });
});
