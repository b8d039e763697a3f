import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bypasses, ipBytes, parseNoProxy, parseProxyUrl, proxyAuthorization, proxyFor, resolveProxyConfig } from '../../src/agent/proxy.js';

/** The pure decision of proxy.ts: which proxy, if any, for which server URL. */

const SERVER = 'https://mesh.example.com:8443';

describe('resolveProxyConfig', () => {
  it('is direct with nothing set', () => {
    expect(resolveProxyConfig(undefined, {}).proxy).toBeNull();
    expect(proxyFor(SERVER, resolveProxyConfig(undefined, {}))).toBeNull();
  });

  it('takes --proxy over the environment', () => {
    const c = resolveProxyConfig('http://flag.proxy:3128', { HTTPS_PROXY: 'http://env.proxy:8080' });
    expect(c.proxy).toMatchObject({ host: 'flag.proxy', port: 3128, source: '--proxy', display: 'flag.proxy:3128' });
  });

  it('reads HTTPS_PROXY, https_proxy, ALL_PROXY, all_proxy in that order; empty values do not count', () => {
    const all = { HTTPS_PROXY: 'http://a:1', https_proxy: 'http://b:2', ALL_PROXY: 'http://c:3', all_proxy: 'http://d:4' };
    expect(resolveProxyConfig(undefined, all).proxy?.host).toBe('a');
    expect(resolveProxyConfig(undefined, { ...all, HTTPS_PROXY: '' }).proxy?.host).toBe('b');
    expect(resolveProxyConfig(undefined, { ALL_PROXY: 'http://c:3', all_proxy: 'http://d:4' }).proxy).toMatchObject({ host: 'c', source: 'ALL_PROXY' });
    expect(resolveProxyConfig(undefined, { all_proxy: 'http://d:4' }).proxy).toMatchObject({ host: 'd', source: 'all_proxy' });
  });

  it('never reads HTTP_PROXY: the server URL is https', () => {
    expect(resolveProxyConfig(undefined, { HTTP_PROXY: 'http://a:1', http_proxy: 'http://a:1' }).proxy).toBeNull();
  });

  it('reads NO_PROXY before no_proxy, and applies it to the flag as well', () => {
    const c = resolveProxyConfig('http://p:1', { NO_PROXY: 'mesh.example.com', no_proxy: 'other' });
    expect(proxyFor(SERVER, c)).toBeNull();
    expect(proxyFor('https://other:443', c)).not.toBeNull();
    expect(proxyFor(SERVER, resolveProxyConfig('http://p:1', { no_proxy: 'example.com' }))).toBeNull();
  });
});

describe('parseProxyUrl', () => {
  it('accepts http:// with credentials, decodes them, and displays host:port only', () => {
    const p = parseProxyUrl('http://us%40er:p%3Ass@proxy.corp:3128');
    expect(p).toMatchObject({ host: 'proxy.corp', port: 3128, display: 'proxy.corp:3128', auth: { username: 'us@er', password: 'p:ss' } });
    expect(proxyAuthorization(p)).toBe(`Basic ${Buffer.from('us@er:p:ss').toString('base64')}`);
    expect(JSON.stringify({ display: p.display, source: p.source })).not.toContain('p:ss');
  });

  it('takes a bare host:port as http://, and port 80 when none is given', () => {
    expect(parseProxyUrl('proxy:8080')).toMatchObject({ host: 'proxy', port: 8080 });
    expect(parseProxyUrl('http://proxy')).toMatchObject({ port: 80, auth: null });
    expect(parseProxyUrl('http://[::1]:3128')).toMatchObject({ host: '::1', display: '[::1]:3128' });
  });

  it('refuses other schemes and paths, naming the source but never the value', () => {
    expect(() => parseProxyUrl('socks5://u:secret@h:1080', 'ALL_PROXY')).toThrow(/ALL_PROXY: only http:\/\/ proxies/);
    expect(() => parseProxyUrl('https://h:443')).toThrow(expect.objectContaining({ code: 'ML_ERR_CONFIG' }));
    expect(() => parseProxyUrl('http://u:secret@h:1/path')).toThrow(expect.objectContaining({ code: 'ML_ERR_CONFIG' }));
    for (const raw of ['socks5://u:secret@h:1080', 'http://u:secret@h:1/path', 'http://u:secret@h:99999']) {
      try {
        parseProxyUrl(raw);
      } catch (err) {
        expect((err as Error).message).not.toContain('secret');
      }
    }
  });
});

