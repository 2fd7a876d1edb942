/**
 * The few NETLINK_XFRM messages encrypted networks need (SAs and policies: add, delete, dump),
 * encoded and decoded without sockets, framed like the rtnetlink code in encode.ts; xfrm.ts
 * sends them.
 *
 * What is programmed: ESP in transport mode with rfc4106(gcm(aes)) on the VXLAN UDP packets of
 * encrypted networks, which use their own VXLAN port, so xfrm selectors (proto UDP, destination
 * port) pick exactly their traffic. Layouts follow include/uapi/linux/xfrm.h on x86_64 (little-
 * endian host, 64-bit alignment of the lifetime structs); SPIs and ports are big-endian there.
 */
import { AF_INET, attr, formatIPv4, nlmsgAlign, parseAttrs, parseIPv4 } from './encode';

export const NETLINK_XFRM = 6;

// message types (XFRM_MSG_*)
export const XFRM_MSG_NEWSA = 0x10;
export const XFRM_MSG_DELSA = 0x11;
export const XFRM_MSG_GETSA = 0x12;
export const XFRM_MSG_NEWPOLICY = 0x13;
export const XFRM_MSG_DELPOLICY = 0x14;
export const XFRM_MSG_GETPOLICY = 0x15;
export const XFRM_MSG_UPDPOLICY = 0x19;
export const XFRM_MSG_UPDSA = 0x1a;

// attributes (XFRMA_*)
export const XFRMA_TMPL = 5;
export const XFRMA_SRCADDR = 13;
export const XFRMA_POLICY_TYPE = 16;
export const XFRMA_ALG_AEAD = 18;

export const IPPROTO_UDP = 17;
export const IPPROTO_ESP = 50;

export const XFRM_MODE_TRANSPORT = 0;
export const XFRM_POLICY_ALLOW = 0;
export const XFRM_POLICY_BLOCK = 1;
export const XFRM_INF = 0xffffffffffffffffn;

export type PolicyDir = 'in' | 'out' | 'fwd';
const DIR_CODE: Record<PolicyDir, number> = { in: 0, out: 1, fwd: 2 };
const DIR_NAME = ['in', 'out', 'fwd'] as const;

export const SELECTOR_LEN = 56;
export const XFRM_ID_LEN = 24;
export const USERSA_INFO_LEN = 224;
export const USERSA_ID_LEN = 24;
export const USERPOLICY_INFO_LEN = 168;
export const USERPOLICY_ID_LEN = 64;
export const USER_TMPL_LEN = 64;
const ALGO_NAME_LEN = 64;

/** The AEAD Docker's overlay and tsoverlay use: AES-GCM as in RFC 4106 (ESP), 16-byte ICV. */
export const AEAD_NAME = 'rfc4106(gcm(aes))';
export const AEAD_ICV_BITS = 128;
/** 128-bit AES key followed by the 32-bit salt. */
export const AEAD_KEY_BYTES = 20;

/**
 * ESP overhead over the VXLAN packet in transport mode with rfc4106(gcm(aes)): SPI and sequence
 * (8), IV (8), pad length and next header (2), ICV (16), plus padding of the encrypted part to 4
 * bytes. The overlay MTU for an underlay MTU: the largest inner packet whose whole ESP datagram
 * (IP 20 + ESP 16 + pad(UDP 8 + VXLAN 8 + Ethernet 14 + inner + 2) + ICV 16) fits the underlay.
 */
export function encryptedOverlayMtu(underlayMtu: number): number {
  return Math.floor((underlayMtu - 52) / 4) * 4 - 32;
}

/** Traffic selector: IPv4 prefixes, protocol and ports (0 = any). */
export interface XfrmSelector {
  src: string;
  srcPrefix: number;
  dst: string;
  dstPrefix: number;
  /** IP protocol (0 = any). */
  proto: number;
  /** Destination port (0 = any). */
  dport: number;
  /** Source port (0 = any). */
  sport?: number;
}

