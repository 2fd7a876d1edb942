/**
 * The netlink messages that program and remove peers: a PERMANENT neighbour entry and a vxlan
 * FDB entry each. Messages are pre-encoded and sent many to a datagram (see NlSocket.batch): the
 * per-request cost of an object API, not the kernel, is what limits peers per second.
 */
import type { Peer } from './types';
import {
  AF_BRIDGE,
  AF_INET,
  AF_INET6,
  NDA_DST,
  NDA_LLADDR,
  NDMSG_LEN,
  NTF_MASTER,
  NTF_SELF,
  NUD_PERMANENT,
  RTM_DELNEIGH,
  RTM_NEWNEIGH,
  formatIPv6,
  ipv4ToNumber,
  NLMSG_HDRLEN,
  parseIP,
  parseIPv6,
  parseMac,
} from './encode';
import { NLM_F_CREATE, NLM_F_REPLACE } from './nlsock';

export interface ParsedPeer {
  peer: Peer;
  /** The IPv4 address as a number; -1 for an IPv6-only container. */
  ip: number;
  /** The IPv6 address's 16 bytes, when the container has one. */
  ip6: Buffer | undefined;
  mac: Buffer;
  /** The VTEP's 4 (IPv4 underlay) or 16 (IPv6 underlay) bytes. */
  vtep: Buffer;
  /** Canonical text forms, for comparisons with dumps (strict parsing makes the input canonical but for MAC case and IPv6 spelling). */
  ipText: string;
  ip6Text: string | undefined;
  macText: string;
  vtepText: string;
  /** The VTEP as setPeers compares it: a number (IPv4) or the canonical text (IPv6). */
  vtepKey: number | string;
}

/** Lowercase, colon-separated: the form dumps give. */
function canonicalMac(mac: string): string {
  const lower = mac.toLowerCase();
  return lower.charCodeAt(2) === 45 ? lower.replace(/-/g, ':') : lower;
}

/** A VTEP as setPeers keys it: IPv4 as a number (no string per entry on the hot path), IPv6 as canonical text. */
export function vtepKey(vtep: string): number | string {
  return parseVtep(vtep).key;
}

/** A few hosts' VTEPs behind thousands of peers: each parsed once (IPv6 ones cost a parse and a format). */
const vteps = new Map<string, { bytes: Buffer; text: string; key: number | string }>();

function parseVtep(s: string): { bytes: Buffer; text: string; key: number | string } {
  let v = vteps.get(s);
  if (!v) {
    const bytes = parseIP(s);
    const text = bytes.length === 16 ? formatIPv6(bytes) : s;
    v = { bytes, text, key: bytes.length === 16 ? text : bytes.readUInt32BE(0) };
    if (vteps.size >= 4096) vteps.clear();
    vteps.set(s, v);
  }
  return v;
}

export function parsePeer(p: Peer): ParsedPeer {
  const hasV4 = p.ip !== '' || p.ip6 === undefined;
  const ip = hasV4 ? ipv4ToNumber(p.ip) : -1;
  const ip6 = p.ip6 !== undefined ? parseIPv6(p.ip6) : undefined;
  const mac = parseMac(p.mac);
  const vtep = parseVtep(p.vtep);
  return {
    peer: p,
    ip,
    ip6,
    mac,
    vtep: vtep.bytes,
    ipText: p.ip,
    ip6Text: ip6 && formatIPv6(ip6),
    macText: canonicalMac(p.mac),
    vtepText: vtep.text,
    vtepKey: vtep.key,
  };
}

// Fixed layouts of the neighbour messages (16-byte header, 12-byte ndmsg, attributes), written
// straight into slabs: no per-message allocation, and the datagrams sent are views of the slab.
// encodeNeighMessage builds the same bytes generically (the unit tests compare them). An IPv6
// address (a neighbour's or a VTEP's) makes its NDA_DST 12 bytes longer.
export const NEIGH_ADD_LEN = 48;
export const FDB_ADD_LEN = 48;
export const NEIGH_DEL_LEN = 36;
export const FDB_SELF_DEL_LEN = 48;
export const FDB_MASTER_DEL_LEN = 40;
const V6_EXTRA = 12;

