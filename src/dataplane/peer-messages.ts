/**
 * The netlink messages that program and remove peers: a PERMANENT neighbour entry and a vxlan
 * FDB entry each. Messages are pre-encoded and sent many to a datagram (see NlSocket.batch): the
 * per-request cost of an object API, not the kernel, is what limits peers per second.
 */
import type { Peer } from './types';
import {
  AF_BRIDGE,
  AF_INET,
  NDA_DST,
  NDA_LLADDR,
  NDMSG_LEN,
  NTF_MASTER,
  NTF_SELF,
  NUD_PERMANENT,
  RTM_DELNEIGH,
  RTM_NEWNEIGH,
  ipv4ToNumber,
  NLMSG_HDRLEN,
  parseMac,
} from './encode';
import { NLM_F_CREATE, NLM_F_REPLACE } from './nlsock';

export interface ParsedPeer {
  peer: Peer;
  ip: number;
  mac: Buffer;
  vtep: number;
  /** Canonical text forms, for comparisons with dumps (strict parsing makes the input canonical but for MAC case). */
  ipText: string;
  macText: string;
  vtepText: string;
}

/** Lowercase, colon-separated: the form dumps give. */
function canonicalMac(mac: string): string {
  const lower = mac.toLowerCase();
  return lower.charCodeAt(2) === 45 ? lower.replace(/-/g, ':') : lower;
}

export function parsePeer(p: Peer): ParsedPeer {
  const ip = ipv4ToNumber(p.ip);
  const mac = parseMac(p.mac);
  const vtep = ipv4ToNumber(p.vtep);
  return { peer: p, ip, mac, vtep, ipText: p.ip, macText: canonicalMac(p.mac), vtepText: p.vtep };
}

// Fixed layouts of the five neighbour messages (16-byte header, 12-byte ndmsg, attributes), written
// straight into one slab per batch: no per-message allocation, and the datagrams sent are views
// of the slab. encodeNeighMessage builds the same bytes generically (the unit tests compare them).
export const NEIGH_ADD_LEN = 48;
export const FDB_ADD_LEN = 48;
export const NEIGH_DEL_LEN = 36;
export const FDB_SELF_DEL_LEN = 48;
export const FDB_MASTER_DEL_LEN = 40;

export class Slab {
  private readonly buf: Buffer;
  private off = 0;
  readonly msgs: Buffer[] = [];

  constructor(capacity: number) {
    this.buf = Buffer.alloc(capacity);
  }

  private start(len: number, type: number, flags: number, family: number, ifindex: number, state: number, ndFlags: number): number {
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
    this.off += len;
    return o + NLMSG_HDRLEN + NDMSG_LEN;
  }

  private ipAttr(o: number, ip: number): void {
    this.buf.writeUInt16LE(8, o);
    this.buf.writeUInt16LE(NDA_DST, o + 2);
    this.buf.writeUInt32BE(ip, o + 4);
  }

  private macAttr(o: number, mac: Buffer): void {
    this.buf.writeUInt16LE(10, o);
    this.buf.writeUInt16LE(NDA_LLADDR, o + 2);
    mac.copy(this.buf, o + 4, 0, 6);
  }

  /** `ip neigh replace <ip> lladdr <mac> dev vxlan0 nud permanent` */
  neighAdd(ifindex: number, ip: number, mac: Buffer): void {
    const o = this.start(NEIGH_ADD_LEN, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, AF_INET, ifindex, NUD_PERMANENT, 0);
    this.ipAttr(o, ip);
    this.macAttr(o + 8, mac);
  }

  /** `bridge fdb replace <mac> dev vxlan0 dst <vtep> self permanent` */
  fdbAdd(ifindex: number, mac: Buffer, vtep: number): void {
    const o = this.start(FDB_ADD_LEN, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF);
    this.macAttr(o, mac);
    this.ipAttr(o + 12, vtep);
  }

  /** `ip neigh del <ip> dev vxlan0` */
  neighDel(ifindex: number, ip: number): void {
    this.ipAttr(this.start(NEIGH_DEL_LEN, RTM_DELNEIGH, 0, AF_INET, ifindex, 0, 0), ip);
  }

  /** `bridge fdb del <mac> dev vxlan0 dst <vtep> self` */
  fdbSelfDel(ifindex: number, mac: Buffer, vtep: number): void {
    const o = this.start(FDB_SELF_DEL_LEN, RTM_DELNEIGH, 0, AF_BRIDGE, ifindex, 0, NTF_SELF);
    this.macAttr(o, mac);
    this.ipAttr(o + 12, vtep);
  }

  /** `bridge fdb del <mac> dev vxlan0 master`: what the bridge learned behind the vxlan port. */
  fdbMasterDel(ifindex: number, mac: Buffer): void {
    this.macAttr(this.start(FDB_MASTER_DEL_LEN, RTM_DELNEIGH, 0, AF_BRIDGE, ifindex, 0, NTF_MASTER), mac);
  }
}

/** The two messages that program one peer (idempotent: NLM_F_REPLACE). */
export function encodePeerAdd(vxlanIndex: number, p: Peer): Buffer[] {
  const q = parsePeer(p);
  const s = new Slab(NEIGH_ADD_LEN + FDB_ADD_LEN);
  s.neighAdd(vxlanIndex, q.ip, q.mac);
  s.fdbAdd(vxlanIndex, q.mac, q.vtep);
  return s.msgs;
}

/** The three messages that remove one peer (neighbour, vxlan FDB entry for its VTEP, learned bridge entry). */
export function encodePeerRemove(vxlanIndex: number, p: Peer): Buffer[] {
  const q = parsePeer(p);
  const s = new Slab(NEIGH_DEL_LEN + FDB_SELF_DEL_LEN + FDB_MASTER_DEL_LEN);
  s.neighDel(vxlanIndex, q.ip);
  s.fdbSelfDel(vxlanIndex, q.mac, q.vtep);
  s.fdbMasterDel(vxlanIndex, q.mac);
  return s.msgs;
}

export const REMOVE_MAX = NEIGH_DEL_LEN + FDB_SELF_DEL_LEN + FDB_MASTER_DEL_LEN;
export const ADD_LEN = NEIGH_ADD_LEN + FDB_ADD_LEN;

export function ndmsgRequest(family: number): Buffer {
  const b = Buffer.alloc(NDMSG_LEN);
  b.writeUInt8(family, 0);
  return b;
}

