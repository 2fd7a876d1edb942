import type { Peer } from '../dataplane/types';
import { sameUnderlayFamily } from '../dataplane/overlay-check';
import type { Logger } from '../log';
import type { KVEntry, WatchEvent } from '../store/store';
import { errorMessage } from '../util/errors';
import type { HostLiveness } from './host-liveness';
import { indexPeers, type PeerIndex } from './miss-responder';
import { decodeRecord, hostRecordSchema, keys, type HostRecord } from './records';
import { DesiredPeers, desiredPeersOf, peerAt, peerEndpointSchema, type PeerEndpoint } from './desired-peers';

/**
 * Whether a host is alive for the data plane: a host is a peer (its containers are programmed
 * and reachable) exactly while this says so. PeerView is its one owner, deciding from the
 * store's registrations, the start-up settling and the underlay probes (HostLiveness); the
 * names view asks it too, so that a name is served exactly as long as its container's peer
 * entries stay.
 */
export interface LiveHosts {
  isLive(host: string): boolean;
  /** `listener` runs after any change to the answer for any host; returns the unsubscribe. */
  onChange(listener: () => void): () => void;
}

/** How long a host's start-up withdrawals may take to show in the endpoint watch before it is let in anyway. */
const SETTLE_WAIT_MS = 5_000;

/**
 * The store as peer distribution sees it, fed by the `hosts/` watch and one `endpoints/<network>/`
 * watch per network with a local overlay (EndpointFeed): the joined endpoints of those networks
 * and the live hosts, and from them each network's desired peers (the other hosts' endpoints).
 * The names view reads the same endpoints (this host's own too: local containers have names).
 * Endpoints of networks this host does not use are never received. Knows nothing of the kernel
 * (that is PeerSync's side).
 */
export class PeerView implements LiveHosts {
  /**
   * By network key, then store key: the joined endpoints, reduced to what programming and names
   * need. Every container of the followed networks is held here, so not the whole record (ids,
   * timestamps) and nothing else of the store. This host's own are never peers (peerOf).
   */
  private readonly endpoints = new Map<string, Map<string, PeerEndpoint>>();
  private readonly hosts = new Map<string, HostRecord>();
  /** Desired peers per network key, built on first use; dropped when any host changes. */
  private readonly desired = new Map<string, DesiredPeers>();
  /** Desired peers per network key, indexed for miss lookups; dropped on every store change. */
  private readonly indexes = new Map<string, PeerIndex>();

  constructor(
    /** This host's name: its own endpoints are never its peers. */
    private readonly self: string,
    private readonly logger: Logger,
    /** Decides when a host the store dropped is gone; without it, at once. */
    private readonly liveness?: HostLiveness,
    /** A host held back for its start-up withdrawals (HostRecord.settled) was let in without them being seen. */
    private readonly onLateHost?: () => void,
    /** This host's VTEP: hosts on the other underlay family are refused (logged once each), not peers. */
    private readonly ownVtep?: string,
  ) {}

  private readonly liveListeners = new Set<() => void>();
  private readonly endpointListeners = new Set<(networkKey: string, endpointId?: string) => void>();

  /** See JoinedEndpoints.onChange (endpoint-feed.ts). */
  onEndpointChange(listener: (networkKey: string, endpointId?: string) => void): () => void {
    this.endpointListeners.add(listener);
    return () => this.endpointListeners.delete(listener);
  }

  /** A joined endpoint of a followed network (this host's too), or undefined. */
  joinedEndpoint(networkKey: string, endpointId: string): Readonly<PeerEndpoint> | undefined {
    return this.endpoints.get(networkKey)?.get(keys.endpoint(networkKey, endpointId));
  }

  private endpointChanged(networkKey: string, endpointId?: string): void {
    for (const l of this.endpointListeners) {
      try {
        l(networkKey, endpointId);
      } catch (err) {
        this.logger.warn('endpoint listener failed', { error: errorMessage(err) });
      }
    }
  }

  /**
   * This host is always live (its own containers are on its bridge, whatever the store says);
   * another while it is held here and on this host's underlay family, the rule `peerOf` applies.
   */
  isLive(name: string): boolean {
    if (name === this.self) return true;
    const host = this.hosts.get(name);
    return host !== undefined && (!this.ownVtep || sameUnderlayFamily(this.ownVtep, host.vtep));
  }

