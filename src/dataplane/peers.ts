/**
 * Remote containers as kernel state in an overlay namespace: a PERMANENT neighbour entry
 * (`<ip> dev vxlan0 lladdr <mac> PERMANENT`, so the vxlan device answers ARP itself) and a vxlan
 * FDB entry (`<mac> dev vxlan0 dst <vtep> self permanent`, so frames for the MAC are tunnelled
 * to its host). This file decides what to send (a diff, or the tables made to match a desired
 * set) and sends it in batches; the messages are built in `peer-messages.ts`, the tables read
 * back in `peer-tables.ts`.
 */
import type { Peer } from './types';
import { canonicalIPv6, formatIPv4Number, formatMac, ipv4ToNumber, macFromNumber, macToNumber } from './encode';
import type { NetlinkError, NlSocket } from './nlsock';
import { REMOVE_MAX, Slab, addCapacity, parsePeer, vtepKey, type ParsedPeer } from './peer-messages';
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

async function sendBatch(sock: NlSocket, what: string, slab: Slab, ignore: string[]): Promise<void> {
  const owners = slab.owners;
  const { errors } = await sock.batch(slab.msgs, what, { ignore });
  if (errors.size) {
    const failures = [...errors].sort((a, b) => a[0] - b[0]).map(([i, error]) => ({ peer: owners[i]!.peer, error }));
    throw new PeerBatchError(what, failures);
  }
}

/**
 * Removes then adds peers. Removal deletes the neighbour only while it still maps the IP to the
 * removed MAC (the IP may already belong to a newer container), the FDB entry only for the
 * removed VTEP, and whatever the bridge learned for the MAC behind vxlan0 (IPv4 and IPv6 neighbours
 * alike). Missing entries are
 * fine; adding an existing peer is a no-op replace. Input is validated before anything changes.
 */
