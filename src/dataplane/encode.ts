/**
 * Pure encoders/decoders for the few netlink structures the dataplane builds or reads by hand:
 * attributes, the veth peer, neighbour messages and link replies (the text forms of addresses
 * are in addresses.ts). No I/O here, so all of it is unit-tested without a kernel. Host byte
 * order is little-endian (checked in nlsock).
 */

import { formatIPv4, formatIPv6, formatMac } from './addresses';

export const NLMSG_HDRLEN = 16;
export const IFINFOMSG_LEN = 16;
export const NDMSG_LEN = 12;

// rtnetlink message types
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_SETLINK = 19;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;
export const RTM_GETNEIGH = 30;

export const AF_INET = 2;
export const AF_BRIDGE = 7;
export const AF_INET6 = 10;

// link attributes (IFLA_*)
export const IFLA_ADDRESS = 1;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_MASTER = 10;
export const IFLA_LINKINFO = 18;
export const IFLA_NET_NS_FD = 28;
export const IFLA_LINK_NETNSID = 37;
export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const VETH_INFO_PEER = 1;

// neighbour attributes and flags
export const NDA_DST = 1;
export const NDA_LLADDR = 2;
export const NDA_MASTER = 9;
export const NUD_NOARP = 0x40;
export const NUD_PERMANENT = 0x80;
export const NTF_SELF = 0x02;
export const NTF_MASTER = 0x04;

export const IFF_UP = 0x1;

export const nlmsgAlign = (n: number): number => (n + 3) & ~3;
export const rtaAlign = nlmsgAlign;

// ---------------------------------------------------------------- addresses

// Re-exported: the encoders' users take addresses and messages from one module.

export {
  canonicalIPv6,
  formatIP,
  formatIPv6,
  isIPv6Text,
  isMulticastIPv6,
  parseIP,
  parseIPv6,
  parseIPv6Cidr,
  formatIPv4,
  formatIPv4Number,
  formatMac,
  ipv4ToNumber,
  isMulticastIPv4,
  macFromNumber,
  macToNumber,
  parseIPv4,
  parseIPv4Cidr,
  parseMac,
  parseUnicastMac,
} from './addresses';

// ---------------------------------------------------------------- attributes

/** One netlink attribute: 4-byte header, payload, padding to 4 bytes. */
export function attr(type: number, payload: Uint8Array): Buffer {
  const len = 4 + payload.length;
  const b = Buffer.alloc(rtaAlign(len));
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  b.set(payload, 4);
  return b;
}

export const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
};

export const cstring = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');

/** Attributes of a buffer by type (the last one wins; nested/byte-order bits masked off). */
export function parseAttrs(b: Buffer): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let off = 0;
  while (off + 4 <= b.length) {
    const len = b.readUInt16LE(off);
    if (len < 4 || off + len > b.length) break;
    out.set(b.readUInt16LE(off + 2) & 0x3fff, b.subarray(off + 4, off + len));
    off += rtaAlign(len);
  }
  return out;
}

const readCString = (b: Buffer): string => {
  const z = b.indexOf(0);
  return b.toString('utf8', 0, z < 0 ? b.length : z);
};

// ---------------------------------------------------------------- ifinfomsg / veth

export interface IfInfo {
  family?: number;
  type?: number;
  index?: number;
  flags?: number;
  change?: number;
}

/** struct ifinfomsg: family u8, pad u8, type u16, index s32, flags u32, change u32. */
export function encodeIfInfo(x: IfInfo = {}): Buffer {
  const b = Buffer.alloc(IFINFOMSG_LEN);
  b.writeUInt8(x.family ?? 0, 0);
  b.writeUInt16LE(x.type ?? 0, 2);
  b.writeInt32LE(x.index ?? 0, 4);
  b.writeUInt32LE(x.flags ?? 0, 8);
  b.writeUInt32LE(x.change ?? 0, 12);
  return b;
}

export interface VethPeer {
  ifname: string;
  mtu?: number;
  /** Namespace descriptor the peer is created in (IFLA_NET_NS_FD). */
  netNsFd?: number;
  address?: Buffer;
}

/**
 * IFLA_LINKINFO payload for a veth pair: kind "veth" and IFLA_INFO_DATA holding VETH_INFO_PEER,
 * whose payload is a whole struct ifinfomsg followed by the peer's own IFLA_* attributes
 * (node-netlink has no codec for it).
 */
