/**
 * Remote containers as kernel state in an overlay namespace: a PERMANENT neighbour entry
 * (`<ip> dev vxlan0 lladdr <mac> PERMANENT`, so the vxlan device answers ARP itself) and a vxlan
 * FDB entry (`<mac> dev vxlan0 dst <vtep> self permanent`, so frames for the MAC are tunnelled
 * to its host). Messages are pre-encoded and sent many to a datagram (see NlSocket.batch): the
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
  NUD_NOARP,
  NUD_PERMANENT,
  RTM_DELNEIGH,
  RTM_GETNEIGH,
  RTM_NEWNEIGH,
  NeighFields,
  type NeighEntry,
  formatIPv4,
  formatIPv4Number,
  formatMac,
  ipv4ToNumber,
  macFromNumber,
  macToNumber,
  NLMSG_HDRLEN,
  parseMac,
  parseNeighMessage,
} from './encode';
import { NLM_F_CREATE, NLM_F_REPLACE, NetlinkError, NlSocket, isNetlinkError } from './nlsock';
import { isPeerFdb } from './overlay-check';

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

interface ParsedPeer {
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

function parsePeer(p: Peer): ParsedPeer {
  const ip = ipv4ToNumber(p.ip);
  const mac = parseMac(p.mac);
  const vtep = ipv4ToNumber(p.vtep);
  return { peer: p, ip, mac, vtep, ipText: p.ip, macText: canonicalMac(p.mac), vtepText: p.vtep };
}

// Fixed layouts of the five neighbour messages (16-byte header, 12-byte ndmsg, attributes), written
// straight into one slab per batch: no per-message allocation, and the datagrams sent are views
// of the slab. encodeNeighMessage builds the same bytes generically (the unit tests compare them).
const NEIGH_ADD_LEN = 48;
const FDB_ADD_LEN = 48;
const NEIGH_DEL_LEN = 36;
const FDB_SELF_DEL_LEN = 48;
const FDB_MASTER_DEL_LEN = 40;

class Slab {
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

const REMOVE_MAX = NEIGH_DEL_LEN + FDB_SELF_DEL_LEN + FDB_MASTER_DEL_LEN;
const ADD_LEN = NEIGH_ADD_LEN + FDB_ADD_LEN;

function ndmsgRequest(family: number): Buffer {
  const b = Buffer.alloc(NDMSG_LEN);
  b.writeUInt8(family, 0);
  return b;
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

/** IPv4 neighbour entries of device `ifindex`. */
export function listNeighbours(sock: NlSocket, ifindex: number): Promise<NeighbourEntry[]> {
  return dumpEntries(sock, AF_INET, ifindex, 'dump neighbours', (e) => {
    if (e.dst?.length !== 4) return undefined;
    const n: NeighbourEntry = { ip: formatIPv4(e.dst), permanent: (e.state & NUD_PERMANENT) !== 0, state: e.state };
    if (e.lladdr?.length === 6) n.mac = formatMac(e.lladdr);
    return n;
  });
}

/** The MAC of device `ifindex`'s neighbour entry for one address (a single RTM_GETNEIGH), undefined when there is none. */
async function neighbourMac(sock: NlSocket, ifindex: number, ip: number): Promise<string | undefined> {
  const req = Buffer.alloc(NDMSG_LEN + 8);
  req[0] = AF_INET;
  req.writeInt32LE(ifindex, 4);
  req.writeUInt16LE(8, NDMSG_LEN);
  req.writeUInt16LE(NDA_DST, NDMSG_LEN + 2);
  req.writeUInt32BE(ip, NDMSG_LEN + 4);
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
    if (e.dst?.length === 4) f.vtep = formatIPv4(e.dst);
    return f;
  });
}

/** Peers as the kernel has them: PERMANENT neighbours joined by MAC with permanent `self` FDB entries. */
export function joinPeers(neighbours: NeighbourEntry[], fdb: FdbEntry[]): Peer[] {
  const vtepByMac = new Map<string, string>();
  for (const f of fdb) if (isPeerFdb(f) && f.vtep) vtepByMac.set(f.mac, f.vtep);
  const out: Peer[] = [];
  for (const n of neighbours) {
    if (!n.permanent || !n.mac) continue;
    const vtep = vtepByMac.get(n.mac);
    if (vtep) out.push({ ip: n.ip, mac: n.mac, vtep });
  }
  return out;
}

