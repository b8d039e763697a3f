import { describe, expect, it } from 'vitest';
import { isAllowed, parseTunnelAllowlist, parseTunnelTarget } from '../../src/agent/tunnel/allowlist.js';
import { parseTunnelFlags } from '../../src/cli/agent/tunnel-flags.js';
import { parseTunnelSpec } from '../../src/cli/server-tunnel.js';

describe('the tunnel allowlist', () => {
  it('parses host:port and [IPv6]:port, comma-separated or repeated', () => {
    expect(parseTunnelAllowlist(['127.0.0.1:8080,127.0.0.1:22', '[::1]:22', 'DB.internal:5432'])).toEqual([
      { host: '127.0.0.1', port: 8080 },
      { host: '127.0.0.1', port: 22 },
      { host: '::1', port: 22 },
      { host: 'db.internal', port: 5432 },
    ]);
    expect(parseTunnelAllowlist([])).toEqual([]);
    expect(parseTunnelFlags({}).allow).toEqual([]);
    expect(parseTunnelFlags({ allowTunnel: ['127.0.0.1:80'] }).allow).toEqual([{ host: '127.0.0.1', port: 80 }]);
  });

  it.each(['127.0.0.1', '127.0.0.1:0', '127.0.0.1:70000', ':80', '[127.0.0.1]:80', '::1:22', 'a b:1', '127.0.0.1:*'])('refuses %s (ML_ERR_CONFIG)', (spec) => {
    expect(() => parseTunnelTarget(spec)).toThrow(expect.objectContaining({ code: 'ML_ERR_CONFIG' }));
  });

  it('matches exact host:port pairs, the host as written (case and IPv6 brackets aside)', () => {
    const list = parseTunnelAllowlist(['127.0.0.1:8080', 'localhost:22', '[::1]:22']);
    expect(isAllowed(list, '127.0.0.1', 8080)).toBe(true);
    expect(isAllowed(list, '127.0.0.1', 8081)).toBe(false);
    expect(isAllowed(list, 'LOCALHOST', 22)).toBe(true);
    expect(isAllowed(list, '127.0.0.1', 22)).toBe(false);
    expect(isAllowed(list, '[::1]', 22)).toBe(true);
    expect(isAllowed(list, '::1', 22)).toBe(true);
    expect(isAllowed([], '127.0.0.1', 8080)).toBe(false);
  });
});

describe('server tunnel NODE:PORT', () => {
  it('takes a node and a port', () => {
    expect(parseTunnelSpec('web-1:8080')).toEqual({ node: 'web-1', port: 8080 });
    for (const bad of ['web-1', 'web-1:0', 'web-1:65536', ':80', 'a:b:80']) expect(() => parseTunnelSpec(bad)).toThrow(expect.objectContaining({ code: 'ML_ERR_USAGE' }));
  });
});
