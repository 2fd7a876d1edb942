/**
 * Remote containers as kernel state in an overlay namespace: a PERMANENT neighbour entry
 * (`<ip> dev vxlan0 lladdr <mac> PERMANENT`, so the vxlan device answers ARP itself) and a vxlan
 * FDB entry (`<mac> dev vxlan0 dst <vtep> self permanent`, so frames for the MAC are tunnelled
 * to its host). This file decides what to send (a diff, or the tables made to match a desired
 * set) and sends it in batches; the messages are built in `peer-messages.ts`, the tables read
 * back in `peer-tables.ts`.
 */
import type { Peer } from './types';
import { formatIPv4Number, formatMac, ipv4ToNumber, macFromNumber, macToNumber } from './encode';
import type { NetlinkError, NlSocket } from './nlsock';
import {
  ADD_LEN,
  FDB_MASTER_DEL_LEN,
  FDB_SELF_DEL_LEN,
  NEIGH_DEL_LEN,
  REMOVE_MAX,
  Slab,
  parsePeer,
  type ParsedPeer,
} from './peer-messages';
import { listFdb, listNeighbours, neighbourMac, readTables, type KernelTables } from './peer-tables';

export { encodePeerAdd, encodePeerRemove } from './peer-messages';
export { joinPeers, listFdb, listNeighbours, listPeers, parseMiss } from './peer-tables';
export type { FdbEntry, Miss, NeighbourEntry } from './peer-tables';

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