export async function listPeers(sock: NlSocket, vxlanIndex: number): Promise<Peer[]> {
  const [n, f] = await Promise.all([listNeighbours(sock, vxlanIndex), listFdb(sock, vxlanIndex)]);
  return joinPeers(n, f);
}

export interface PeerChangeResult {
  /** Peers (re)programmed. */
  added: number;
  /** Peers removed (setPeers: stale neighbours, plus FDB entries left without one). */
  removed: number;
}

/** Thrown when some of a batch's messages were refused; the others did take effect. */
export class PeerBatchError extends Error {
  readonly failures: { peer: Peer; error: NetlinkError }[];
  constructor(what: string, failures: { peer: Peer; error: NetlinkError }[]) {
    const f = failures[0]!;
    super(`${what}: ${failures.length} peer(s) failed, first ${f.peer.ip}/${f.peer.mac} via ${f.peer.vtep}: ${f.error.code}`);
    this.name = 'PeerBatchError';
    this.failures = failures;
  }
}

const IGNORE_ON_DELETE = ['ENOENT', 'ESRCH', 'EADDRNOTAVAIL'];
/** Removals up to this many look their neighbours up one by one rather than dumping the tables. */
const FEW_REMOVALS = 32;

async function sendBatch(
  sock: NlSocket,
  what: string,
  msgs: Buffer[],
  owners: ParsedPeer[],
  ignore: string[],
): Promise<void> {
  const { errors } = await sock.batch(msgs, what, { ignore });
  if (errors.size) {
    const failures = [...errors].sort((a, b) => a[0] - b[0]).map(([i, error]) => ({ peer: owners[i]!.peer, error }));
    throw new PeerBatchError(what, failures);
  }
}

/**
 * Removes then adds peers. Removal deletes the neighbour only while it still maps the IP to the
 * removed MAC (the IP may already belong to a newer container), the FDB entry only for the
 * removed VTEP, and whatever the bridge learned for the MAC behind vxlan0. Missing entries are
 * fine; adding an existing peer is a no-op replace. Input is validated before anything changes.
 */
export async function applyPeerDiff(sock: NlSocket, vxlanIndex: number, add: Peer[], remove: Peer[]): Promise<PeerChangeResult> {
  const adds = add.map(parsePeer);
  const removes = remove.map(parsePeer);
  if (removes.length) {
    const addIps = new Set(adds.map((p) => p.ipText));
    const addMacVtep = new Set(adds.map((p) => `${p.macText}@${p.vtepText}`));
    const slab = new Slab(removes.length * REMOVE_MAX);
    const owners: ParsedPeer[] = [];
    if (removes.length <= FEW_REMOVALS) {
      // A few (the event path: a container left): one lookup per neighbour rather than dumping both
      // whole tables; the FDB deletes go out as they are (a missing entry answers ENOENT, ignored).
      const macs = await Promise.all(removes.map((p) => (addIps.has(p.ipText) ? undefined : neighbourMac(sock, vxlanIndex, p.ip))));
      removes.forEach((p, i) => {
        if (macs[i] === p.macText) {
          slab.neighDel(vxlanIndex, p.ip);
          owners.push(p);
        }
        if (!addMacVtep.has(`${p.macText}@${p.vtepText}`)) {
          slab.fdbSelfDel(vxlanIndex, p.mac, p.vtep);
          owners.push(p);
        }
        slab.fdbMasterDel(vxlanIndex, p.mac);
        owners.push(p);
      });
    } else {
      // Deleting only what exists avoids an error reply per missing entry (most learned entries are).
      const [neigh, fdb] = await Promise.all([listNeighbours(sock, vxlanIndex), listFdb(sock, vxlanIndex)]);
      const current = new Map(neigh.map((n) => [n.ip, n.mac]));
      const selfEntries = new Set<string>();
      const learned = new Set<string>();
      for (const f of fdb) {
        if (f.self && f.vtep) selfEntries.add(`${f.mac}@${f.vtep}`);
        if (f.master && f.dynamic) learned.add(f.mac);
      }
      for (const p of removes) {
        if (!addIps.has(p.ipText) && current.get(p.ipText) === p.macText) {
          slab.neighDel(vxlanIndex, p.ip);
          owners.push(p);
        }
        const key = `${p.macText}@${p.vtepText}`;
        if (!addMacVtep.has(key) && selfEntries.has(key)) {
          slab.fdbSelfDel(vxlanIndex, p.mac, p.vtep);
          owners.push(p);
        }
        if (learned.has(p.macText)) {
          slab.fdbMasterDel(vxlanIndex, p.mac);
          owners.push(p);
        }
      }
    }
    await sendBatch(sock, 'remove peers', slab.msgs, owners, IGNORE_ON_DELETE);
  }
  if (adds.length) await sendAdds(sock, vxlanIndex, adds);
  return { added: adds.length, removed: removes.length };
}