export interface XfrmSa {
  src: string;
  dst: string;
  spi: number;
  reqid: number;
  /** rfc4106(gcm(aes)) key: 16 key bytes + 4 salt bytes. */
  key: Buffer;
  selector?: XfrmSelector;
  /** Anti-replay window in packets (at most 32 without extended sequence numbers). */
  replayWindow?: number;
}

export interface XfrmTemplate {
  src: string;
  dst: string;
  /** 0: any SA that fits. */
  spi: number;
  reqid: number;
}

export interface XfrmPolicy {
  dir: PolicyDir;
  selector: XfrmSelector;
  /** Lower numbers win. */
  priority: number;
  action: 'allow' | 'block';
  /** ESP transport template(s); none for a block or bypass policy. */
  tmpls: XfrmTemplate[];
}

/** An SA as read back from a dump. */
export interface ParsedSa extends XfrmSa {
  proto: number;
  mode: number;
  family: number;
  aead?: { name: string; icvBits: number };
}

export interface ParsedPolicy extends XfrmPolicy {
  index: number;
}

// ---------------------------------------------------------------- encoding

function writeAddr(b: Buffer, off: number, ip: string): void {
  parseIPv4(ip).copy(b, off);
}

function readAddr(b: Buffer, off: number): string {
  return formatIPv4(b.subarray(off, off + 4));
}

function checkPrefix(p: number): void {
  if (!Number.isInteger(p) || p < 0 || p > 32) throw new Error(`invalid prefix length ${p}`);
}

function checkPort(p: number): void {
  if (!Number.isInteger(p) || p < 0 || p > 65535) throw new Error(`invalid port ${p}`);
}

function checkU32(n: number, what: string): void {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`invalid ${what} ${n}`);
}

/** struct xfrm_selector (56 bytes). */
export function encodeSelector(s: XfrmSelector): Buffer {
  checkPrefix(s.srcPrefix);
  checkPrefix(s.dstPrefix);
  checkPort(s.dport);
  checkPort(s.sport ?? 0);
  const b = Buffer.alloc(SELECTOR_LEN);
  writeAddr(b, 0, s.dst);
  writeAddr(b, 16, s.src);
  b.writeUInt16BE(s.dport, 32);
  b.writeUInt16BE(s.dport ? 0xffff : 0, 34);
  b.writeUInt16BE(s.sport ?? 0, 36);
  b.writeUInt16BE(s.sport ? 0xffff : 0, 38);
  b.writeUInt16LE(AF_INET, 40);
  b.writeUInt8(s.dstPrefix, 42);
  b.writeUInt8(s.srcPrefix, 43);
  b.writeUInt8(s.proto, 44);
  return b;
}

export function parseSelector(b: Buffer, off = 0): XfrmSelector {
  const sel: XfrmSelector = {
    dst: readAddr(b, off),
    src: readAddr(b, off + 16),
    dport: b.readUInt16BE(off + 32) & b.readUInt16BE(off + 34),
    dstPrefix: b.readUInt8(off + 42),
    srcPrefix: b.readUInt8(off + 43),
    proto: b.readUInt8(off + 44),
  };
  const sport = b.readUInt16BE(off + 36) & b.readUInt16BE(off + 38);
  if (sport) sel.sport = sport;
  return sel;
}

/** struct xfrm_lifetime_cfg with no limits (zero limits would expire the SA at once). */
function writeInfiniteLifetime(b: Buffer, off: number): void {
  for (let i = 0; i < 4; i++) b.writeBigUInt64LE(XFRM_INF, off + i * 8);
  // the four time limits (seconds) stay 0: no expiry
}

