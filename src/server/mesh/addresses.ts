import { MeshlinkError } from '../../errors.js';

/**
 * Mesh addresses: one /32 per node out of an IPv4 range (default 10.100.0.0/16). The lowest free host
 * address is handed out; the network and broadcast addresses are never used. Addresses are kept as
 * unsigned 32-bit integers in the store (unique column), which makes "free" a simple set test.
 */

export const DEFAULT_MESH_CIDR = '10.100.0.0/16';

export interface MeshRange {
  readonly cidr: string;
  readonly network: number;
  readonly prefix: number;
  /** First and last assignable host address. */
  readonly first: number;
  readonly last: number;
}

export function ipToInt(ip: string): number {
  const parts = ip.split('.');
  if (parts.length !== 4) throw new MeshlinkError('ML_ERR_MESH_CIDR', `not an IPv4 address: ${ip}`);
  let n = 0;
  for (const p of parts) {
    if (!/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255) throw new MeshlinkError('ML_ERR_MESH_CIDR', `not an IPv4 address: ${ip}`);
    n = n * 256 + Number(p);
  }
  return n;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function parseMeshRange(cidr: string): MeshRange {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(cidr.trim());
  if (!m) throw new MeshlinkError('ML_ERR_MESH_CIDR', `invalid mesh range "${cidr}": expected A.B.C.D/N`);
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 30) throw new MeshlinkError('ML_ERR_MESH_CIDR', `invalid mesh range "${cidr}": the prefix must be between /8 and /30`);
  const base = ipToInt(m[1]!);
  const size = 2 ** (32 - prefix);
  const network = base - (base % size);
  if (network !== base) throw new MeshlinkError('ML_ERR_MESH_CIDR', `invalid mesh range "${cidr}": host bits are set (did you mean ${intToIp(network)}/${prefix}?)`);
  return Object.freeze({ cidr: `${intToIp(network)}/${prefix}`, network, prefix, first: network + 1, last: network + size - 2 });
}

export function inRange(range: MeshRange, addr: number): boolean {
  return addr >= range.first && addr <= range.last;
}

/** The lowest free host address of the range. */
export function allocateAddress(range: MeshRange, used: ReadonlySet<number>): number {
  // Bounded: at most the range size (≤ 2^24 for a /8), and in practice the number of nodes + 1.
  for (let a = range.first; a <= range.last; a++) if (!used.has(a)) return a;
  throw new MeshlinkError('ML_ERR_MESH_EXHAUSTED', `no free address left in ${range.cidr} (${used.size} in use)`);
}