/** Programs peers: a neighbour and an FDB entry each (replace: idempotent), many to a datagram. */
async function sendAdds(sock: NlSocket, vxlanIndex: number, peers: readonly ParsedPeer[]): Promise<void> {
  const slab = new Slab(peers.length * ADD_LEN);
  const owners: ParsedPeer[] = [];
  for (const p of peers) {
    slab.neighAdd(vxlanIndex, p.ip, p.mac);
    slab.fdbAdd(vxlanIndex, p.mac, p.vtep);
    owners.push(p, p);
  }
  await sendBatch(sock, 'add peers', slab.msgs, owners, []);
}

/**
 * Makes the kernel tables hold exactly `desired` (reconcile after a reconnect): adds what is
 * missing or different, removes PERMANENT neighbours and `self` FDB entries nobody wants (the
 * all-zeros default entry of p2p/multicast devices is left alone).
 *
 * It runs for every network on each periodic reconcile, nearly always with nothing to change, so
 * it compares addresses as numbers (no object or string per table entry or desired peer), parses
 * into bytes only the peers it must (re)program, and sizes each message slab to what it sends.
 * Every desired peer is validated before anything is sent.
 */
export async function setPeers(sock: NlSocket, vxlanIndex: number, desired: Peer[]): Promise<PeerChangeResult> {
  const wantIps = new Set<number>();
  const wantVtepByMac = new Map<number, number>();
  for (const p of desired) {
    wantIps.add(ipv4ToNumber(p.ip));
    wantVtepByMac.set(macToNumber(p.mac), ipv4ToNumber(p.vtep));
  }
  const have = await readTables(sock, vxlanIndex);
  const stale = staleEntries(have, wantIps, wantVtepByMac);
  const missing: ParsedPeer[] = [];
  for (const p of desired) {
    const mac = macToNumber(p.mac);
    const present = have.neigh.get(ipv4ToNumber(p.ip)) === mac && have.vtep.get(mac) === ipv4ToNumber(p.vtep) && !have.moreVteps.has(mac);
    if (!present) missing.push(parsePeer(p));
  }

  const slab = new Slab(stale.neigh.length * NEIGH_DEL_LEN + stale.self.length * FDB_SELF_DEL_LEN + stale.master.length * FDB_MASTER_DEL_LEN);
  for (const p of stale.neigh) slab.neighDel(vxlanIndex, p.ip);
  for (const p of stale.self) slab.fdbSelfDel(vxlanIndex, p.mac, p.vtep);
  for (const p of stale.master) slab.fdbMasterDel(vxlanIndex, p.mac);
  await sendBatch(sock, 'remove stale peers', slab.msgs, [...stale.neigh, ...stale.self, ...stale.master], IGNORE_ON_DELETE);

  await sendAdds(sock, vxlanIndex, missing);
  return { added: missing.length, removed: stale.removed };
}

/** What setPeers needs of a vxlan device's tables, as numbers (IPv4 addresses, 48-bit MACs). */
interface KernelTables {
  /** PERMANENT neighbours: address → MAC (-1: none). */
  neigh: Map<number, number>;
  /** `self` FDB entries with a destination (all-zeros MAC left out): MAC → its first VTEP… */
  vtep: Map<number, number>;
  /** …and further VTEPs of the same MAC (an entry per VTEP, e.g. added by hand). */
  moreVteps: Map<number, number[]>;
  /** MACs the bridge learned behind the device (`master`, neither permanent nor static). */
  learned: Set<number>;
}