/**
 * Messages written into one buffer, each with the peer it is about (`owners[i]` for `msgs[i]`: what
 * an error reply is reported against). The capacity is a hint: a full buffer is followed by another.
 */
export class Slab {
  private buf: Buffer;
  private off = 0;
  readonly msgs: Buffer[] = [];
  readonly owners: ParsedPeer[] = [];

  constructor(private readonly capacity: number) {
    this.buf = Buffer.alloc(Math.max(capacity, 64));
  }

  private start(owner: ParsedPeer, len: number, type: number, flags: number, family: number, ifindex: number, state: number, ndFlags: number): number {
    if (this.off + len > this.buf.length) {
      this.buf = Buffer.alloc(Math.max(this.capacity, 64 * len));
      this.off = 0;
    }
    const b = this.buf;
    const o = this.off;
    b.writeUInt32LE(len, o);
    b.writeUInt16LE(type, o + 4);
    b.writeUInt16LE(flags, o + 6);
    b[o + 16] = family;
    b.writeInt32LE(ifindex, o + 20);
    b.writeUInt16LE(state, o + 24);
    b[o + 26] = ndFlags;
    this.msgs.push(b.subarray(o, o + len));
    this.owners.push(owner);
    this.off += len;
    return o + NLMSG_HDRLEN + NDMSG_LEN;
  }

  private ipAttr(o: number, ip: number): void {
    this.buf.writeUInt16LE(8, o);
    this.buf.writeUInt16LE(NDA_DST, o + 2);
    this.buf.writeUInt32BE(ip, o + 4);
  }

  private addrAttr(o: number, addr: Buffer): void {
    this.buf.writeUInt16LE(4 + addr.length, o);
    this.buf.writeUInt16LE(NDA_DST, o + 2);
    addr.copy(this.buf, o + 4);
  }

  private macAttr(o: number, mac: Buffer): void {
    this.buf.writeUInt16LE(10, o);
    this.buf.writeUInt16LE(NDA_LLADDR, o + 2);
    mac.copy(this.buf, o + 4, 0, 6);
  }

  /** `ip neigh replace <ip> lladdr <mac> dev vxlan0 nud permanent` */
  neighAdd(owner: ParsedPeer, ifindex: number, ip: number, mac: Buffer): void {
    const o = this.start(owner, NEIGH_ADD_LEN, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, AF_INET, ifindex, NUD_PERMANENT, 0);
    this.ipAttr(o, ip);
    this.macAttr(o + 8, mac);
  }

  /** `ip -6 neigh replace <ip6> lladdr <mac> dev vxlan0 nud permanent` */
  neigh6Add(owner: ParsedPeer, ifindex: number, ip6: Buffer, mac: Buffer): void {
    const o = this.start(owner, NEIGH_ADD_LEN + V6_EXTRA, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, AF_INET6, ifindex, NUD_PERMANENT, 0);
    this.addrAttr(o, ip6);
    this.macAttr(o + 20, mac);
  }

  /** `bridge fdb replace <mac> dev vxlan0 dst <vtep> self permanent` (an IPv4 or IPv6 VTEP). */
  fdbAdd(owner: ParsedPeer, ifindex: number, mac: Buffer, vtep: Buffer): void {
    const len = vtep.length === 16 ? FDB_ADD_LEN + V6_EXTRA : FDB_ADD_LEN;
    const o = this.start(owner, len, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF);
    this.macAttr(o, mac);
    this.addrAttr(o + 12, vtep);
  }

