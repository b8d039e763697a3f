import { join, resolve } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { defaultStateDir, hostnameSchema, parseEnrollOptions, resolveStateDir, sanSchema, ROOT_STATE_DIR } from '../../src/agent/config.js';

const PIN = `sha256:${'0f'.repeat(32)}`;
const base = { server: 'https://mesh.example:8443', token: 'tok_abcdefghijklmnop', caPins: [PIN], stateDir: '/tmp/x', hostname: 'Host-1.Example.' };

describe('state dir defaults', () => {
  it('MESHLINK_STATE_DIR wins, then root, then $HOME/.local/state', () => {
    expect(defaultStateDir({ MESHLINK_STATE_DIR: 'rel/dir' }, 1000, '/home/u')).toBe(resolve('rel/dir'));
    expect(defaultStateDir({ MESHLINK_STATE_DIR: '/srv/agent' }, 0, '/root')).toBe('/srv/agent');
    expect(defaultStateDir({}, 0, '/root')).toBe(ROOT_STATE_DIR);
    expect(defaultStateDir({ MESHLINK_STATE_DIR: '' }, 1000, '/home/u')).toBe(join('/home/u', '.local', 'state', 'meshlink', 'agent'));
  });

  it('--state-dir overrides and is made absolute; empty is refused', () => {
    expect(resolveStateDir('/a/b', {})).toBe('/a/b');
    expect(resolveStateDir('a/b', {})).toBe(resolve('a/b'));
    expect(() => resolveStateDir('', {})).toThrowError(expect.objectContaining({ code: 'ML_ERR_CONFIG' }) as Error);
  });
});

describe('parseEnrollOptions', () => {
  it('normalises and freezes', () => {
    const options = parseEnrollOptions({ ...base, server: 'https://mesh.example:8443/', sans: ['10.0.0.1', 'Alt.Example', 'fd00::1'] });
    expect(options).toMatchObject({ server: 'https://mesh.example:8443', hostname: 'host-1.example', sans: ['10.0.0.1', 'alt.example', 'fd00::1'], force: false, keyType: 'rsa2048', timeoutMs: 30_000 });
    expect(Object.isFrozen(options)).toBe(true);
    expect(Object.isFrozen(options.caPins)).toBe(true);
  });

  it.each([
    ['plain http', { server: 'http://mesh.example' }, /server: must use https/],
    ['a path', { server: 'https://mesh.example/api' }, /server: must be https:\/\/HOST\[:PORT\]/],
    ['credentials', { server: 'https://u:p@mesh.example' }, /server:/],
    ['not a URL', { server: 'mesh.example:8443' }, /server:/],
    ['no pins', { caPins: [] }, /caPins: at least one/],
    ['a bad pin', { caPins: ['sha256:abc'] }, /caPins\.0:/],
    ['underscore host name', { hostname: 'bad_host' }, /hostname:/],
    ['empty label', { hostname: 'a..b' }, /hostname:/],
    ['leading hyphen', { hostname: '-a.example' }, /hostname:/],
    ['bad SAN', { sans: ['not a name'] }, /sans\.0:/],
    ['short token', { token: 'abc' }, /token: is too short/],
    ['token with newline', { token: 'abcdefghij\n' }, /token:/],
  ])('rejects %s with ML_ERR_CONFIG naming the field', (_name, patch, message) => {
    expect(() => parseEnrollOptions({ ...base, ...patch })).toThrowError(
      expect.objectContaining({ code: 'ML_ERR_CONFIG', message: expect.stringMatching(message) as string }) as Error,
    );
  });

  it('never echoes the token in a validation error', () => {
    const token = 'secret token value';
    expect(() => parseEnrollOptions({ ...base, token })).toThrowError(expect.objectContaining({ message: expect.not.stringContaining(token) as string }) as Error);
  });
});

describe('name schemas (property)', () => {
  it('every generated domain name is a valid host name and SAN; IPs are valid SANs', () => {
    fc.assert(
      fc.property(fc.domain(), (domain) => {
        expect(hostnameSchema.safeParse(domain).success).toBe(true);
        expect(sanSchema.safeParse(domain).success).toBe(true);
      }),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), (ip) => {
        expect(sanSchema.parse(ip)).toBe(ip);
      }),
      { numRuns: 300 },
    );
  });

  it('names with characters outside [a-z0-9.-] are refused', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 30 }).filter((s) => /[^a-zA-Z0-9.-]/.test(s)), (s) => {
        expect(hostnameSchema.safeParse(s).success).toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});
