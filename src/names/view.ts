/**
 * A host's view of the cluster's names, from the store: `names/<key>/` (who is called what) of
 * the networks this host has a local overlay on — the only networks whose names it serves, so it
 * follows no other network's records, as peer distribution does not — plus `networks/` (the
 * subnets, for reverse lookups). Which address a name has, and whether its container is up, it
 * reads from peer distribution's endpoints (JoinedEndpoints: one watch of `endpoints/<key>/` and
 * one copy of each endpoint for both). A name is served exactly while its endpoint would be
 * programmed as a peer: joined, on a host peer distribution holds live (LiveHosts: a host whose
 * store registration lapsed but that still answers underlay probes keeps its peers, and so its
 * names).
 */
import type { Addresses, ZoneView } from '../dns/types';
import type { JoinedEndpoints } from '../driver/endpoint-feed';
import type { LiveHosts } from '../driver/peer-view';
import type { PeerEndpoint } from '../driver/desired-peers';
import { NetworkWatches } from '../driver/peer-watches';
import { networkRecordSchema, keys, decodeRecord } from '../driver/records';
import { canonicalIp, contains, isIPv6, parseSubnet, type Subnet } from '../driver/subnet';
import type { Logger } from '../log';
import type { KVEntry, Store, Watch, WatchEvent } from '../store/store';
import { errorMessage } from '../util/errors';
import { dnsName, namesKeys, namesRecordSchema, parseNamesKey, type NamesRecord } from './records';

interface NetworkIndex {
  /** A dual-stack container's name gives both its addresses (A and AAAA). */
  byName: Map<string, { v4: string[]; v6: string[] }>;
  byAddress: Map<string, string[]>;
  /** The network's names as hosts know it: `<name>.<network>` is in the zone. */
  suffixes: Set<string>;
}

/** One served name, for `tsoverlay inspect` and the daemon's logs. */
export interface ServedName {
  networkKey: string;
  endpointId: string;
  host: string;
  container: string;
  ip: string;
  /** Dual-stack networks: the container's IPv6 address too. */
  ip6?: string;
  names: string[];
}

type Section = 'names' | 'networks';

export class NamesView {
  private readonly names = new Map<string, Map<string, NamesRecord>>();
  /** Each network's subnets (two on a dual-stack network): an unknown address inside one is NXDOMAIN. */
  private readonly subnets = new Map<string, Subnet[]>();
  private readonly indexes = new Map<string, NetworkIndex>();
  private readonly watches: Watch[] = [];
  /** `names/<key>/` of the networks with a local overlay, and no others. */
  private readonly namesWatches: NetworkWatches;
  /** Follows of each network's endpoints this view holds (given back on close). */
  private readonly endpointFollows = new Map<string, number>();
  private readonly zones = new Map<string, ZoneView>();
  /** Bumped on every change; the DNS servers' answer caches are keyed by it. */
  generation = 0;

  private unsubscribe: (() => void) | undefined;
  private unsubscribeEndpoints: (() => void) | undefined;

  constructor(
    private readonly store: Store,
    private readonly logger: Logger,
    /** Peer distribution's decision of which hosts are alive (see LiveHosts): never a second one. */
    private readonly liveHosts: LiveHosts,
    /** Peer distribution's endpoints of the followed networks (PeerSync.endpoints): never a second copy. */
    private readonly endpoints: JoinedEndpoints,
    /** How long following a network waits for its first full state. */
    followWaitMs = 10_000,
  ) {
    this.namesWatches = new NetworkWatches(
      store,
      followWaitMs,
      {
        reset: (networkKey, entries) => this.resetNames(networkKey, entries),
        events: (_networkKey, events) => this.apply('names', events),
        error: (networkKey, err) => this.logger.debug('names watch trouble', { section: 'names', networkKey, error: errorMessage(err) }),
      },
      namesKeys.network,
    );
    // Most endpoint changes concern no name held here (a network whose containers have none yet).
    this.unsubscribeEndpoints = endpoints.onChange((networkKey, endpointId) => {
      const names = this.names.get(networkKey);
      if (names && (endpointId === undefined || names.has(endpointId))) this.changed(networkKey);
    });
  }