export function encodeVethLinkInfo(peer: VethPeer): Buffer {
  const peerAttrs: Buffer[] = [encodeIfInfo(), attr(IFLA_IFNAME, cstring(peer.ifname))];
  if (peer.mtu !== undefined) peerAttrs.push(attr(IFLA_MTU, u32(peer.mtu)));
  if (peer.address !== undefined) peerAttrs.push(attr(IFLA_ADDRESS, peer.address));
  if (peer.netNsFd !== undefined) peerAttrs.push(attr(IFLA_NET_NS_FD, u32(peer.netNsFd)));
  const data = attr(VETH_INFO_PEER, Buffer.concat(peerAttrs));
  return Buffer.concat([attr(IFLA_INFO_KIND, cstring('veth')), attr(IFLA_INFO_DATA, data)]);
}

// ---------------------------------------------------------------- link replies

export interface VxlanInfo {
  id?: number;
  group?: string;
  link?: number;
  local?: string;
  learning?: number;
  proxy?: number;
  l2miss?: number;
  l3miss?: number;
  port?: number;
}

export interface LinkInfo {
  index: number;
  name: string;
  flags: number;
  mtu?: number;
  mac?: string;
  master?: number;
  /** IFLA_LINK: the peer's index for a veth, the underlay's for a vxlan. */
  link?: number;
  /** Present when the device's link/socket namespace differs from the one it is in. */
  linkNetnsid?: number;
  kind?: string;
  vxlan?: VxlanInfo;
}

function parseVxlanData(b: Buffer): VxlanInfo {
  const a = parseAttrs(b);
  const u8 = (t: number): number | undefined => (a.get(t)?.length ? a.get(t)!.readUInt8(0) : undefined);
  const v: VxlanInfo = {};
  if (a.get(1)?.length === 4) v.id = a.get(1)!.readUInt32LE(0);
  if (a.get(2)?.length === 4) v.group = formatIPv4(a.get(2)!);
  if (a.get(3)?.length === 4) v.link = a.get(3)!.readUInt32LE(0);
  if (a.get(4)?.length === 4) v.local = formatIPv4(a.get(4)!);
  v.learning = u8(7);
  v.proxy = u8(11);
  v.l2miss = u8(13);
  v.l3miss = u8(14);
  if (a.get(15)?.length === 2) v.port = a.get(15)!.readUInt16BE(0);
  // IFLA_VXLAN_GROUP6/LOCAL6: an IPv6 underlay (the kernel reports all-zeros as absent).
  const g6 = a.get(16);
  if (g6?.length === 16 && g6.some((x) => x !== 0)) v.group = formatIPv6(g6);
  const l6 = a.get(17);
  if (l6?.length === 16 && l6.some((x) => x !== 0)) v.local = formatIPv6(l6);
  return v;
}

/** Decodes an RTM_NEWLINK payload (ifinfomsg + attributes) into the fields the dataplane uses. */
export function parseLinkMessage(data: Buffer): LinkInfo {
  const index = data.readInt32LE(4);
  const flags = data.readUInt32LE(8);
  const a = parseAttrs(data.subarray(IFINFOMSG_LEN));
  const l: LinkInfo = { index, flags, name: a.has(IFLA_IFNAME) ? readCString(a.get(IFLA_IFNAME)!) : '' };
  if (a.get(IFLA_MTU)?.length === 4) l.mtu = a.get(IFLA_MTU)!.readUInt32LE(0);
  if (a.get(IFLA_ADDRESS)?.length === 6) l.mac = formatMac(a.get(IFLA_ADDRESS)!);
  if (a.get(IFLA_MASTER)?.length === 4) l.master = a.get(IFLA_MASTER)!.readUInt32LE(0);
  if (a.get(IFLA_LINK)?.length === 4) l.link = a.get(IFLA_LINK)!.readUInt32LE(0);
  if (a.get(IFLA_LINK_NETNSID)?.length === 4) l.linkNetnsid = a.get(IFLA_LINK_NETNSID)!.readInt32LE(0);
  const li = a.get(IFLA_LINKINFO);
  if (li) {
    const info = parseAttrs(li);
    if (info.has(IFLA_INFO_KIND)) l.kind = readCString(info.get(IFLA_INFO_KIND)!);
    if (l.kind === 'vxlan' && info.has(IFLA_INFO_DATA)) l.vxlan = parseVxlanData(info.get(IFLA_INFO_DATA)!);
  }
  return l;
}

