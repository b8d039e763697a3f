import { describe, expect, it } from 'vitest';
import { parseCidr, proxyPeerFilter } from '../../src/server/client-address.js';
import { parseServerConfig } from '../../src/server/config.js';
import { applyReloadable, RELOADABLE, type ReloadTargets } from '../../src/server/reload.js';

/** The `--proxy-protocol-from` list (src/server/client-address.ts) and its config schema. */
describe('proxyPeerFilter', () => {
  it('matches IPv4 and IPv6 networks and bare addresses, IPv4-mapped peers as IPv4', () => {
    const allowed = proxyPeerFilter(['10.0.0.5', '192.168.0.0/16', '2001:db8::/32', '::1']);
    expect(allowed('10.0.0.5')).toBe(true);
    expect(allowed('10.0.0.6')).toBe(false);
    expect(allowed('192.168.77.1')).toBe(true);
    expect(allowed('192.169.0.1')).toBe(false);
    expect(allowed('::ffff:10.0.0.5')).toBe(true);
    expect(allowed('::ffff:10.0.0.6')).toBe(false);
    expect(allowed('2001:db8:1::9')).toBe(true);
    expect(allowed('2001:db9::1')).toBe(false);
    expect(allowed('::1')).toBe(true);
    expect(allowed('127.0.0.1')).toBe(false);
    expect(allowed(undefined)).toBe(false);
    expect(allowed('not an address')).toBe(false);
  });

  it('an empty list allows every peer', () => {
    const any = proxyPeerFilter([]);
    expect(any('203.0.113.1')).toBe(true);
    expect(any('2001:db8::1')).toBe(true);
  });

  it('parseCidr refuses what is not an address or network', () => {
    expect(parseCidr('10.0.0.0/8')).toEqual({ address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    expect(parseCidr('2001:db8::/32')).toEqual({ address: '2001:db8::', prefix: 32, family: 'ipv6' });
    expect(parseCidr('10.0.0.1')).toEqual({ address: '10.0.0.1', prefix: 32, family: 'ipv4' });
    for (const bad of ['10.0.0.0/33', '::/129', '10.0.0.0/', '10.0.0.0/x', 'example.com', '10.0.0.256', '', '/8', '10.0.0.0/8/8']) expect(parseCidr(bad), bad).toBeNull();
  });
});

describe('config: proxyProtocol', () => {
  it('is off by default; on, it keeps its list; a bad entry is ML_ERR_CONFIG naming the field', () => {
    expect(parseServerConfig({}).proxyProtocol).toBeNull();
    expect(parseServerConfig({ proxyProtocol: { from: ['10.0.0.5', '10.1.0.0/16'] } }).proxyProtocol).toEqual({ from: ['10.0.0.5', '10.1.0.0/16'] });
    expect(parseServerConfig({ proxyProtocol: {} }).proxyProtocol).toEqual({ from: [] });
    expect(() => parseServerConfig({ proxyProtocol: { from: ['10.0.0.0/40'] } })).toThrow(/proxyProtocol\.from/);
    expect(() => parseServerConfig({ proxyProtocol: { from: [], extra: 1 } })).toThrow(/ML_ERR_CONFIG|invalid server config/);
  });
});

describe('reload: proxyProtocol', () => {
  it('is bound at start: a SIGHUP that changes it reports it as needing a restart and keeps the running value', () => {
    const base = parseServerConfig({ dataDir: '/tmp/x' }, {});
    const next = parseServerConfig({ dataDir: '/tmp/x', proxyProtocol: { from: ['10.0.0.5'] } }, {});
    const calls: string[] = [];
    const targets = Object.fromEntries([...RELOADABLE].map((k) => [k, () => calls.push(k)])) as unknown as ReloadTargets;
    const { config, changes } = applyReloadable(base, next, targets);
    expect(changes).toEqual([{ key: 'proxyProtocol', from: null, to: { from: ['10.0.0.5'] }, applied: false }]);
    expect(config.proxyProtocol).toBeNull();
    expect(calls).toEqual([]);
  });
});
