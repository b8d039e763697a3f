import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERRORS, EXIT_CODES, MeshlinkError, isProtocolError, type ErrorCode, type ErrorSpec } from '../src/errors.js';

/** The one error table (src/errors.ts) against docs/ERRORS.md, docs/PROTOCOL.md and the source. */
const table = ERRORS as Record<string, ErrorSpec>;
const errorsDoc = readFileSync('docs/ERRORS.md', 'utf8');
const protocolDoc = readFileSync('docs/PROTOCOL.md', 'utf8');

const dash = (v: number | undefined) => (v === undefined ? '—' : String(v));

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

describe('docs/ERRORS.md', () => {
  const rows = new Map([...errorsDoc.matchAll(/^\| `(ML_ERR_[A-Z0-9_]+)` \| (.+?) \| (.+?) \| (.+?) \| (.+) \|$/gm)].map((m) => [m[1]!, m.slice(2, 6)]));

  it.each(Object.entries(table))('documents %s with its HTTP status, close code, exit code and description', (code, spec) => {
    expect(rows.get(code), `${code} missing from docs/ERRORS.md`).toEqual([dash(spec.status), dash(spec.closeCode), String(EXIT_CODES[spec.exit]), spec.description]);
  });

  it('documents no code that is not in the table, and none twice', () => {
    const documented = [...errorsDoc.matchAll(/^\| `(ML_ERR_[A-Z0-9_]+)` \|/gm)].map((m) => m[1]!);
    expect(documented.filter((c) => !(c in table))).toEqual([]);
    expect(documented.length).toBe(new Set(documented).size);
  });

  it('lists every exit class with its number, and nothing else', () => {
    const section = errorsDoc.slice(errorsDoc.indexOf('## Exit codes'));
    const listed = [...section.matchAll(/^\| (\d+) \| `(\w+)` \|/gm)].map((m) => [m[2], Number(m[1])]);
    expect(Object.fromEntries(listed)).toEqual(EXIT_CODES);
    expect(listed.length).toBe(Object.keys(EXIT_CODES).length);
  });
});

describe('docs/PROTOCOL.md close codes', () => {
  const section = protocolDoc.slice(protocolDoc.indexOf('## 9. Errors'), protocolDoc.indexOf('## 10.'));
  const rows = [...section.matchAll(/^\| `(ML_ERR_[A-Z_]+)` \| (\d+|-) \|/gm)].map((m) => [m[1]!, m[2] === '-' ? null : Number(m[2])] as const);

  it('gives every protocol code the close code of the table', () => {
    expect(rows.length).toBeGreaterThan(20);
    expect(rows.map(([code]) => [code, code in table ? (table[code]!.closeCode ?? null) : 'not in the table'])).toEqual(rows);
  });

  it('lists every code that has a close code', () => {
    const withClose = Object.entries(table).filter(([, spec]) => spec.closeCode !== undefined).map(([code]) => code);
    expect(withClose.filter((code) => !rows.some(([c]) => c === code))).toEqual([]);
  });
});

describe('the source', () => {
  it('uses no ML_ERR_ code that is not in the table', () => {
    const used = new Set(sourceFiles('src').flatMap((file) => [...readFileSync(file, 'utf8').matchAll(/ML_ERR_[A-Z0-9_]+/g)].map((m) => m[0])));
    expect(used.size).toBeGreaterThan(60);
    expect([...used].filter((code) => !(code in table)).sort()).toEqual([]);
  });
});

describe('MeshlinkError', () => {
  it('takes status, close code and exit class from the table', () => {
    const e = new MeshlinkError('ML_ERR_OPS_NODE_OFFLINE', 'n1 is offline');
    expect(e).toMatchObject({ code: 'ML_ERR_OPS_NODE_OFFLINE', status: 409, closeCode: null, exit: 'nodeOffline', message: 'n1 is offline' });
    expect(new MeshlinkError('ML_ERR_CERT_REVOKED', 'x')).toMatchObject({ status: 403, closeCode: 4401, exit: 'revoked' });
    expect(new MeshlinkError('ML_ERR_USAGE', 'x')).toMatchObject({ status: 500, closeCode: null, exit: 'usage' });
  });

  it('never throws on a code outside the table', () => {
    for (const code of ['ML_ERR_NOT_A_CODE', 'constructor', '__proto__', 'toString', '', 42, null, undefined]) {
      expect(() => new MeshlinkError(code as ErrorCode, 'x')).not.toThrow();
      expect(new MeshlinkError(code as ErrorCode, 'x')).toMatchObject({ status: 500, closeCode: null, exit: 'internal' });
    }
  });

  it('fromWire keeps well-formed unknown codes, replaces malformed ones and non-string messages', () => {
    expect(MeshlinkError.fromWire('ML_ERR_FROM_A_NEWER_SERVER', 'hi')).toMatchObject({ code: 'ML_ERR_FROM_A_NEWER_SERVER', message: 'hi', status: 500, exit: 'internal' });
    expect(MeshlinkError.fromWire('ML_ERR_MESH_TAG', 'bad tag')).toMatchObject({ code: 'ML_ERR_MESH_TAG', status: 400, exit: 'usage' });
    for (const code of [undefined, null, 7, {}, 'ml_err_lower', 'ML_ERR_', 'ML_ERR_X; rm -rf', 'constructor', `ML_ERR_${'A'.repeat(100)}`]) {
      expect(MeshlinkError.fromWire(code, 'm').code).toBe('ML_ERR_INTERNAL');
    }
    expect(MeshlinkError.fromWire('ML_ERR_REMOTE', { evil: true }, { fallback: 'HTTP 502' }).message).toBe('HTTP 502');
    expect(MeshlinkError.fromWire('ML_ERR_REMOTE', 'x'.repeat(5000)).message.length).toBe(1000);
  });

  it('isProtocolError is true for errors that end a session with their own close code only', () => {
    expect(isProtocolError(new MeshlinkError('ML_ERR_FLOW_CONTROL', 'x'))).toBe(true);
    expect(isProtocolError(new MeshlinkError('ML_ERR_STREAM_RESET', 'x'))).toBe(false);
    expect(isProtocolError(new Error('plain'))).toBe(false);
    expect(isProtocolError({ code: 'ML_ERR_FLOW_CONTROL', closeCode: 4020 })).toBe(false);
  });
});
