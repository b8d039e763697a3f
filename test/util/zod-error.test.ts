import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { zodErrorText } from '../../src/util/zod-error.js';

/** The ZodError of a value the schema refuses. */
function errorOf(schema: z.ZodType, value: unknown): z.ZodError {
  const parsed = schema.safeParse(value);
  if (parsed.success) throw new Error('expected the value to be refused');
  return parsed.error;
}

describe('zodErrorText', () => {
  it('names a nested field by its dotted path, array indices included', () => {
    const schema = z.object({ rules: z.array(z.object({ to: z.string().regex(/^[a-z]+$/, 'a tag is lower-case letters') })) });
    expect(zodErrorText(errorOf(schema, { rules: [{ to: 'db' }, { to: 'bad tag' }] }))).toBe('rules.1.to: a tag is lower-case letters');
  });

  it('gives the first issue only, unless every issue is asked for', () => {
    const schema = z.object({ a: z.string(), b: z.number().max(3, 'at most 3') });
    const error = errorOf(schema, { a: 1, b: 9 });
    expect(error.issues).toHaveLength(2);
    expect(zodErrorText(error)).toBe('a: Invalid input: expected string, received number');
    expect(zodErrorText(error, { all: true })).toBe('a: Invalid input: expected string, received number; b: at most 3');
  });

  it('calls an issue without a path by the root name, (root) unless the caller names it', () => {
    const schema = z.object({ a: z.string() }).strict();
    const error = errorOf(schema, { a: 'x', extra: 1 });
    expect(zodErrorText(error)).toBe('(root): Unrecognized key: "extra"');
    expect(zodErrorText(error, { root: 'body' })).toBe('body: Unrecognized key: "extra"');
  });

  it('says why each alternative of a union failed, paths relative to the union', () => {
    const schema = z.object({ v: z.union([z.string(), z.object({ n: z.number() })]) });
    expect(zodErrorText(errorOf(schema, { v: { n: 'x' } }))).toBe('v: Invalid input (Invalid input: expected string, received object | n: Invalid input: expected number, received string)');
  });

  it('names the discriminator of a discriminated union that no option matches', () => {
    const schema = z.discriminatedUnion('op', [z.object({ op: z.literal('exec') }), z.object({ op: z.literal('put') })]);
    expect(zodErrorText(errorOf(schema, { op: 'rm' }))).toBe(`op: Invalid discriminator value. Expected 'exec' | 'put'`);
  });

  it('names a symbol key instead of throwing, and never echoes the input', () => {
    const key = Symbol('k');
    const secret = 'secret token value';
    const schema = z.object({ token: z.string().regex(/^\S+$/, 'no spaces') });
    expect(zodErrorText(errorOf(schema, { token: secret }))).not.toContain(secret);
    const error = new z.ZodError([{ code: 'custom', path: ['a', key, 0], message: 'bad' }]);
    expect(zodErrorText(error)).toBe('a.Symbol(k).0: bad');
  });

  it('keeps to one line whatever the message says', () => {
    const error = new z.ZodError([{ code: 'custom', path: ['x'], message: 'first\nsecond' }]);
    expect(zodErrorText(error)).toBe('x: first second');
  });
});
