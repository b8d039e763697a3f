import { describe, expect, it } from 'vitest';
import { defaultDataDir, parseServerConfig } from '../../src/server/config.js';
import { parseListen, relayBandwidth, relayListenConfig } from '../../src/cli/server.js';

describe('server config', () => {
  it('has working defaults and is frozen', () => {
    const c = parseServerConfig({ dataDir: '/tmp/x' });
    expect(c).toMatchObject({
      dataDir: '/tmp/x',
      listen: { host: '0.0.0.0', port: 8443 },
      sans: [],
      caKeyType: 'rsa4096',
      certLifetimeMs: 30 * 86_400_000,
      renewGraceMs: 7 * 86_400_000,
      heartbeatIntervalMs: 15_000,
      offlineAfterMs: 45_000,
      logLevel: 'info',
    });
    expect(Object.isFrozen(c) && Object.isFrozen(c.listen) && Object.isFrozen(c.sans)).toBe(true);
  });

  it('names the offending field; unknown fields are refused', () => {
    expect(() => parseServerConfig({ caKeyType: 'ec' })).toThrow(/invalid server config: caKeyType/);
    expect(() => parseServerConfig({ listen: { host: 'x', port: 70_000 } })).toThrow(/listen\.port/);
    expect(() => parseServerConfig({ certLifetime: 5 })).toThrow(expect.objectContaining({ code: 'ML_ERR_CONFIG' }));
    expect(() => parseServerConfig({ heartbeatIntervalMs: 50_000 })).toThrow(/offlineAfterMs/);
  });

  it('relay: on by default (absent), off as null, an explicit IP with an optional port range holding two ports per allocation', () => {
    const d = parseServerConfig({});
    expect(d).toMatchObject({ relayPublicHost: null, relayBytesPerSecond: 12_500_000, relayIdleMs: 120_000, relayMaxAllocations: 1000 });
    expect(d.relayListen).toBeUndefined();
    expect(parseServerConfig({ relayListen: null }).relayListen).toBeNull();
    expect(parseServerConfig({ relayListen: { host: '::', ports: { low: 40_000, high: 41_999 } } }).relayListen).toEqual({ host: '::', ports: { low: 40_000, high: 41_999 } });
    expect(() => parseServerConfig({ relayListen: { host: 'relay.example.com', ports: null } })).toThrow(/relayListen\.host/);
    expect(() => parseServerConfig({ relayListen: { host: '0.0.0.0', ports: { low: 40_000, high: 40_100 } } })).toThrow(/two ports per allocation/);
    expect(() => parseServerConfig({ relayIdleMs: 20_000 })).toThrow(/relayIdleMs/);
    expect(() => parseServerConfig({ relayPublicHost: 'no spaces please' })).toThrow(/relayPublicHost/);
  });

  it('default data dir: MESHLINK_DATA_DIR, else root path, else under HOME', () => {
    expect(defaultDataDir({ MESHLINK_DATA_DIR: '/srv/ml' })).toBe('/srv/ml');
    const isRoot = process.getuid?.() === 0;
    expect(defaultDataDir({ HOME: '/home/u' })).toBe(isRoot ? '/var/lib/meshlink/server' : '/home/u/.local/share/meshlink/server');
  });
});

describe('--listen parsing', () => {
  it.each([
    ['0.0.0.0:8443', { host: '0.0.0.0', port: 8443 }],
    ['127.0.0.1:0', { host: '127.0.0.1', port: 0 }],
    ['[::]:443', { host: '::', port: 443 }],
    ['[::1]:8443', { host: '::1', port: 8443 }],
    ['mesh.example.org:9000', { host: 'mesh.example.org', port: 9000 }],
  ])('%s', (text, expected) => expect(parseListen(text)).toEqual(expected));

  it.each(['8443', 'host', ':8443', '::1:8443', '[nothost]:1', 'h:99999', 'h:-1'])('rejects %j', (text) => {
    expect(() => parseListen(text)).toThrow(expect.objectContaining({ code: 'ML_ERR_USAGE' }));
  });
});

describe('--relay-listen and --relay-bandwidth parsing', () => {
  it.each([
    ['0.0.0.0', { host: '0.0.0.0', ports: null }],
    ['198.51.100.1:40000-41999', { host: '198.51.100.1', ports: { low: 40_000, high: 41_999 } }],
    ['::', { host: '::', ports: null }],
    ['[::]:40000-41999', { host: '::', ports: { low: 40_000, high: 41_999 } }],
  ])('%s', (text, want) => {
    expect(relayListenConfig(true, text)).toEqual({ relayListen: want });
  });

  it('absent is the default, --no-relay is off, both together or a malformed value are usage errors', () => {
    expect(relayListenConfig(true, undefined)).toEqual({});
    expect(relayListenConfig(false, undefined)).toEqual({ relayListen: null });
    expect(() => relayListenConfig(false, '0.0.0.0')).toThrow(/exclude each other/);
    for (const bad of ['0.0.0.0:3479', '0.0.0.0:5-4', '0.0.0.0:0-10', 'relay.example.com', '[::]:1-70000']) {
      expect(() => relayListenConfig(true, bad), bad).toThrow(expect.objectContaining({ code: 'ML_ERR_USAGE' }));
    }
  });

  it('rates in bits per second as bytes per second', () => {
    expect(relayBandwidth('100mbit')).toBe(12_500_000);
    expect(relayBandwidth('1Gbit')).toBe(125_000_000);
    expect(relayBandwidth('500kbit')).toBe(62_500);
    expect(() => relayBandwidth('100MB')).toThrow(expect.objectContaining({ code: 'ML_ERR_USAGE' }));
  });
});
