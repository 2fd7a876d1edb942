/**
 * MAC and IPv4 addresses between their text forms, bytes and numbers, as the netlink encoders
 * and the peer tables need them. Hand-written parsers: peers arrive by the ten thousand, and
 * regex/split based parsing cost more than the kernel's work per entry.
 */

import ipaddr from 'ipaddr.js';

const HEX = Array.from({ length: 256 }, (_v, i) => i.toString(16).padStart(2, '0'));

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/** `02:42:0a:14:00:05` (or with `-`) → 6 bytes. Throws on anything else. */
export function parseMac(s: string): Buffer {
  const b = Buffer.allocUnsafe(6);
  b.writeUIntBE(macToNumber(s), 0, 6);
  return b;
}

/**
 * `02:42:0a:14:00:05` (or with `-`) → the address as a 48-bit number (exact in a double), without
 * allocating: peer reconciles compare thousands of them. Throws on anything else.
 */
export function macToNumber(s: string): number {
  const bad = (): Error => new Error(`invalid MAC address: ${JSON.stringify(s)}`);
  if (typeof s !== 'string' || s.length !== 17) throw bad();
  const sep = s.charCodeAt(2);
  if (sep !== 58 && sep !== 45) throw bad();
  let n = 0;
  for (let i = 0; i < 6; i++) {
    const hi = hexDigit(s.charCodeAt(i * 3));
    const lo = hexDigit(s.charCodeAt(i * 3 + 1));
    if (hi < 0 || lo < 0 || (i < 5 && s.charCodeAt(i * 3 + 2) !== sep)) throw bad();
    n = n * 256 + ((hi << 4) | lo);
  }
  return n;
}

/** A 48-bit number (macToNumber) → its 6 bytes. */
export function macFromNumber(n: number): Buffer {
  const b = Buffer.allocUnsafe(6);
  b.writeUIntBE(n, 0, 6);
  return b;
}

/** A MAC usable as a device or container address: not multicast/broadcast, not all zeros. */
export function parseUnicastMac(s: string): Buffer {
  const b = parseMac(s);
  if (b[0]! & 1) throw new Error(`invalid MAC address: ${s} is a multicast address`);
  if (b.every((x) => x === 0)) throw new Error(`invalid MAC address: ${s} is all zeros`);
  return b;
}

/** Canonical text form: lowercase, colon-separated. */
export function formatMac(b: Uint8Array): string {
  return `${HEX[b[0]!]}:${HEX[b[1]!]}:${HEX[b[2]!]}:${HEX[b[3]!]}:${HEX[b[4]!]}:${HEX[b[5]!]}`;
}

/** Dotted quad (no leading zeros) → the address as an unsigned 32-bit number. Throws on anything else. */
export function ipv4ToNumber(s: string): number {
  const bad = (): Error => new Error(`invalid IPv4 address: ${JSON.stringify(s)}`);
  if (typeof s !== 'string' || s.length < 7 || s.length > 15) throw bad();
  let n = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || ++dots > 3) throw bad();
      n = n * 256 + part;
      part = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && part === 0) throw bad(); // leading zero
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) throw bad();
    } else {
      throw bad();
    }
  }
  if (dots !== 3 || digits === 0) throw bad();
  return n * 256 + part;
}

/** Dotted quad → 4 bytes (network order). Throws on anything else. */
export function parseIPv4(s: string): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(ipv4ToNumber(s), 0);
  return b;
}

export function formatIPv4(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** The inverse of ipv4ToNumber. */
export function formatIPv4Number(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

export function parseIPv4Cidr(s: string): { ip: Buffer; prefix: number } {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(typeof s === 'string' ? s : '');
  if (!m || Number(m[2]) > 32) throw new Error(`invalid IPv4 CIDR: ${JSON.stringify(s)}`);
  return { ip: parseIPv4(m[1]!), prefix: Number(m[2]) };
}

export function isMulticastIPv4(b: Uint8Array): boolean {
  return b[0]! >= 224 && b[0]! <= 239;
}

// IPv6 by hand as well, for the same reason (a dual-stack reconcile parses every peer's IPv6
// address): ipaddr.js handles only what this parser leaves to it (an embedded IPv4 tail).

/** An IPv6 address (any RFC 4291 text form, no zone) → 16 bytes. Throws on anything else, IPv4 included. */
export function parseIPv6(s: string): Buffer {
  const bad = (): Error => new Error(`invalid IPv6 address: ${JSON.stringify(s)}`);
  if (typeof s !== 'string' || s.length < 2 || s.length > 45) throw bad();
  if (s.includes('.')) {
    if (s.includes('%') || !ipaddr.IPv6.isValid(s)) throw bad();
    return Buffer.from(ipaddr.IPv6.parse(s).toByteArray());
  }
  const b = Buffer.alloc(16);
  const groups: number[] = [];
  let gap = -1;
  let i = 0;
  if (s.charCodeAt(0) === 58) {
    if (s.charCodeAt(1) !== 58) throw bad();
    gap = 0;
    i = 2;
  }
  while (i < s.length) {
    let v = 0;
    let digits = 0;
    while (i < s.length && s.charCodeAt(i) !== 58) {
      const d = hexDigit(s.charCodeAt(i));
      if (d < 0 || ++digits > 4) throw bad();
      v = v * 16 + d;
      i++;
    }
    if (digits === 0) throw bad();
    groups.push(v);
    if (i === s.length) break;
    i++; // ':'
    if (s.charCodeAt(i) === 58) {
      if (gap >= 0) throw bad();
      gap = groups.length;
      i++;
    } else if (i === s.length) throw bad(); // trailing single ':'
  }
  if (gap < 0 ? groups.length !== 8 : groups.length > 7) throw bad();
  const tail = gap < 0 ? 0 : groups.length - gap;
  for (let g = 0; g < groups.length; g++) {
    const at = gap >= 0 && g >= gap ? 8 - tail + (g - gap) : g;
    b.writeUInt16BE(groups[g]!, at * 2);
  }
  return b;
}

/** 16 bytes → the RFC 5952 text form (what `ip -6 neigh` prints): dumps and input compare as text. */
export function formatIPv6(b: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[i * 2]! << 8) | b[i * 2 + 1]!);
  // The longest run of two or more zero groups (the first of equals) becomes '::'.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number): string => g.slice(from, to).map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(0, 8) : `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

/** An IPv6 address in its canonical (RFC 5952) text form. Throws on anything else. */
export function canonicalIPv6(s: string): string {
  return formatIPv6(parseIPv6(s));
}

export function isIPv6Text(s: string): boolean {
  return typeof s === 'string' && s.includes(':');
}

/** An underlay or overlay address of either family → its 4 or 16 bytes. */
export function parseIP(s: string): Buffer {
  return isIPv6Text(s) ? parseIPv6(s) : parseIPv4(s);
}

/** 4 or 16 bytes → text (IPv4 dotted quad, IPv6 RFC 5952); undefined for any other length. */
export function formatIP(b: Uint8Array): string | undefined {
  return b.length === 4 ? formatIPv4(b) : b.length === 16 ? formatIPv6(b) : undefined;
}

export function parseIPv6Cidr(s: string): { ip: Buffer; prefix: number } {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(typeof s === 'string' ? s : '');
  if (!m || Number(m[2]) > 128) throw new Error(`invalid IPv6 CIDR: ${JSON.stringify(s)}`);
  return { ip: parseIPv6(m[1]!), prefix: Number(m[2]) };
}

export function isMulticastIPv6(b: Uint8Array): boolean {
  return b[0] === 0xff;
}