  onChange(listener: () => void): () => void {
    this.liveListeners.add(listener);
    return () => this.liveListeners.delete(listener);
  }

  /** Which hosts are held, at which VTEP: what isLive answers from. */
  private liveSnapshot(): Map<string, string> {
    return new Map([...this.hosts].map(([name, h]) => [name, h.vtep]));
  }

  /** Listeners run only when the answer changed: a host record rewritten as it was changes no name. */
  private liveChangedSince(before: ReadonlyMap<string, string>): void {
    if (before.size !== this.hosts.size || [...this.hosts].some(([name, h]) => before.get(name) !== h.vtep)) this.liveChanged();
  }

  private liveChanged(): void {
    for (const l of this.liveListeners) {
      try {
        l();
      } catch (err) {
        this.logger.warn('host liveness listener failed', { error: errorMessage(err) });
      }
    }
  }

  /** Hosts refused for their underlay family, by name → the VTEP refused (logged once per VTEP). */
  private readonly mixed = new Map<string, string>();

  /** Whether a host's VTEP is reachable from this host's underlay; logs the first refusal of each. */
  private reachable(host: HostRecord): boolean {
    if (!this.ownVtep || sameUnderlayFamily(this.ownVtep, host.vtep)) return true;
    if (this.mixed.get(host.name) !== host.vtep) {
      this.mixed.set(host.name, host.vtep);
      this.logger.error('host refused: its VTEP is on the other underlay family (mixed IPv4/IPv6 underlays are not supported); its containers are not programmed', {
        host: host.name,
        vtep: host.vtep,
        ownVtep: this.ownVtep,
      });
    }
    return false;
  }

  /** Hosts registered with a `settled` revision this view has not reached yet, kept out of `hosts`. */
  private readonly unsettled = new Map<string, { host: HostRecord; timer: NodeJS.Timeout }>();
  /**
   * Per watched network key: the store revision its endpoint watch has shown this view up to.
   * Only the networks with a local overlay are watched (PeerSync opens one watch per network).
   */
  private readonly revisions = new Map<string, number>();

  /** After endpoint changes: hosts whose start-up withdrawals are now in view become peers. True if any did. */
  promoteSettled(): boolean {
    let any = false;
    for (const [name, w] of this.unsettled) {
      if (this.reached(w.host)) any = this.promote(name) || any;
    }
    return any;
  }

  /**
   * Whether every start-up withdrawal of `host` that matters here is in view: per network when
   * the host says where it withdrew (settledIn), otherwise (an older host) in every watched
   * network. A network watched later starts from a read made after the host record was seen,
   * which already holds the withdrawals.
   */
  private reached(host: HostRecord): boolean {
    if (host.settledIn) {
      for (const [networkKey, revision] of Object.entries(host.settledIn)) {
        const seen = this.revisions.get(networkKey);
        if (seen !== undefined && seen < revision) return false;
      }
      return true;
    }
    if (host.settled === undefined) return true;
    for (const seen of this.revisions.values()) if (seen < host.settled) return false;
    return true;
  }

  /** A host record seen in the hosts watch: a peer now, or once its start-up withdrawals are in view. */
  private admit(name: string, host: HostRecord): void {
    const waiting = this.unsettled.get(name);
    if (name !== this.self && !this.reached(host)) {
      if (waiting) {
        waiting.host = host;
        return;
      }
      this.hosts.delete(name);
      // Should the withdrawn record have been rewritten in a way this view never shows, the host
      // must not stay out for good.
      const timer = setTimeout(() => {
        if (this.promote(name)) this.onLateHost?.();
      }, SETTLE_WAIT_MS);
      timer.unref();
      this.unsettled.set(name, { host, timer });
      return;
    }
    if (waiting) {
      clearTimeout(waiting.timer);
      this.unsettled.delete(name);
    }
    this.hosts.set(name, host);
  }

  private promote(name: string): boolean {
    const w = this.unsettled.get(name);
    if (!w) return false;
    clearTimeout(w.timer);
    this.unsettled.delete(name);
    this.hosts.set(name, w.host);
    this.forgetDerived();
    this.liveChanged();
    return true;
  }