  /** `ip neigh del <ip> dev vxlan0` */
  neighDel(owner: ParsedPeer, ifindex: number, ip: number): void {
    this.ipAttr(this.start(owner, NEIGH_DEL_LEN, RTM_DELNEIGH, 0, AF_INET, ifindex, 0, 0), ip);
  }

  /** `ip -6 neigh del <ip6> dev vxlan0` */
  neigh6Del(owner: ParsedPeer, ifindex: number, ip6: Buffer): void {
    this.addrAttr(this.start(owner, NEIGH_DEL_LEN + V6_EXTRA, RTM_DELNEIGH, 0, AF_INET6, ifindex, 0, 0), ip6);
  }

  /** `bridge fdb del <mac> dev vxlan0 dst <vtep> self` */
  fdbSelfDel(owner: ParsedPeer, ifindex: number, mac: Buffer, vtep: Buffer): void {
    const len = vtep.length === 16 ? FDB_SELF_DEL_LEN + V6_EXTRA : FDB_SELF_DEL_LEN;
    const o = this.start(owner, len, RTM_DELNEIGH, 0, AF_BRIDGE, ifindex, 0, NTF_SELF);
    this.macAttr(o, mac);
    this.addrAttr(o + 12, vtep);
  }

  /** `bridge fdb del <mac> dev vxlan0 master`: what the bridge learned behind the vxlan port. */
  fdbMasterDel(owner: ParsedPeer, ifindex: number, mac: Buffer): void {
    this.macAttr(this.start(owner, FDB_MASTER_DEL_LEN, RTM_DELNEIGH, 0, AF_BRIDGE, ifindex, 0, NTF_MASTER), mac);
  }

  /** A peer's neighbours (IPv4 and/or IPv6) and its FDB entry (replace: idempotent). */
  peerAdd(p: ParsedPeer, ifindex: number): void {
    if (p.ip >= 0) this.neighAdd(p, ifindex, p.ip, p.mac);
    if (p.ip6) this.neigh6Add(p, ifindex, p.ip6, p.mac);
    this.fdbAdd(p, ifindex, p.mac, p.vtep);
  }
}

/** Bytes the messages that program `n` peers take at most (an IPv6 neighbour and VTEP each). */
export function addCapacity(n: number): number {
  return n * (2 * NEIGH_ADD_LEN + FDB_ADD_LEN + 3 * V6_EXTRA);
}

/** The messages that program one peer (idempotent: NLM_F_REPLACE): its neighbours, then its FDB entry. */
export function encodePeerAdd(vxlanIndex: number, p: Peer): Buffer[] {
  const q = parsePeer(p);
  const s = new Slab(addCapacity(1));
  if (q.ip >= 0) s.neighAdd(q, vxlanIndex, q.ip, q.mac);
  if (q.ip6) s.neigh6Add(q, vxlanIndex, q.ip6, q.mac);
  s.fdbAdd(q, vxlanIndex, q.mac, q.vtep);
  return s.msgs;
}

/** The messages that remove one peer (neighbours, vxlan FDB entry for its VTEP, learned bridge entry). */
export function encodePeerRemove(vxlanIndex: number, p: Peer): Buffer[] {
  const q = parsePeer(p);
  const s = new Slab(REMOVE_MAX);
  if (q.ip >= 0) s.neighDel(q, vxlanIndex, q.ip);
  if (q.ip6) s.neigh6Del(q, vxlanIndex, q.ip6);
  s.fdbSelfDel(q, vxlanIndex, q.mac, q.vtep);
  s.fdbMasterDel(q, vxlanIndex, q.mac);
  return s.msgs;
}

/** Bytes the messages that remove one peer take at most. */
export const REMOVE_MAX = 2 * NEIGH_DEL_LEN + FDB_SELF_DEL_LEN + FDB_MASTER_DEL_LEN + 3 * V6_EXTRA;

export function ndmsgRequest(family: number): Buffer {
  const b = Buffer.alloc(NDMSG_LEN);
  b.writeUInt8(family, 0);
  return b;
}

