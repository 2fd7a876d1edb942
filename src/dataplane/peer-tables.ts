/**
 * Reading vxlan0's neighbour and FDB tables back from the kernel (dumps and single lookups) and
 * decoding the miss notifications the kernel sends in `miss` mode.
 */
import type { Peer } from './types';
import {
  AF_BRIDGE,
  AF_INET,
  AF_INET6,
  NDA_DST,
  NDMSG_LEN,
  NTF_MASTER,
  NTF_SELF,
  NUD_NOARP,
  NUD_PERMANENT,
  RTM_GETNEIGH,
  RTM_NEWNEIGH,
  NeighFields,
  type NeighEntry,
  formatIP,
  formatIPv4,
  formatIPv6,
  formatMac,
  parseNeighMessage,
} from './encode';
import { isNetlinkError, type NlSocket } from './nlsock';
import { isPeerFdb } from './overlay-check';
import { ndmsgRequest } from './peer-messages';

export interface NeighbourEntry {
  ip: string;
  mac?: string;
  permanent: boolean;
  state: number;
}

export interface FdbEntry {
  mac: string;
  /** `dst` of a vxlan (self) entry. */
  vtep?: string;
  /** Entry of the vxlan device itself (`self`). */
  self: boolean;
  /** Entry of the bridge the device is a port of (`master`, e.g. dynamically learned). */
  master: boolean;
  permanent: boolean;
  /** Neither permanent nor static: learned from traffic (ages out). */
  dynamic: boolean;
}

/** The neighbour-table entries of one family on device `ifindex`, each made a T by `pick` (undefined: left out). */
async function dumpEntries<T>(sock: NlSocket, family: number, ifindex: number, what: string, pick: (e: NeighEntry) => T | undefined): Promise<T[]> {
  const out: T[] = [];
  for (const m of await sock.dump(RTM_GETNEIGH, ndmsgRequest(family), what)) {
    if (m.type !== RTM_NEWNEIGH) continue;
    const e = parseNeighMessage(m.data);
    if (e.family !== family || e.ifindex !== ifindex) continue;
    const x = pick(e);
    if (x !== undefined) out.push(x);
  }
  return out;
}

/** IPv4 then IPv6 neighbour entries of device `ifindex`. */
export async function listNeighbours(sock: NlSocket, ifindex: number): Promise<NeighbourEntry[]> {
  const pick = (len: number, format: (b: Buffer) => string) => (e: NeighEntry): NeighbourEntry | undefined => {
    if (e.dst?.length !== len) return undefined;
    // The kernel's own entries for IPv6 multicast groups (ff02::1:ff…, MLD) on any device with
    // IPv6: never a peer, neither ours to program nor to report.
    if (len === 16 && e.dst[0] === 0xff) return undefined;
    const n: NeighbourEntry = { ip: format(e.dst), permanent: (e.state & NUD_PERMANENT) !== 0, state: e.state };
    if (e.lladdr?.length === 6) n.mac = formatMac(e.lladdr);
    return n;
  };
  const [v4, v6] = await Promise.all([
    dumpEntries(sock, AF_INET, ifindex, 'dump neighbours', pick(4, formatIPv4)),
    dumpEntries(sock, AF_INET6, ifindex, 'dump IPv6 neighbours', pick(16, formatIPv6)),
  ]);
  return [...v4, ...v6];
}

/**
 * The MAC of device `ifindex`'s neighbour entry for one address (a single RTM_GETNEIGH), undefined
 * when there is none: `ip` is an IPv4 number or an IPv6 address's 16 bytes.
 */