  private dropUnsettled(name: string): void {
    const w = this.unsettled.get(name);
    if (!w) return;
    clearTimeout(w.timer);
    this.unsettled.delete(name);
  }

  /** Peers the store wants programmed in a network's namespace. */
  desiredPeers(networkKey: string): Peer[] {
    const peers = desiredPeersOf(this.endpoints.get(networkKey)?.values() ?? [], this.hosts, this.self, this.ownVtep);
    if (this.ownVtep) for (const h of this.hosts.values()) this.reachable(h);
    return peers;
  }

  /** The same peers by id, maintained incrementally (do not modify; it changes with the store). */
  desiredSet(networkKey: string): ReadonlyMap<string, Peer> {
    let set = this.desired.get(networkKey);
    if (!set) {
      set = new DesiredPeers();
      for (const p of this.desiredPeers(networkKey)) set.add(p);
      this.desired.set(networkKey, set);
    }
    return set.peers;
  }

  /**
   * The desired set (as desiredSet) and the peer ids that came into or left it since the last
   * call for this set: a consumer that diffed against this same set object last time needs to
   * look at those ids only. A new set object (built after a host change or a reset) means
   * anything may differ.
   */
  desiredChanges(networkKey: string): { set: ReadonlyMap<string, Peer>; changed: ReadonlySet<string> } {
    const set = this.desiredSet(networkKey);
    return { set, changed: this.desired.get(networkKey)!.takeChanged() };
  }

  /** Desired peers of a network, indexed by IP and MAC (cached until the next store change). */
  peerIndex(networkKey: string): PeerIndex {
    let index = this.indexes.get(networkKey);
    if (!index) {
      index = indexPeers(this.desiredPeers(networkKey));
      this.indexes.set(networkKey, index);
    }
    return index;
  }

  /** A network's endpoint watch delivered its full state, current at `revision`. */
  resetEndpoints(networkKey: string, entries: KVEntry[], revision: number): void {
    let at = revision;
    for (const e of entries) if (e.revision > at) at = e.revision;
    this.revisions.set(networkKey, at);
    this.endpoints.delete(networkKey);
    this.desired.delete(networkKey);
    this.indexes.delete(networkKey);
    for (const e of entries) {
      if (keys.parseEndpoint(e.key)?.networkKey !== networkKey) continue;
      const ep = this.decode('endpoint', () => decodeRecord(peerEndpointSchema, e.value, e.key));
      if (ep) this.setEndpoint(e.key, ep);
    }
    this.endpointChanged(networkKey);
  }

  /** The network has no local overlay any more: its endpoints are no longer followed. */
  forgetNetwork(networkKey: string): void {
    this.revisions.delete(networkKey);
    this.endpoints.delete(networkKey);
    this.desired.delete(networkKey);
    this.indexes.delete(networkKey);
    this.endpointChanged(networkKey);
  }

  /** Whether the network's endpoint watch has delivered a full state (its peers are known). */
  knows(networkKey: string): boolean {
    return this.revisions.has(networkKey);
  }

  /** The host watch delivered the full state. */
  resetHosts(entries: KVEntry[]): void {
    const before = new Map(this.hosts);
    const live = this.liveSnapshot();
    const seen = new Set<string>();
    this.hosts.clear();
    this.forgetDerived();
    for (const e of entries) {
      const host = this.decode('host', () => decodeRecord(hostRecordSchema, e.value, e.key));
      if (!host) continue;
      seen.add(host.name);
      this.admit(host.name, host);
      this.liveness?.cleared(host.name);
    }
    for (const name of [...this.unsettled.keys()]) if (!seen.has(name)) this.dropUnsettled(name);
    // A full state after a reconnect: hosts missing from it went while we were not listening.
    for (const [name, host] of before) {
      if (!seen.has(name)) this.hostWent(name, host);
    }
    this.liveChangedSince(live);
  }