describe('NO_PROXY', () => {
  const match = (noProxy: string, url: string): boolean => proxyFor(url, resolveProxyConfig('http://p:1', { NO_PROXY: noProxy })) === null;

  it('`*` bypasses everything', () => {
    expect(match('*', SERVER)).toBe(true);
    expect(match('a.b, *', 'https://10.1.1.1')).toBe(true);
  });

  it('a host name matches itself and its subdomains, case-insensitively, trailing dots ignored', () => {
    expect(match('example.com', 'https://example.com')).toBe(true);
    expect(match('EXAMPLE.com.', 'https://mesh.Example.COM:8443')).toBe(true);
    expect(match('example.com', 'https://notexample.com')).toBe(false);
    expect(match('mesh.example.com', 'https://example.com')).toBe(false);
  });

  it('a leading dot (or *.) matches subdomains only', () => {
    expect(match('.example.com', 'https://mesh.example.com')).toBe(true);
    expect(match('.example.com', 'https://example.com')).toBe(false);
    expect(match('*.example.com', 'https://a.b.example.com')).toBe(true);
    expect(match('*.example.com', 'https://example.com')).toBe(false);
  });

  it('host:port matches that port only (443 for https without one)', () => {
    expect(match('mesh.example.com:8443', SERVER)).toBe(true);
    expect(match('mesh.example.com:443', SERVER)).toBe(false);
    expect(match('mesh.example.com:443', 'https://mesh.example.com')).toBe(true);
    expect(match('.example.com:8443', SERVER)).toBe(true);
  });

  it('IP literals, with and without port, v4 and v6', () => {
    expect(match('127.0.0.1', 'https://127.0.0.1:8443')).toBe(true);
    expect(match('127.0.0.1:9', 'https://127.0.0.1:8443')).toBe(false);
    expect(match('::1', 'https://[::1]:8443')).toBe(true);
    expect(match('[::1]:8443', 'https://[::1]:8443')).toBe(true);
    expect(match('[::1]:1', 'https://[::1]:8443')).toBe(false);
    expect(match('0:0:0:0:0:0:0:1', 'https://[::1]')).toBe(true);
    // An IP rule is not a name rule: it never matches a host name, and a name never matches an IP.
    expect(match('127.0.0.1', 'https://localhost')).toBe(false);
    expect(match('localhost', 'https://127.0.0.1')).toBe(false);
  });

  it('CIDRs, v4 and v6, match IP literals only (no DNS lookups)', () => {
    expect(match('10.0.0.0/8', 'https://10.200.3.4:8443')).toBe(true);
    expect(match('10.0.0.0/8', 'https://11.0.0.1')).toBe(false);
    expect(match('192.168.1.128/25', 'https://192.168.1.200')).toBe(true);
    expect(match('192.168.1.128/25', 'https://192.168.1.100')).toBe(false);
    expect(match('fd00::/8', 'https://[fd12:3456::1]')).toBe(true);
    expect(match('fd00::/8', 'https://[fe80::1]')).toBe(false);
    expect(match('0.0.0.0/0', 'https://8.8.8.8')).toBe(true);
    expect(match('0.0.0.0/0', 'https://[::1]')).toBe(false);
    expect(match('10.0.0.0/8', 'https://ten.example')).toBe(false);
  });

  it('separators are commas and white space; malformed entries are ignored', () => {
    expect(parseNoProxy(' a.com ,b.com  c.com,,')).toHaveLength(3);
    expect(parseNoProxy('10.0.0.0/33, 1.2.3.4/x, host:99999, bad_host!, [::1')).toEqual([]);
  });

  it('property: an IP in a CIDR is bypassed exactly when its first `prefix` bits agree', () => {
    fc.assert(
      fc.property(fc.ipV4(), fc.ipV4(), fc.integer({ min: 0, max: 32 }), (ip, net, prefix) => {
        const a = ip.split('.').map(Number);
        const b = net.split('.').map(Number);
        const toInt = (x: number[]): number => ((x[0]! << 24) >>> 0) + (x[1]! << 16) + (x[2]! << 8) + x[3]!;
        const mask = prefix === 0 ? 0 : (~0 << (32 - prefix)) >>> 0;
        const expected = ((toInt(a) & mask) >>> 0) === ((toInt(b) & mask) >>> 0);
        expect(bypasses(ip, 443, parseNoProxy(`${net}/${prefix}`))).toBe(expected);
      }),
      { numRuns: 500 },
    );
  });

  it('property: every IPv6 literal parses to the 16 bytes of its canonical form', () => {
    fc.assert(
      fc.property(fc.ipV6(), (ip) => {
        const canonical = new URL(`https://[${ip}]`).hostname.slice(1, -1);
        expect(ipBytes(ip)).toEqual(ipBytes(canonical));
        expect(bypasses(canonical, 443, parseNoProxy(ip))).toBe(true);
        expect(bypasses(canonical, 443, parseNoProxy(`${ip}/128`))).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('property: a name is bypassed by each of its parent domains', () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?$/);
    fc.assert(
      // A top label with a letter: all-digit names like 0.0.0.0 are IP literals, never name rules.
      fc.property(fc.array(label, { minLength: 1, maxLength: 4 }), fc.stringMatching(/^[a-z]{2,6}$/), (lower, top) => {
        const labels = [...lower, top];
        const host = labels.join('.');
        for (let i = 1; i < labels.length; i++) {
          const parent = labels.slice(i).join('.');
          expect(bypasses(host, 443, parseNoProxy(parent))).toBe(true);
          expect(bypasses(host, 443, parseNoProxy(`.${parent}`))).toBe(true);
        }
        expect(bypasses(host, 443, parseNoProxy(host))).toBe(true);
        expect(bypasses(host, 443, parseNoProxy(`.${host}`))).toBe(false);
        expect(bypasses(host, 443, parseNoProxy(`x${host}`))).toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});
