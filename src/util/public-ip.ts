import { BlockList, isIP } from 'node:net';

/**
 * Addresses that never name a host across the internet (IANA special-purpose registries): an address
 * a node *reports* as its public one (a STUN reflexive endpoint) is refused when it falls in one of
 * these. Private ranges (10/8, 192.168/16, fc00::/7, CGNAT 100.64/10) stay allowed: a relay or a
 * STUN server inside a private network sees private addresses, and that is a real deployment.
 */
const SPECIAL = new BlockList();
for (const [address, prefix] of [
  ['0.0.0.0', 8], // "this network", including the unspecified address
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, and the broadcast address
] as const) SPECIAL.addSubnet(address, prefix, 'ipv4');
for (const [address, prefix] of [
  ['::', 128], // unspecified
  ['::1', 128], // loopback
  ['fe80::', 10], // link-local
  ['ff00::', 8], // multicast
] as const) SPECIAL.addSubnet(address, prefix, 'ipv6');

/**
 * Whether `ip` (plain form; an IPv4-mapped IPv6 address is judged as its IPv4 address) is a unicast
 * address another host could send from: not loopback, unspecified, link-local, multicast or reserved.
 */
export function isHostAddress(ip: string): boolean {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  const plain = mapped ? mapped[1]! : ip;
  const version = isIP(plain);
  if (version === 0) return false;
  return !SPECIAL.check(plain, version === 4 ? 'ipv4' : 'ipv6');
}