  /** Endpoint changes; returns the network keys they touched. */
  endpointEvents(events: WatchEvent[]): Set<string> {
    const touched = new Set<string>();
    for (const ev of events) {
      const parsed = keys.parseEndpoint(ev.key);
      const networkKey = parsed?.networkKey;
      // Not followed (any more): a late delivery of a watch being closed.
      if (networkKey === undefined || !this.revisions.has(networkKey)) continue;
      if (ev.revision > this.revisions.get(networkKey)!) this.revisions.set(networkKey, ev.revision);
      if (!touched.has(networkKey)) {
        touched.add(networkKey);
        this.indexes.delete(networkKey);
      }
      const changed =
        ev.type === 'delete'
          ? this.setEndpoint(ev.key, undefined)
          : this.setEndpoint(ev.key, this.decode('endpoint', () => decodeRecord(peerEndpointSchema, ev.value, ev.key)));
      if (changed && this.endpointListeners.size > 0) this.endpointChanged(networkKey, parsed!.endpointId);
    }
    return touched;
  }

  /** Hosts came or went (a VTEP may have changed): every network's desired peers may differ. */
  hostEvents(events: WatchEvent[]): void {
    this.forgetDerived();
    const live = this.liveSnapshot();
    for (const ev of events) {
      const name = keys.hostOf(ev.key);
      if (name === undefined) continue;
      if (ev.type === 'delete') {
        this.dropUnsettled(name);
        const host = this.hosts.get(name);
        if (host) this.hostWent(name, host);
      } else {
        const host = this.decode('host', () => decodeRecord(hostRecordSchema, ev.value, ev.key));
        if (host) {
          this.admit(name, host);
          this.liveness?.cleared(name);
        }
      }
    }
    this.liveChangedSince(live);
  }

  /** The host's probes went unanswered after its registration expired: withdraw it. True if it was still held. */
  hostDead(name: string): boolean {
    if (!this.hosts.delete(name)) return false;
    this.forgetDerived();
    this.liveChanged();
    return true;
  }

  /**
   * Its registration is gone: a host that only lost the store is kept while it answers on the
   * underlay (HostLiveness calls hostDead when it stops); without liveness checks it goes now.
   */
  private hostWent(name: string, host: HostRecord): void {
    if (this.liveness && name !== this.self) {
      this.hosts.set(name, host);
      this.liveness.suspect(host);
      return;
    }
    this.hosts.delete(name);
    this.logger.info('host gone', { host: name });
  }

  private forgetDerived(): void {
    this.desired.clear();
    this.indexes.clear();
  }

  private decode<T>(schemaName: string, decode: () => T): T | undefined {
    try {
      return decode();
    } catch (err) {
      this.logger.warn(`ignoring malformed ${schemaName} record`, { error: errorMessage(err) });
      return undefined;
    }
  }

  /** The host record's copy of a host name when there is one: one string per host, not per endpoint. */
  private hostName(name: string): string {
    if (name === this.self) return this.self;
    const known = this.hosts.get(name)?.name;
    return known === name ? known : name;
  }

  /** The peer an endpoint is while its host is live (never one of this host's own). */
  private peerOf(ep: PeerEndpoint): Peer | undefined {
    if (ep.host === this.self) return undefined;
    const host = this.hosts.get(ep.host);
    return host && this.reachable(host) ? peerAt(ep, host.vtep) : undefined;
  }

  /**
   * Records (or, with undefined, forgets) one endpoint, and updates its network's desired set if
   * built. True when what a name resolves to changed: a joined endpoint came, went, or changed
   * its address or host.
   */
  private setEndpoint(key: string, ep: PeerEndpoint | undefined): boolean {
    const networkKey = keys.parseEndpoint(key)?.networkKey ?? '';
    const kept: PeerEndpoint | undefined = ep?.joined
      ? { ip: ep.ip, ...(ep.ip6 ? { ip6: ep.ip6 } : {}), mac: ep.mac, host: this.hostName(ep.host), joined: true }
      : undefined;
    let records = this.endpoints.get(networkKey);
    const old = records?.get(key);
    if (kept) {
      if (!records) this.endpoints.set(networkKey, (records = new Map()));
      records.set(key, kept);
    } else if (records?.delete(key) && records.size === 0) {
      this.endpoints.delete(networkKey);
    }
    const desired = this.desired.get(networkKey);
    if (desired) {
      // Hosts are unchanged since the set was built (a host change drops it): same VTEPs as then.
      const before = old && this.peerOf(old);
      const after = kept && this.peerOf(kept);
      if (before) desired.remove(before);
      if (after) desired.add(after);
    }
    return old === undefined || kept === undefined ? old !== kept : old.ip !== kept.ip || old.ip6 !== kept.ip6 || old.host !== kept.host;
  }
}