export async function applyPeerDiff(sock: NlSocket, vxlanIndex: number, add: Peer[], remove: Peer[]): Promise<PeerChangeResult> {
  const adds = add.map(parsePeer);
  const removes = remove.map(parsePeer);
  if (removes.length) {
    const addIps = new Set(adds.map((p) => p.ipText));
    const addIp6s = new Set(adds.map((p) => p.ip6Text));
    const addMacVtep = new Set(adds.map((p) => `${p.macText}@${p.vtepText}`));
    const slab = new Slab(removes.length * REMOVE_MAX);
    if (removes.length <= FEW_REMOVALS) {
      // A few (the event path: a container left): one lookup per neighbour rather than dumping both
      // whole tables; the FDB deletes go out as they are (a missing entry answers ENOENT, ignored).
      const lookup = (p: ParsedPeer, v6: boolean): Promise<string | undefined> | undefined => {
        if (v6) return p.ip6 && !addIp6s.has(p.ip6Text) ? neighbourMac(sock, vxlanIndex, p.ip6) : undefined;
        return p.ip >= 0 && !addIps.has(p.ipText) ? neighbourMac(sock, vxlanIndex, p.ip) : undefined;
      };
      const [macs, macs6] = await Promise.all([Promise.all(removes.map((p) => lookup(p, false))), Promise.all(removes.map((p) => lookup(p, true)))]);
      removes.forEach((p, i) => {
        if (macs[i] === p.macText) slab.neighDel(p, vxlanIndex, p.ip);
        if (p.ip6 && macs6[i] === p.macText) slab.neigh6Del(p, vxlanIndex, p.ip6);
        if (!addMacVtep.has(`${p.macText}@${p.vtepText}`)) slab.fdbSelfDel(p, vxlanIndex, p.mac, p.vtep);
        slab.fdbMasterDel(p, vxlanIndex, p.mac);
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
        if (p.ip >= 0 && !addIps.has(p.ipText) && current.get(p.ipText) === p.macText) slab.neighDel(p, vxlanIndex, p.ip);
        if (p.ip6 && !addIp6s.has(p.ip6Text) && current.get(p.ip6Text!) === p.macText) slab.neigh6Del(p, vxlanIndex, p.ip6);
        const key = `${p.macText}@${p.vtepText}`;
        if (!addMacVtep.has(key) && selfEntries.has(key)) slab.fdbSelfDel(p, vxlanIndex, p.mac, p.vtep);
        if (learned.has(p.macText)) slab.fdbMasterDel(p, vxlanIndex, p.mac);
      }
    }
    await sendBatch(sock, 'remove peers', slab, IGNORE_ON_DELETE);
  }
  if (adds.length) await sendAdds(sock, vxlanIndex, adds);
  return { added: adds.length, removed: removes.length };
}

/** Programs peers: a neighbour and an FDB entry each (replace: idempotent), many to a datagram. */
async function sendAdds(sock: NlSocket, vxlanIndex: number, peers: readonly ParsedPeer[]): Promise<void> {
  const slab = new Slab(addCapacity(peers.length));
  for (const p of peers) slab.peerAdd(p, vxlanIndex);
  await sendBatch(sock, 'add peers', slab, []);
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
  const wantIp6s = new Set<string>();
  const wantVtepByMac = new Map<number, number | string>();
  // Parsed once: an IPv6 address's canonical text (the dumps' form) is not free to make.
  const ip6s: (string | undefined)[] = [];
  for (const p of desired) {
    if (p.ip !== '' || p.ip6 === undefined) wantIps.add(ipv4ToNumber(p.ip));
    const ip6 = p.ip6 === undefined ? undefined : canonicalIPv6(p.ip6);
    ip6s.push(ip6);
    if (ip6) wantIp6s.add(ip6);
    wantVtepByMac.set(macToNumber(p.mac), vtepKey(p.vtep));
  }
  const have = await readTables(sock, vxlanIndex);
  const stale = staleEntries(have, wantIps, wantIp6s, wantVtepByMac);
  const missing: ParsedPeer[] = [];
  desired.forEach((p, i) => {
    const mac = macToNumber(p.mac);
    const ip6 = ip6s[i];
    const present =
      (p.ip === '' && ip6 !== undefined ? true : have.neigh.get(ipv4ToNumber(p.ip)) === mac) &&
      (ip6 === undefined || have.neigh6.get(ip6) === mac) &&
      have.vtep.get(mac) === wantVtepByMac.get(mac) &&
      !have.moreVteps.has(mac);
    if (!present) missing.push(parsePeer(p));
  });

  const slab = new Slab(stale.neigh.length * REMOVE_MAX + stale.self.length * REMOVE_MAX + stale.master.length * REMOVE_MAX);
  for (const p of stale.neigh) {
    if (p.ip >= 0) slab.neighDel(p, vxlanIndex, p.ip);
    if (p.ip6) slab.neigh6Del(p, vxlanIndex, p.ip6);
  }
  for (const p of stale.self) slab.fdbSelfDel(p, vxlanIndex, p.mac, p.vtep);
  for (const p of stale.master) slab.fdbMasterDel(p, vxlanIndex, p.mac);
  await sendBatch(sock, 'remove stale peers', slab, IGNORE_ON_DELETE);

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

/**
 * A table entry to delete, in the form the message writers and error reports take: an IPv4
 * neighbour (`ip` a number), an IPv6 one (`ip` a string) or an FDB entry (`ip` 0).
 */
function stub(ip: number | string, mac: number, vtep: number | string): ParsedPeer {
  const v6 = typeof ip === 'string';
  return parsePeer({
    ip: v6 ? '' : formatIPv4Number(ip),
    ...(v6 ? { ip6: ip } : {}),
    mac: formatMac(macFromNumber(mac)),
    vtep: typeof vtep === 'string' ? vtep : formatIPv4Number(vtep),
  });
}

function staleEntries(
  have: KernelTables,
  wantIps: ReadonlySet<number>,
  wantIp6s: ReadonlySet<string>,
  wantVtepByMac: ReadonlyMap<number, number | string>,
): StaleEntries {
  const out: StaleEntries = { neigh: [], self: [], master: [], removed: 0 };
  const removedMacs = new Set<number>();
  // forEach: for…of over a map's entries allocates an array per entry.
  have.neigh.forEach((mac, ip) => {
    if (wantIps.has(ip)) return;
    out.neigh.push(stub(ip, Math.max(mac, 0), 0));
    out.removed++;
    if (mac >= 0) removedMacs.add(mac);
  });
  have.neigh6.forEach((mac, ip) => {
    if (wantIp6s.has(ip)) return;
    out.neigh.push(stub(ip, Math.max(mac, 0), 0));
    // A dual-stack container's two neighbours are one peer.
    if (mac < 0 || !removedMacs.has(mac)) out.removed++;
    if (mac >= 0) removedMacs.add(mac);
  });
  const selfEntry = (mac: number, vtep: number | string): void => {
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
