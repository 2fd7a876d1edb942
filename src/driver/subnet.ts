import ipaddr from 'ipaddr.js';

/**
 * Subnet arithmetic for both families on top of ipaddr.js: addresses as BigInt offsets, so that
 * the same code walks an IPv4 /24 and an IPv6 /64. IPv6 addresses are always written in their
 * RFC 5952 form: store keys are built from the text, and two spellings of one address must
 * never become two keys.
 */

export type Family = 4 | 6;

export interface Subnet {
  /** Normalised `a.b.c.d/len` or `fd00:20::/64` with host bits cleared. */
  cidr: string;
  family: Family;
  network: bigint;
  prefixLength: number;
  /** Number of addresses, including the network address (and IPv4's broadcast). */
  size: bigint;
}

/**
 * IPv6 container subnets: /48 to /120. Longer than /120 leaves too few addresses for a network
 * spanning hosts; shorter than /48 is a site's whole allocation, not one network. Link-local
 * (fe80::/10) belongs to each link and multicast (ff00::/8) is not unicast; IPv4-mapped,
 * loopback and unspecified ranges are no container network either.
 */
export const IPV6_MIN_PREFIX = 48;
export const IPV6_MAX_PREFIX = 120;
const IPV6_REFUSED_RANGES: Record<string, string> = {
  linkLocal: 'link-local (fe80::/10)',
  multicast: 'multicast (ff00::/8)',
  loopback: 'loopback',
  unspecified: 'unspecified',
  ipv4Mapped: 'IPv4-mapped (::ffff:0:0/96)',
};

export function isIPv4(text: string): boolean {
  return ipaddr.IPv4.isValidFourPartDecimal(text);
}

/** A plain IPv6 address (no zone: a container address has none). */
export function isIPv6(text: string): boolean {
  return !text.includes('%') && ipaddr.IPv6.isValid(text);
}

export function familyOf(text: string): Family | undefined {
  return isIPv4(text) ? 4 : isIPv6(text) ? 6 : undefined;
}

/** The one text form of an address of either family (RFC 5952 for IPv6). */
export function canonicalIp(text: string): string {
  if (isIPv4(text)) return ipaddr.IPv4.parse(text).toString();
  if (isIPv6(text)) return ipaddr.IPv6.parse(text).toRFC5952String();
  throw new Error(`invalid IP address "${text}"`);
}

export function ipToInt(ip: string): number {
  if (!isIPv4(ip)) throw new Error(`invalid IPv4 address "${ip}"`);
  const b = ipaddr.IPv4.parse(ip).octets;
  return ((b[0]! << 24) >>> 0) + (b[1]! << 16) + (b[2]! << 8) + b[3]!;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** An address of either family as an unsigned integer. */
export function ipToBig(ip: string): bigint {
  const family = familyOf(ip);
  if (family === undefined) throw new Error(`invalid IP address "${ip}"`);
  const bytes = (family === 4 ? ipaddr.IPv4.parse(ip) : ipaddr.IPv6.parse(ip)).toByteArray();
  return bytes.reduce((n, b) => (n << 8n) | BigInt(b), 0n);
}

export function bigToIp(n: bigint, family: Family): string {
  const bytes: number[] = [];
  for (let i = 0, v = n; i < (family === 4 ? 4 : 16); i++, v >>= 8n) bytes.unshift(Number(v & 255n));
  const addr = ipaddr.fromByteArray(bytes);
  return addr.kind() === 'ipv6' ? (addr as ipaddr.IPv6).toRFC5952String() : addr.toString();
}

function bits(family: Family): number {
  return family === 4 ? 32 : 128;
}

export function parseSubnet(cidr: string): Subnet {
  const [addr, len, ...rest] = cidr.split('/');
  const v6 = addr !== undefined && addr.includes(':');
  const family: Family = v6 ? 6 : 4;
  const shape = v6 ? 'IPv6 subnet' : 'IPv4 subnet';
  if (rest.length > 0 || addr === undefined || len === undefined || !/^\d{1,3}$/.test(len) || familyOf(addr) !== family) {
    throw new Error(`invalid ${shape} "${cidr}" (expected ${v6 ? 'fd00:20::/64' : 'a.b.c.d/len'})`);
  }
  const prefixLength = Number(len);
  const [min, max] = v6 ? [IPV6_MIN_PREFIX, IPV6_MAX_PREFIX] : [8, 30];
  if (prefixLength > max || prefixLength < min) {
    throw new Error(`invalid ${shape} "${cidr}": prefix length must be between /${min} and /${max}`);
  }
  const size = 1n << BigInt(bits(family) - prefixLength);
  const network = (ipToBig(addr) / size) * size;
  const text = bigToIp(network, family);
  if (v6) {
    const range = ipaddr.IPv6.parse(text).range();
    const why = IPV6_REFUSED_RANGES[range];
    if (why) throw new Error(`invalid IPv6 subnet "${cidr}": ${why} addresses cannot be a container network`);
  }
  return { cidr: `${text}/${prefixLength}`, family, network, prefixLength, size };
}

/** Parses `a.b.c.d/len` or `fd00::5/64` as an interface address (host bits kept, IPv6 in RFC 5952 form). */
export function parseAddressCidr(text: string): { ip: string; prefixLength: number } {
  const [addr, len, ...rest] = text.split('/');
  const family = addr === undefined ? undefined : familyOf(addr);
  if (rest.length > 0 || addr === undefined || family === undefined || (len !== undefined && !/^\d{1,3}$/.test(len))) {
    throw new Error(`invalid ${addr?.includes(':') ? 'IPv6' : 'IPv4'} address "${text}"`);
  }
  const prefixLength = len === undefined ? bits(family) : Number(len);
  if (prefixLength > bits(family)) throw new Error(`invalid IPv${family} address "${text}"`);
  return { ip: canonicalIp(addr), prefixLength };
}

export function contains(subnet: Subnet, ip: string): boolean {
  if (familyOf(ip) !== subnet.family) return false;
  const n = ipToBig(ip);
  return n >= subnet.network && n < subnet.network + subnet.size;
}

/** The usable host addresses: the network address excluded, and IPv4's broadcast (IPv6 has none). */
export function hostRange(subnet: Subnet): { first: bigint; last: bigint } {
  return { first: subnet.network + 1n, last: subnet.network + subnet.size - (subnet.family === 4 ? 2n : 1n) };
}

/** The address `offset` past the network address. */
export function addressAt(subnet: Subnet, offset: bigint): string {
  return bigToIp(subnet.network + offset, subnet.family);
}

/** The first usable address: the default gateway. */
export function firstHost(subnet: Subnet): string {
  return bigToIp(hostRange(subnet).first, subnet.family);
}

export function overlaps(a: Subnet, b: Subnet): boolean {
  return a.family === b.family && a.network < b.network + b.size && b.network < a.network + a.size;
}

/**
 * A store-key-safe name for a subnet: `10.20.0.0/24` → `10.20.0.0-24`, `fd00:20::/64` →
 * `fd00:20::-64`. Every store takes ':' in a key (etcd keys are bytes, Consul's client
 * URL-encodes the path, the embedded store keeps JSON); only '/' separates key levels.
 */
export function subnetKey(subnet: Subnet): string {
  return subnet.cidr.replace('/', '-');
}