// ---------------------------------------------------------------- neighbours

export interface NdMsg {
  family: number;
  ifindex: number;
  state: number;
  flags: number;
}

/**
 * A complete netlink neighbour message (header with seq 0, ndmsg, attributes), built in one
 * allocation: peers are programmed by the thousand.
 */
export function encodeNeighMessage(
  type: number,
  nlFlags: number,
  nd: NdMsg,
  attrs: ReadonlyArray<readonly [number, Uint8Array]>,
): Buffer {
  let len = NLMSG_HDRLEN + NDMSG_LEN;
  for (const [, p] of attrs) len += rtaAlign(4 + p.length);
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt16LE(nlFlags, 6);
  b.writeUInt8(nd.family, 16);
  b.writeInt32LE(nd.ifindex, 20);
  b.writeUInt16LE(nd.state, 24);
  b.writeUInt8(nd.flags, 26);
  let off = NLMSG_HDRLEN + NDMSG_LEN;
  for (const [t, p] of attrs) {
    b.writeUInt16LE(4 + p.length, off);
    b.writeUInt16LE(t, off + 2);
    b.set(p, off + 4);
    off += rtaAlign(4 + p.length);
  }
  return b;
}

export interface NeighEntry extends NdMsg {
  dst?: Buffer;
  lladdr?: Buffer;
  master?: number;
}

/**
 * The fields of one RTM_NEWNEIGH payload as numbers, read in place into one reused object: the
 * periodic reconcile reads every network's whole tables, and per-entry objects, buffer views and
 * strings (parseNeighMessage) were most of what it allocated.
 */
export class NeighFields {
  family = 0;
  ifindex = 0;
  state = 0;
  flags = 0;
  /** NDA_DST as an IPv4 number; -1 when absent or not 4 bytes. */
  dst4 = -1;
  /** NDA_DST when it is 16 bytes (IPv6): a view into the message, undefined otherwise. */
  dst6: Buffer | undefined = undefined;
  /** NDA_LLADDR as a 48-bit number; -1 when absent or not 6 bytes. */
  mac = -1;
  /** NDA_MASTER present (an entry of the bridge the device is a port of). */
  master = false;

  read(data: Buffer): this {
    this.family = data[0]!;
    this.ifindex = data.readInt32LE(4);
    this.state = data.readUInt16LE(8);
    this.flags = data[10]!;
    this.dst4 = -1;
    this.dst6 = undefined;
    this.mac = -1;
    this.master = false;
    let off = NDMSG_LEN;
    while (off + 4 <= data.length) {
      const len = data.readUInt16LE(off);
      if (len < 4 || off + len > data.length) break;
      const type = data.readUInt16LE(off + 2) & 0x3fff;
      if (type === NDA_DST && len === 8) this.dst4 = data.readUInt32BE(off + 4);
      else if (type === NDA_DST && len === 20) this.dst6 = data.subarray(off + 4, off + 20);
      else if (type === NDA_LLADDR && len === 10) this.mac = data.readUIntBE(off + 4, 6);
      else if (type === NDA_MASTER && len === 8) this.master = true;
      off += rtaAlign(len);
    }
    return this;
  }
}

/** Decodes an RTM_NEWNEIGH payload (ndmsg + attributes); a plain loop, as dumps bring thousands. */
export function parseNeighMessage(data: Buffer): NeighEntry {
  const e: NeighEntry = {
    family: data[0]!,
    ifindex: data.readInt32LE(4),
    state: data.readUInt16LE(8),
    flags: data[10]!,
  };
  let off = NDMSG_LEN;
  while (off + 4 <= data.length) {
    const len = data.readUInt16LE(off);
    if (len < 4 || off + len > data.length) break;
    const type = data.readUInt16LE(off + 2) & 0x3fff;
    if (type === NDA_DST) e.dst = data.subarray(off + 4, off + len);
    else if (type === NDA_LLADDR) e.lladdr = data.subarray(off + 4, off + len);
    else if (type === NDA_MASTER && len === 8) e.master = data.readUInt32LE(off + 4);
    off += rtaAlign(len);
  }
  return e;
}
