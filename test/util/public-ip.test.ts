import { describe, expect, it } from 'vitest';
import { isHostAddress } from '../../src/util/public-ip.js';

describe('isHostAddress', () => {
  it('accepts unicast addresses another host could send from, private and CGNAT ones included', () => {
    for (const ip of ['203.0.113.9', '10.1.2.3', '192.168.0.1', '100.64.0.1', '172.16.5.4', '2001:db8::9', 'fd00::1', '::ffff:198.51.100.7']) expect(isHostAddress(ip), ip).toBe(true);
  });
  it('refuses loopback, unspecified, link-local, multicast, reserved and what is no address', () => {
    for (const ip of ['127.0.0.1', '127.255.0.9', '0.0.0.0', '0.1.2.3', '169.254.1.1', '224.0.0.1', '239.1.1.1', '240.0.0.1', '255.255.255.255', '::', '::1', 'fe80::1', 'ff02::1', '::ffff:127.0.0.1', 'example.com', '', '1.2.3']) expect(isHostAddress(ip), ip).toBe(false);
  });
});