export async function neighbourMac(sock: NlSocket, ifindex: number, ip: number | Buffer): Promise<string | undefined> {
  const v6 = typeof ip !== 'number';
  const alen = v6 ? 16 : 4;
  const req = Buffer.alloc(NDMSG_LEN + 4 + alen);
  req[0] = v6 ? AF_INET6 : AF_INET;
  req.writeInt32LE(ifindex, 4);
  req.writeUInt16LE(4 + alen, NDMSG_LEN);
  req.writeUInt16LE(NDA_DST, NDMSG_LEN + 2);
  if (v6) ip.copy(req, NDMSG_LEN + 4);
  else req.writeUInt32BE(ip, NDMSG_LEN + 4);
  try {
    for (const m of await sock.request(RTM_GETNEIGH, 0, req, 'get neighbour')) {
      if (m.type !== RTM_NEWNEIGH) continue;
      const e = parseNeighMessage(m.data);
      if (e.lladdr?.length === 6) return formatMac(e.lladdr);
    }
    return undefined;
  } catch (e) {
    if (isNetlinkError(e, 'ENOENT')) return undefined;
    throw e;
  }
}

/** Bridge-family FDB entries of device `ifindex` (its own `self` entries and its bridge's `master` ones). */
export function listFdb(sock: NlSocket, ifindex: number): Promise<FdbEntry[]> {
  return dumpEntries(sock, AF_BRIDGE, ifindex, 'dump fdb', (e) => {
    if (e.lladdr?.length !== 6) return undefined;
    const f: FdbEntry = {
      mac: formatMac(e.lladdr),
      self: (e.flags & NTF_SELF) !== 0,
      // The bridge marks its entries with NDA_MASTER, not with NTF_MASTER.
      master: e.master !== undefined || (e.flags & NTF_MASTER) !== 0,
      permanent: (e.state & NUD_PERMANENT) !== 0,
      dynamic: (e.state & (NUD_PERMANENT | NUD_NOARP)) === 0,
    };
    const vtep = e.dst && formatIP(e.dst);
    if (vtep) f.vtep = vtep;
    return f;
  });
}

/**
 * Peers as the kernel has them: PERMANENT neighbours joined by MAC with permanent `self` FDB
 * entries. A container's IPv4 and IPv6 neighbours share its MAC and make one peer (`ip` empty
 * when it has only the IPv6 one).
 */
export function joinPeers(neighbours: NeighbourEntry[], fdb: FdbEntry[]): Peer[] {
  const vtepByMac = new Map<string, string>();
  for (const f of fdb) if (isPeerFdb(f) && f.vtep) vtepByMac.set(f.mac, f.vtep);
  const out: Peer[] = [];
  const v6Only = new Map<string, Peer>();
  const byMac = new Map<string, Peer>();
  for (const n of neighbours) {
    if (!n.permanent || !n.mac) continue;
    const vtep = vtepByMac.get(n.mac);
    if (!vtep) continue;
    if (!n.ip.includes(':')) {
      const p: Peer = { ip: n.ip, mac: n.mac, vtep };
      out.push(p);
      byMac.set(n.mac, p);
      continue;
    }
    const p = byMac.get(n.mac);
    if (p && p.ip6 === undefined) p.ip6 = n.ip;
    else v6Only.set(n.ip, { ip: '', ip6: n.ip, mac: n.mac, vtep });
  }
  // IPv6 entries listed before their IPv4 sibling (not the order listNeighbours gives) still join.
  for (const p of v6Only.values()) {
    const q = byMac.get(p.mac);
    if (q && q.ip6 === undefined) q.ip6 = p.ip6!;
    else out.push(p);
  }
  return out;
}

export async function listPeers(sock: NlSocket, vxlanIndex: number): Promise<Peer[]> {
  const [n, f] = await Promise.all([listNeighbours(sock, vxlanIndex), listFdb(sock, vxlanIndex)]);
  return joinPeers(n, f);
}

/**
 * What setPeers needs of a vxlan device's tables, as numbers (IPv4 addresses, 48-bit MACs); IPv6
 * addresses as canonical text (see peer-messages.vtepKey).
 */
export interface KernelTables {
  /** PERMANENT IPv4 neighbours: address → MAC (-1: none). */
  neigh: Map<number, number>;
  /** PERMANENT IPv6 neighbours: address → MAC (-1: none). */
  neigh6: Map<string, number>;
  /** `self` FDB entries with a destination (all-zeros MAC left out): MAC → its first VTEP… */
  vtep: Map<number, number | string>;
  /** …and further VTEPs of the same MAC (an entry per VTEP, e.g. added by hand). */
  moreVteps: Map<number, (number | string)[]>;
  /** MACs the bridge learned behind the device (`master`, neither permanent nor static). */
  learned: Set<number>;
}