  /**
   * A local overlay of the network came up: its names and endpoints are followed (a host serves
   * names only on networks it has containers on). Resolves once both delivered their state.
   */
  async follow(networkKey: string): Promise<void> {
    this.endpointFollows.set(networkKey, (this.endpointFollows.get(networkKey) ?? 0) + 1);
    await Promise.all([this.namesWatches.follow(networkKey), this.endpoints.follow(networkKey)]);
  }

  /** The network's last local overlay went: its names are dropped with their watch. */
  unfollow(networkKey: string): void {
    const follows = this.endpointFollows.get(networkKey);
    if (follows === undefined) return;
    if (follows > 1) this.endpointFollows.set(networkKey, follows - 1);
    else this.endpointFollows.delete(networkKey);
    this.endpoints.unfollow(networkKey);
    if (!this.namesWatches.unfollow(networkKey)) return;
    this.names.delete(networkKey);
    this.changed(networkKey);
  }

  /**
   * Follows host liveness and starts the cluster-wide `networks/` watch; resolves once that has
   * delivered its first full state.
   */
  async start(): Promise<void> {
    // Every answer may change with a host: the DNS servers' caches are keyed by the generation.
    this.unsubscribe ??= this.liveHosts.onChange(() => this.changed());
    this.changed();
    await new Promise<void>((resolve) => {
      this.watches.push(
        this.store.watch(keys.networks(), {
          onReset: (entries) => {
            this.reset(entries);
            resolve();
          },
          onEvents: (events) => this.apply('networks', events),
          onError: (err) => this.logger.debug('names watch trouble', { section: 'networks', error: errorMessage(err) }),
        }),
      );
    });
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    this.unsubscribeEndpoints?.();
    this.unsubscribeEndpoints = undefined;
    for (const [networkKey, follows] of this.endpointFollows) for (let i = 0; i < follows; i++) this.endpoints.unfollow(networkKey);
    this.endpointFollows.clear();
    await Promise.all([...this.watches.splice(0).map((w) => w.close().catch(() => undefined)), this.namesWatches.closeAll().catch(() => undefined)]);
  }

  /** The zone of one network (by store key), for its DNS server. Stable object per network. */
  zone(networkKey: string): ZoneView {
    let z = this.zones.get(networkKey);
    if (!z) {
      // eslint-disable-next-line @typescript-eslint/no-this-alias
      const view = this;
      z = {
        get generation() {
          return view.generation;
        },
        lookupName: (name) => this.lookupName(networkKey, name),
        lookupAddress: (ip) => this.lookupAddress(networkKey, ip),
      };
      this.zones.set(networkKey, z);
    }
    return z;
  }

  lookupName(networkKey: string, name: string): Addresses | null | undefined {
    const index = this.index(networkKey);
    const hit = index.byName.get(name);
    if (hit) return hit;
    if (!name.includes('.')) return null;
    for (const suffix of index.suffixes) {
      if (name.endsWith(`.${suffix}`)) {
        const short = name.slice(0, -suffix.length - 1);
        const found = index.byName.get(short);
        if (found) return found;
        if (!short.includes('.')) return null;
      }
    }
    return undefined;
  }

  lookupAddress(networkKey: string, ip: string): string[] | null | undefined {
    const index = this.index(networkKey);
    let address: string;
    try {
      address = canonicalIp(ip);
    } catch {
      return undefined;
    }
    const hit = index.byAddress.get(address);
    if (hit) return hit;
    if (this.subnets.get(networkKey)?.some((subnet) => contains(subnet, address))) return null;
    return undefined;
  }

  /** Every name served on a network (or all networks), for `tsoverlay inspect`. */
  served(networkKey?: string): ServedName[] {
    const out: ServedName[] = [];
    for (const [key, records] of this.names) {
      if (networkKey !== undefined && key !== networkKey) continue;
      for (const [endpointId, rec] of records) {
        const ep = this.endpoints.joined(key, endpointId);
        if (!ep || !this.live(ep)) continue;
        out.push({ networkKey: key, endpointId, host: rec.host, container: rec.container, ip: ep.ip, ...(ep.ip6 ? { ip6: ep.ip6 } : {}), names: rec.names });
      }
    }
    return out.sort((a, b) => a.networkKey.localeCompare(b.networkKey) || a.container.localeCompare(b.container));
  }

