import ipaddr from 'ipaddr.js';

/** IPv4 subnet arithmetic on top of ipaddr.js: addresses as unsigned 32-bit integers. */

export interface Subnet {
  /** Normalised `a.b.c.d/len` with host bits cleared. */
  cidr: string;
  network: number;
  prefixLength: number;
  /** Number of addresses, including network and broadcast. */
  size: number;
}

export function isIPv4(text: string): boolean {
  return ipaddr.IPv4.isValidFourPartDecimal(text);
}

export function ipToInt(ip: string): number {
  if (!isIPv4(ip)) throw new Error(`invalid IPv4 address "${ip}"`);
  const b = ipaddr.IPv4.parse(ip).octets;
  return ((b[0]! << 24) >>> 0) + (b[1]! << 16) + (b[2]! << 8) + b[3]!;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function parseSubnet(cidr: string): Subnet {
  const [addr, len, ...rest] = cidr.split('/');
  if (rest.length > 0 || addr === undefined || len === undefined || !/^\d{1,2}$/.test(len) || !isIPv4(addr)) {
    throw new Error(`invalid IPv4 subnet "${cidr}" (expected a.b.c.d/len)`);
  }
  const prefixLength = Number(len);
  if (prefixLength > 30 || prefixLength < 8) {
    throw new Error(`invalid IPv4 subnet "${cidr}": prefix length must be between /8 and /30`);
  }
  const size = 2 ** (32 - prefixLength);
  const network = Math.floor(ipToInt(addr) / size) * size;
  return { cidr: `${intToIp(network)}/${prefixLength}`, network, prefixLength, size };
}

/** Parses `a.b.c.d/len` as an interface address (host bits kept). */
export function parseAddressCidr(text: string): { ip: string; prefixLength: number } {
  const [addr, len, ...rest] = text.split('/');
  if (rest.length > 0 || addr === undefined || !isIPv4(addr) || (len !== undefined && !/^\d{1,2}$/.test(len))) {
    throw new Error(`invalid IPv4 address "${text}"`);
  }
  const prefixLength = len === undefined ? 32 : Number(len);
  if (prefixLength > 32) throw new Error(`invalid IPv4 address "${text}"`);
  return { ip: addr, prefixLength };
}

export function contains(subnet: Subnet, ip: string): boolean {
  const n = ipToInt(ip);
  return n >= subnet.network && n < subnet.network + subnet.size;
}

/** The usable host addresses: network and broadcast excluded. */
export function hostRange(subnet: Subnet): { first: number; last: number } {
  return { first: subnet.network + 1, last: subnet.network + subnet.size - 2 };
}

export function overlaps(a: Subnet, b: Subnet): boolean {
  return a.network < b.network + b.size && b.network < a.network + a.size;
}

/** A store-key-safe name for a subnet: `10.20.0.0/24` → `10.20.0.0-24`. */
export function subnetKey(subnet: Subnet): string {
  return subnet.cidr.replace('/', '-');
}