export async function readTables(sock: NlSocket, ifindex: number): Promise<KernelTables> {
  const [neighMsgs, neigh6Msgs, fdbMsgs] = await Promise.all([
    sock.dump(RTM_GETNEIGH, ndmsgRequest(AF_INET), 'dump neighbours'),
    sock.dump(RTM_GETNEIGH, ndmsgRequest(AF_INET6), 'dump IPv6 neighbours'),
    sock.dump(RTM_GETNEIGH, ndmsgRequest(AF_BRIDGE), 'dump fdb'),
  ]);
  const t: KernelTables = { neigh: new Map(), neigh6: new Map(), vtep: new Map(), moreVteps: new Map(), learned: new Set() };
  const e = new NeighFields();
  for (const m of neighMsgs) {
    if (m.type !== RTM_NEWNEIGH) continue;
    e.read(m.data);
    if (e.family === AF_INET && e.ifindex === ifindex && e.dst4 >= 0 && (e.state & NUD_PERMANENT) !== 0) t.neigh.set(e.dst4, e.mac);
  }
  for (const m of neigh6Msgs) {
    if (m.type !== RTM_NEWNEIGH) continue;
    e.read(m.data);
    if (e.family === AF_INET6 && e.ifindex === ifindex && e.dst6 && (e.state & NUD_PERMANENT) !== 0) t.neigh6.set(formatIPv6(e.dst6), e.mac);
  }
  for (const m of fdbMsgs) {
    if (m.type !== RTM_NEWNEIGH) continue;
    e.read(m.data);
    if (e.family !== AF_BRIDGE || e.ifindex !== ifindex || e.mac < 0) continue;
    // The bridge marks its entries with NDA_MASTER, not with NTF_MASTER.
    const master = e.master || (e.flags & NTF_MASTER) !== 0;
    if (master && (e.state & (NUD_PERMANENT | NUD_NOARP)) === 0) t.learned.add(e.mac);
    if ((e.flags & NTF_SELF) === 0 || (e.dst4 < 0 && !e.dst6) || e.mac === 0) continue;
    const vtep = e.dst4 >= 0 ? e.dst4 : formatIPv6(e.dst6!);
    if (!t.vtep.has(e.mac)) t.vtep.set(e.mac, vtep);
    else t.moreVteps.set(e.mac, [...(t.moreVteps.get(e.mac) ?? []), vtep]);
  }
  return t;
}

/** What the kernel asks for in `miss` mode: the MAC of an IP (L3 miss) or the VTEP of a MAC (L2 miss). */
export type Miss = { kind: 'l3'; ip: string; ifindex: number } | { kind: 'l2'; mac: string; ifindex: number };

/**
 * Decodes a vxlan miss notification: RTM_GETNEIGH on RTNLGRP_NEIGH carrying either NDA_DST (l3miss:
 * no neighbour for an ARP request or, 16 bytes with family AF_INET6, a Neighbor Solicitation the
 * device proxies) or NDA_LLADDR (l2miss: no FDB entry for a destination MAC, family AF_INET).
 * The attribute present is what tells them apart. Anything else (RTM_NEWNEIGH events) is not a miss.
 */
export function parseMiss(type: number, data: Buffer): Miss | undefined {
  if (type !== RTM_GETNEIGH || data.length < NDMSG_LEN) return undefined;
  const e = parseNeighMessage(data);
  if (e.family !== AF_INET && e.family !== AF_BRIDGE && e.family !== AF_INET6) return undefined;
  if (e.dst?.length === 4 && !e.lladdr) return { kind: 'l3', ip: formatIPv4(e.dst), ifindex: e.ifindex };
  if (e.dst?.length === 16 && !e.lladdr) return { kind: 'l3', ip: formatIPv6(e.dst), ifindex: e.ifindex };
  if (e.lladdr?.length === 6 && !e.dst) return { kind: 'l2', mac: formatMac(e.lladdr), ifindex: e.ifindex };
  return undefined;
}