  private live(ep: Readonly<PeerEndpoint>): boolean {
    return ep.joined && this.liveHosts.isLive(ep.host);
  }

  private index(networkKey: string): NetworkIndex {
    let index = this.indexes.get(networkKey);
    if (index) return index;
    index = { byName: new Map(), byAddress: new Map(), suffixes: new Set() };
    for (const [endpointId, rec] of this.names.get(networkKey) ?? []) {
      const ep = this.endpoints.joined(networkKey, endpointId);
      const suffix = rec.networkName !== undefined ? dnsName(rec.networkName) : undefined;
      if (suffix) index.suffixes.add(suffix);
      if (!ep || !this.live(ep)) continue;
      // An IPv6-only container's IPv4 address is empty.
      const addresses = [ep.ip, ep.ip6].filter((a): a is string => Boolean(a));
      for (const raw of rec.names) {
        const n = dnsName(raw);
        if (!n) continue;
        const ips = index.byName.get(n) ?? { v4: [], v6: [] };
        for (const a of addresses) {
          const list = isIPv6(a) ? ips.v6 : ips.v4;
          if (!list.includes(a)) list.push(a);
        }
        index.byName.set(n, ips);
      }
      // The reverse name is the container's own, qualified by the network as Docker does.
      const primary = dnsName(rec.container);
      if (primary) {
        const ptr = suffix ? `${primary}.${suffix}` : primary;
        for (const a of addresses) {
          const list = index.byAddress.get(a) ?? [];
          if (!list.includes(ptr)) list.push(ptr);
          index.byAddress.set(a, list);
        }
      }
    }
    for (const ips of index.byName.values()) {
      ips.v4.sort();
      ips.v6.sort();
    }
    this.indexes.set(networkKey, index);
    return index;
  }

  private changed(networkKey?: string): void {
    this.generation++;
    if (networkKey === undefined) this.indexes.clear();
    else this.indexes.delete(networkKey);
  }

  /** A full state of `networks/` (names are per network: resetNames). */
  private reset(entries: KVEntry[]): void {
    this.subnets.clear();
    for (const e of entries) this.put('networks', e.key, e.value);
    this.changed();
  }

  /** One network's full state of names. */
  private resetNames(networkKey: string, entries: KVEntry[]): void {
    this.names.delete(networkKey);
    for (const e of entries) this.put('names', e.key, e.value);
    this.changed(networkKey);
  }

  private apply(section: Section, events: WatchEvent[]): void {
    for (const ev of events) {
      const networkKey = ev.type === 'put' ? this.put(section, ev.key, ev.value) : this.remove(section, ev.key);
      if (networkKey === null) this.changed();
      else if (networkKey !== undefined) this.changed(networkKey);
    }
  }

  /** Stores one record; returns the network it touched, null for all of them, undefined for none. */
  private put(section: Section, key: string, value: string): string | null | undefined {
    try {
      switch (section) {
        case 'names': {
          const k = parseNamesKey(key);
          if (!k) return undefined;
          const rec = decodeRecord(namesRecordSchema, value, key);
          mapOf(this.names, k.networkKey).set(k.endpointId, rec);
          return k.networkKey;
        }
        case 'networks': {
          const rec = decodeRecord(networkRecordSchema, value, key);
          this.subnets.set(rec.key, [rec.subnet, rec.subnet6].filter((x): x is string => Boolean(x)).map(parseSubnet));
          return rec.key;
        }
      }
    } catch (err) {
      // Another host's malformed record costs that record, not the view.
      this.logger.warn('names view: skipping a malformed record', { key, error: errorMessage(err) });
      return undefined;
    }
  }

  private remove(section: Section, key: string): string | null | undefined {
    switch (section) {
      case 'names': {
        const k = parseNamesKey(key);
        if (!k) return undefined;
        return this.names.get(k.networkKey)?.delete(k.endpointId) ? k.networkKey : undefined;
      }
      case 'networks': {
        const networkKey = key.slice(keys.networks().length);
        return this.subnets.delete(networkKey) ? networkKey : undefined;
      }
    }
  }
}

function mapOf<V>(outer: Map<string, Map<string, V>>, key: string): Map<string, V> {
  let inner = outer.get(key);
  if (!inner) {
    inner = new Map();
    outer.set(key, inner);
  }
  return inner;
}