/** XFRM_MSG_NEWSA payload: struct xfrm_usersa_info, then XFRMA_ALG_AEAD. */
export function encodeNewSa(sa: XfrmSa): Buffer {
  checkU32(sa.spi, 'SPI');
  checkU32(sa.reqid, 'reqid');
  if (sa.spi === 0) throw new Error('SPI 0 is reserved');
  if (sa.key.length !== AEAD_KEY_BYTES) throw new Error(`${AEAD_NAME} needs a ${AEAD_KEY_BYTES}-byte key`);
  const window = sa.replayWindow ?? 32;
  if (!Number.isInteger(window) || window < 0 || window > 32) throw new Error(`invalid replay window ${window}`);
  const info = Buffer.alloc(USERSA_INFO_LEN);
  if (sa.selector) encodeSelector(sa.selector).copy(info, 0);
  else info.writeUInt16LE(AF_INET, 40);
  writeAddr(info, 56, sa.dst);
  info.writeUInt32BE(sa.spi, 72);
  info.writeUInt8(IPPROTO_ESP, 76);
  writeAddr(info, 80, sa.src);
  writeInfiniteLifetime(info, 96);
  info.writeUInt32LE(sa.reqid, 208);
  info.writeUInt16LE(AF_INET, 212);
  info.writeUInt8(XFRM_MODE_TRANSPORT, 214);
  info.writeUInt8(window, 215);
  return Buffer.concat([info, attr(XFRMA_ALG_AEAD, encodeAead(sa.key))]);
}

/** struct xfrm_algo_aead: name, key length in bits, ICV length in bits, key. */
function encodeAead(key: Buffer): Buffer {
  const b = Buffer.alloc(ALGO_NAME_LEN + 8 + key.length);
  b.write(AEAD_NAME, 0, 'latin1');
  b.writeUInt32LE(key.length * 8, ALGO_NAME_LEN);
  b.writeUInt32LE(AEAD_ICV_BITS, ALGO_NAME_LEN + 4);
  key.copy(b, ALGO_NAME_LEN + 8);
  return b;
}

/** XFRM_MSG_DELSA / GETSA payload: struct xfrm_usersa_id (+ XFRMA_SRCADDR to name the SA exactly). */
export function encodeSaId(id: { dst: string; spi: number; src?: string }): Buffer {
  checkU32(id.spi, 'SPI');
  const b = Buffer.alloc(USERSA_ID_LEN);
  writeAddr(b, 0, id.dst);
  b.writeUInt32BE(id.spi, 16);
  b.writeUInt16LE(AF_INET, 20);
  b.writeUInt8(IPPROTO_ESP, 22);
  if (id.src === undefined) return b;
  const src = Buffer.alloc(16);
  writeAddr(src, 0, id.src);
  return Buffer.concat([b, attr(XFRMA_SRCADDR, src)]);
}

/** struct xfrm_user_tmpl (64 bytes): ESP, transport mode, any algorithms. */
export function encodeTemplate(t: XfrmTemplate): Buffer {
  checkU32(t.spi, 'SPI');
  checkU32(t.reqid, 'reqid');
  const b = Buffer.alloc(USER_TMPL_LEN);
  writeAddr(b, 0, t.dst);
  b.writeUInt32BE(t.spi, 16);
  b.writeUInt8(IPPROTO_ESP, 20);
  b.writeUInt16LE(AF_INET, 24);
  writeAddr(b, 28, t.src);
  b.writeUInt32LE(t.reqid, 44);
  b.writeUInt8(XFRM_MODE_TRANSPORT, 48);
  b.writeUInt32LE(0xffffffff, 52);
  b.writeUInt32LE(0xffffffff, 56);
  b.writeUInt32LE(0xffffffff, 60);
  return b;
}

/** XFRM_MSG_NEWPOLICY / UPDPOLICY payload: struct xfrm_userpolicy_info, then XFRMA_TMPL. */
export function encodePolicy(p: XfrmPolicy): Buffer {
  checkU32(p.priority, 'priority');
  if (p.action === 'block' && p.tmpls.length > 0) throw new Error('a block policy has no templates');
  const info = Buffer.alloc(USERPOLICY_INFO_LEN);
  encodeSelector(p.selector).copy(info, 0);
  writeInfiniteLifetime(info, 56);
  info.writeUInt32LE(p.priority, 152);
  info.writeUInt8(DIR_CODE[p.dir], 160);
  info.writeUInt8(p.action === 'block' ? XFRM_POLICY_BLOCK : XFRM_POLICY_ALLOW, 161);
  if (p.tmpls.length === 0) return info;
  return Buffer.concat([info, attr(XFRMA_TMPL, Buffer.concat(p.tmpls.map(encodeTemplate)))]);
}

