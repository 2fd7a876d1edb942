/**
 * A network's desired peers: which endpoint records are peers of this host, at which VTEP, and
 * the set kept endpoint by endpoint. Pure: PeerView feeds it from the store, `inspect --check`
 * computes the same set from a store read.
 */
import type { Peer } from '../dataplane/types';
import { sameUnderlayFamily } from '../dataplane/overlay-check';
import { endpointRecordSchema, type EndpointRecord, type HostRecord } from './records';

// join() builds one flat string; a template literal leaves a tree of parts beside the
// flattened copy once the id is hashed, kept for every peer.
export const peerId = (p: Peer) => (p.ip6 === undefined ? [p.ip, p.mac, p.vtep] : [p.ip, p.mac, p.vtep, p.ip6]).join('|');

/** The fields of an endpoint record that decide whether and how it is a peer. */
export type PeerEndpoint = Pick<EndpointRecord, 'ip' | 'ip6' | 'mac' | 'host' | 'joined'>;

/** A remote endpoint as a peer at `vtep` (`ip` empty on an IPv6-only network, as in the record). */
export function peerAt(ep: PeerEndpoint, vtep: string): Peer {
  return ep.ip6 ? { ip: ep.ip, ip6: ep.ip6, mac: ep.mac, vtep } : { ip: ep.ip, mac: ep.mac, vtep };
}

/**
 * Only those fields are checked when a record arrives: every endpoint of a followed network is
 * decoded on a restart, and checking fields nothing here reads would cost that much more.
 */
export const peerEndpointSchema = endpointRecordSchema.pick({ ip: true, ip6: true, mac: true, host: true, joined: true });

/**
 * The peers one host should hold for one network: every joined endpoint of another host that
 * is live (has a `hosts/<name>` record), at that host's registered VTEP. A host whose VTEP is of
 * the other family than this host's (`ownVtep`, else this host's own record) cannot be reached:
 * mixed IPv4/IPv6 underlays are refused, its endpoints are no peers. Shared by peer-sync and
 * `tsoverlay inspect --check`.
 */
export function desiredPeersOf(
  endpoints: Iterable<PeerEndpoint>,
  hosts: ReadonlyMap<string, HostRecord>,
  self: string,
  ownVtep: string | undefined = hosts.get(self)?.vtep,
): Peer[] {
  const peers: Peer[] = [];
  for (const ep of endpoints) {
    if (!ep.joined || ep.host === self) continue;
    const host = hosts.get(ep.host);
    if (host && (!ownVtep || sameUnderlayFamily(ownVtep, host.vtep))) peers.push(peerAt(ep, host.vtep));
  }
  return peers;
}

/**
 * A network's desired peers by peer id, kept up to date endpoint by endpoint so that a watch
 * event costs a lookup, not a rebuild of the whole set. Two endpoint records can map to the same
 * peer (a stale duplicate): the peer stays wanted until the last of them goes.
 */
export class DesiredPeers {
  readonly peers = new Map<string, Peer>();
  /** Records beyond the first per peer id (almost always empty). */
  private readonly extra = new Map<string, number>();
  /** Ids that came into or left `peers` since the last takeChanged(). */
  private changed = new Set<string>();

  add(peer: Peer): void {
    const id = peerId(peer);
    if (this.peers.has(id)) {
      this.extra.set(id, (this.extra.get(id) ?? 0) + 1);
    } else {
      this.peers.set(id, peer);
      this.changed.add(id);
    }
  }

  remove(peer: Peer): void {
    const id = peerId(peer);
    const n = this.extra.get(id);
    if (n === undefined) {
      if (this.peers.delete(id)) this.changed.add(id);
    } else if (n > 1) {
      this.extra.set(id, n - 1);
    } else {
      this.extra.delete(id);
    }
  }

  takeChanged(): ReadonlySet<string> {
    const out = this.changed;
    this.changed = new Set();
    return out;
  }
}