async function readTables(sock: NlSocket, ifindex: number): Promise<KernelTables> {
  const [neighMsgs, fdbMsgs] = await Promise.all([
    sock.dump(RTM_GETNEIGH, ndmsgRequest(AF_INET), 'dump neighbours'),
    sock.dump(RTM_GETNEIGH, ndmsgRequest(AF_BRIDGE), 'dump fdb'),
  ]);
  const t: KernelTables = { neigh: new Map(), vtep: new Map(), moreVteps: new Map(), learned: new Set() };
  const e = new NeighFields();
  for (const m of neighMsgs) {
    if (m.type !== RTM_NEWNEIGH) continue;
    e.read(m.data);
    if (e.family === AF_INET && e.ifindex === ifindex && e.dst4 >= 0 && (e.state & NUD_PERMANENT) !== 0) t.neigh.set(e.dst4, e.mac);
  }
  for (const m of fdbMsgs) {
    if (m.type !== RTM_NEWNEIGH) continue;
    e.read(m.data);
    if (e.family !== AF_BRIDGE || e.ifindex !== ifindex || e.mac < 0) continue;
    // The bridge marks its entries with NDA_MASTER, not with NTF_MASTER.
    const master = e.master || (e.flags & NTF_MASTER) !== 0;
    if (master && (e.state & (NUD_PERMANENT | NUD_NOARP)) === 0) t.learned.add(e.mac);
    if ((e.flags & NTF_SELF) === 0 || e.dst4 < 0 || e.mac === 0) continue;
    if (!t.vtep.has(e.mac)) t.vtep.set(e.mac, e.dst4);
    else t.moreVteps.set(e.mac, [...(t.moreVteps.get(e.mac) ?? []), e.dst4]);
  }
  return t;
}

interface StaleEntries {
  /** PERMANENT neighbours of addresses nobody wants. */
  neigh: ParsedPeer[];
  /** `self` FDB entries for a MAC nobody wants, or pointing at another VTEP than wanted. */
  self: ParsedPeer[];
  /** Bridge-learned entries of MACs nobody wants any more. */
  master: ParsedPeer[];
  /** Peers this removes: neighbours, plus FDB entries left without one. */
  removed: number;
}

/** A table entry to delete, in the form the message writers and error reports take. */
function stub(ip: number, mac: number, vtep: number): ParsedPeer {
  return parsePeer({ ip: formatIPv4Number(ip), mac: formatMac(macFromNumber(mac)), vtep: formatIPv4Number(vtep) });
}

function staleEntries(have: KernelTables, wantIps: ReadonlySet<number>, wantVtepByMac: ReadonlyMap<number, number>): StaleEntries {
  const out: StaleEntries = { neigh: [], self: [], master: [], removed: 0 };
  const removedMacs = new Set<number>();
  // forEach: for…of over a map's entries allocates an array per entry.
  have.neigh.forEach((mac, ip) => {
    if (wantIps.has(ip)) return;
    out.neigh.push(stub(ip, Math.max(mac, 0), 0));
    out.removed++;
    if (mac >= 0) removedMacs.add(mac);
  });
  const selfEntry = (mac: number, vtep: number): void => {
    const wantVtep = wantVtepByMac.get(mac);
    if (wantVtep === vtep) return;
    const entry = stub(0, mac, vtep);
    out.self.push(entry);
    if (wantVtep !== undefined) return;
    if (have.learned.has(mac)) out.master.push(entry);
    // An FDB entry left without its neighbour counts as a removed peer of its own.
    if (!removedMacs.has(mac)) {
      removedMacs.add(mac);
      out.removed++;
    }
  };
  have.vtep.forEach((vtep, mac) => selfEntry(mac, vtep));
  have.moreVteps.forEach((vteps, mac) => vteps.forEach((vtep) => selfEntry(mac, vtep)));
  return out;
}

/** What the kernel asks for in `miss` mode: the MAC of an IP (L3 miss) or the VTEP of a MAC (L2 miss). */
export type Miss = { kind: 'l3'; ip: string; ifindex: number } | { kind: 'l2'; mac: string; ifindex: number };

/**
 * Decodes a vxlan miss notification: RTM_GETNEIGH on RTNLGRP_NEIGH carrying either NDA_DST (l3miss:
 * no neighbour for an ARP request the device proxies) or NDA_LLADDR (l2miss: no FDB entry for a
 * destination MAC). The kernel sets family AF_INET on both for IPv4 devices, so the attribute
 * present is what tells them apart. Anything else (RTM_NEWNEIGH events, IPv6) is not a miss.
 */
export function parseMiss(type: number, data: Buffer): Miss | undefined {
  if (type !== RTM_GETNEIGH || data.length < NDMSG_LEN) return undefined;
  const e = parseNeighMessage(data);
  if (e.family !== AF_INET && e.family !== AF_BRIDGE) return undefined;
  if (e.dst?.length === 4 && !e.lladdr) return { kind: 'l3', ip: formatIPv4(e.dst), ifindex: e.ifindex };
  if (e.lladdr?.length === 6 && !e.dst) return { kind: 'l2', mac: formatMac(e.lladdr), ifindex: e.ifindex };
  return undefined;
}