/** XFRM_MSG_DELPOLICY payload: struct xfrm_userpolicy_id (by selector and direction). */
export function encodePolicyId(p: { dir: PolicyDir; selector: XfrmSelector }): Buffer {
  const b = Buffer.alloc(USERPOLICY_ID_LEN);
  encodeSelector(p.selector).copy(b, 0);
  b.writeUInt8(DIR_CODE[p.dir], 60);
  return b;
}

// ---------------------------------------------------------------- decoding

function readCString(b: Buffer): string {
  const z = b.indexOf(0);
  return b.toString('latin1', 0, z < 0 ? b.length : z);
}

/** An XFRM_MSG_NEWSA message from a dump (payload after the netlink header). */
export function parseSa(data: Buffer): ParsedSa {
  if (data.length < USERSA_INFO_LEN) throw new Error(`xfrm SA message too short (${data.length} bytes)`);
  const sa: ParsedSa = {
    selector: parseSelector(data, 0),
    dst: readAddr(data, 56),
    spi: data.readUInt32BE(72),
    proto: data.readUInt8(76),
    src: readAddr(data, 80),
    reqid: data.readUInt32LE(208),
    family: data.readUInt16LE(212),
    mode: data.readUInt8(214),
    replayWindow: data.readUInt8(215),
    key: Buffer.alloc(0),
  };
  const a = parseAttrs(data.subarray(nlmsgAlign(USERSA_INFO_LEN)));
  const aead = a.get(XFRMA_ALG_AEAD);
  if (aead && aead.length >= ALGO_NAME_LEN + 8) {
    const bits = aead.readUInt32LE(ALGO_NAME_LEN);
    sa.aead = { name: readCString(aead.subarray(0, ALGO_NAME_LEN)), icvBits: aead.readUInt32LE(ALGO_NAME_LEN + 4) };
    sa.key = Buffer.from(aead.subarray(ALGO_NAME_LEN + 8, ALGO_NAME_LEN + 8 + Math.ceil(bits / 8)));
  }
  return sa;
}

export function parseTemplate(b: Buffer, off = 0): XfrmTemplate & { proto: number; mode: number } {
  return {
    dst: readAddr(b, off),
    spi: b.readUInt32BE(off + 16),
    proto: b.readUInt8(off + 20),
    src: readAddr(b, off + 28),
    reqid: b.readUInt32LE(off + 44),
    mode: b.readUInt8(off + 48),
  };
}

/** An XFRM_MSG_NEWPOLICY message from a dump. */
export function parsePolicy(data: Buffer): ParsedPolicy {
  if (data.length < USERPOLICY_INFO_LEN) throw new Error(`xfrm policy message too short (${data.length} bytes)`);
  const dir = data.readUInt8(160);
  const p: ParsedPolicy = {
    selector: parseSelector(data, 0),
    priority: data.readUInt32LE(152),
    index: data.readUInt32LE(156),
    dir: DIR_NAME[dir] ?? 'fwd',
    action: data.readUInt8(161) === XFRM_POLICY_BLOCK ? 'block' : 'allow',
    tmpls: [],
  };
  const a = parseAttrs(data.subarray(nlmsgAlign(USERPOLICY_INFO_LEN)));
  const t = a.get(XFRMA_TMPL);
  if (t) {
    for (let off = 0; off + USER_TMPL_LEN <= t.length; off += USER_TMPL_LEN) {
      const { src, dst, spi, reqid } = parseTemplate(t, off);
      p.tmpls.push({ src, dst, spi, reqid });
    }
  }
  return p;
}

export function describeSelector(s: XfrmSelector): string {
  const proto = s.proto === IPPROTO_UDP ? 'udp' : s.proto ? `proto ${s.proto}` : 'any';
  return `${s.src}/${s.srcPrefix} -> ${s.dst}/${s.dstPrefix} ${proto}${s.dport ? ` dport ${s.dport}` : ''}`;
}

export function describeSa(sa: { src: string; dst: string; spi: number }): string {
  return `${sa.src}->${sa.dst} spi 0x${sa.spi.toString(16).padStart(8, '0')}`;
}
