import type { Peer } from '../dataplane/types';
import type { Logger } from '../log';
import type { KVEntry, Lease, Watch, WatchEvent } from '../store/store';
import { errorMessage } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import type { RecordStore } from './record-store';
import { nowIso } from './record-store';
import {
  decodeRecord,
  endpointRecordSchema,
  hostRecordSchema,
  keys,
  type EndpointRecord,
  type HostRecord,
  type NetworkRecord,
} from './records';
import type { PeerSyncHooks } from './network-driver';

/** What peer distribution needs from the kernel side. */
export interface PeerDataplane {
  applyPeers(networkId: string, add: Peer[], remove: Peer[]): Promise<unknown>;
  listPeers(networkId: string): Promise<Peer[]>;
}

export interface PeerSyncOptions {
  hostName: string;
  vtep: string;
  leaseTtlSeconds: number;
  /** Full kernel-vs-store comparison period, which also repairs hand-made drift. */
  reconcileIntervalMs: number;
}

interface ActiveNetwork {
  networkKey: string;
  mode: NetworkRecord['mode'];
}

const peerId = (p: Peer) => `${p.ip}|${p.mac}|${p.vtep}`;

/**
 * Peer distribution: the role Serf gossip played for Docker's classic overlay.
 *
 * Desired state is the store: every joined endpoint of another live host on a network that
 * has local containers. The kernel tables are a projection of it, recomputed per network on
 * every watch event and fully compared against what the kernel really holds on (re)connect
 * and periodically. A host is live while its `hosts/<name>` key exists; that key hangs on the
 * host's lease, so a host that dies without a goodbye drops out when the lease expires and
 * all its peers are removed everywhere, even though its endpoint records are still there.
 */
export class PeerSync implements PeerSyncHooks {
  private readonly endpoints = new Map<string, EndpointRecord>();
  private readonly hosts = new Map<string, HostRecord>();
  private readonly active = new Map<string, ActiveNetwork>();
  /** What we believe is programmed per network id, so that events cost a diff, not a dump. */
  private readonly programmed = new Map<string, Map<string, Peer>>();
  private readonly locks = new KeyedMutex();
  private watches: Watch[] = [];
  private lease?: Lease;
  private timer?: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly records: RecordStore,
    private readonly dataplane: PeerDataplane,
    private readonly options: PeerSyncOptions,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await this.register();
    this.watches = [
      this.records.store.watch(keys.allEndpoints(), {
        onReset: (entries) => this.resetEndpoints(entries),
        onEvents: (events) => this.endpointEvents(events),
        onError: (err) => this.logger.warn('endpoint watch trouble', { error: err.message }),
      }),
      this.records.store.watch(keys.hosts(), {
        onReset: (entries) => this.resetHosts(entries),
        onEvents: (events) => this.hostEvents(events),
        onError: (err) => this.logger.warn('host watch trouble', { error: err.message }),
      }),
    ];
    this.timer = setInterval(() => this.reconcileAll('periodic'), this.options.reconcileIntervalMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await Promise.all(this.watches.map((w) => w.close()));
    // Revoking announces our departure at once; peers drop our containers' entries.
    await this.lease?.revoke().catch(() => undefined);
  }

  /** For Join: the network has a local container now, so its namespace wants every peer. */
  async networkActive(networkId: string, network: NetworkRecord): Promise<void> {
    const already = this.active.get(networkId);
    this.active.set(networkId, { networkKey: network.key, mode: network.mode });
    if (!already) await this.reconcile(networkId, 'network active');
  }

  async networkInactive(networkId: string): Promise<void> {
    this.active.delete(networkId);
    this.programmed.delete(networkId);
  }

  /** Peers the store wants programmed in a network's namespace. */
  desiredPeers(networkKey: string): Peer[] {
    const prefix = keys.endpoints(networkKey);
    const peers: Peer[] = [];
    for (const [key, ep] of this.endpoints) {
      if (!key.startsWith(prefix) || !ep.joined || ep.host === this.options.hostName) continue;
      const host = this.hosts.get(ep.host);
      if (!host) continue;
      peers.push({ ip: ep.ip, mac: ep.mac, vtep: host.vtep });
    }
    return peers;
  }

  private async register(): Promise<void> {
    const lease = await this.records.store.grantLease(this.options.leaseTtlSeconds);
    lease.onLost(() => {
      if (this.closed) return;
      this.logger.warn('store lease lost: registering this host again');
      this.register().catch((err) => this.logger.error('host registration failed', { error: errorMessage(err) }));
    });
    const record: HostRecord = { name: this.options.hostName, vtep: this.options.vtep, started: nowIso() };
    await this.records.put(keys.host(this.options.hostName), record, lease);
    this.lease = lease;
    this.logger.info('host registered', { host: record.name, vtep: record.vtep, ttl: lease.ttlSeconds });
  }

  private decode<T>(schemaName: string, decode: () => T): T | undefined {
    try {
      return decode();
    } catch (err) {
      this.logger.warn(`ignoring malformed ${schemaName} record`, { error: errorMessage(err) });
      return undefined;
    }
  }

  private resetEndpoints(entries: KVEntry[]): void {
    this.endpoints.clear();
    for (const e of entries) {
      const ep = this.decode('endpoint', () => decodeRecord(endpointRecordSchema, e.value, e.key));
      if (ep) this.endpoints.set(e.key, ep);
    }
    this.reconcileAll('endpoint watch reset');
  }

  private resetHosts(entries: KVEntry[]): void {
    this.hosts.clear();
    for (const e of entries) {
      const host = this.decode('host', () => decodeRecord(hostRecordSchema, e.value, e.key));
      if (host) this.hosts.set(host.name, host);
    }
    this.reconcileAll('host watch reset');
  }

  private endpointEvents(events: WatchEvent[]): void {
    const touched = new Set<string>();
    for (const ev of events) {
      const networkKey = ev.key.split('/')[1];
      if (networkKey) touched.add(networkKey);
      if (ev.type === 'delete') {
        this.endpoints.delete(ev.key);
      } else {
        const ep = this.decode('endpoint', () => decodeRecord(endpointRecordSchema, ev.value, ev.key));
        if (ep) this.endpoints.set(ev.key, ep);
        else this.endpoints.delete(ev.key);
      }
    }
    for (const [networkId, net] of this.active) {
      if (touched.has(net.networkKey)) void this.project(networkId);
    }
  }

  private hostEvents(events: WatchEvent[]): void {
    for (const ev of events) {
      const name = ev.key.slice(keys.hosts().length);
      if (ev.type === 'delete') {
        this.hosts.delete(name);
        this.logger.info('host gone', { host: name });
      } else {
        const host = this.decode('host', () => decodeRecord(hostRecordSchema, ev.value, ev.key));
        if (host) this.hosts.set(name, host);
      }
    }
    for (const networkId of this.active.keys()) void this.project(networkId);
  }

  private reconcileAll(reason: string): void {
    for (const networkId of this.active.keys()) void this.reconcile(networkId, reason);
  }

  /** Event path: diff desired against what we programmed last. */
  private project(networkId: string): Promise<void> {
    return this.locks.run(networkId, async () => {
      const net = this.active.get(networkId);
      if (!net || net.mode !== 'static') return;
      const programmed = this.programmed.get(networkId) ?? new Map<string, Peer>();
      await this.applyDiff(networkId, programmed, this.desiredPeers(net.networkKey));
    });
  }

  /** Resync path: diff desired against what the kernel actually holds (restarts, drift, reconnects). */
  private reconcile(networkId: string, reason: string): Promise<void> {
    return this.locks.run(networkId, async () => {
      const net = this.active.get(networkId);
      if (!net || net.mode !== 'static') return;
      let actual: Peer[];
      try {
        actual = await this.dataplane.listPeers(networkId);
      } catch (err) {
        this.logger.warn('cannot read peers from the kernel', { networkId, error: errorMessage(err) });
        return;
      }
      const kernel = new Map(actual.map((p) => [peerId(p), p]));
      const changed = await this.applyDiff(networkId, kernel, this.desiredPeers(net.networkKey));
      if (changed > 0) this.logger.info('peers reconciled', { networkId, reason, changed });
    });
  }

  private async applyDiff(networkId: string, current: Map<string, Peer>, desired: Peer[]): Promise<number> {
    const want = new Map(desired.map((p) => [peerId(p), p]));
    const add = [...want].filter(([id]) => !current.has(id)).map(([, p]) => p);
    const remove = [...current].filter(([id]) => !want.has(id)).map(([, p]) => p);
    if (add.length === 0 && remove.length === 0) {
      this.programmed.set(networkId, want);
      return 0;
    }
    try {
      await this.dataplane.applyPeers(networkId, add, remove);
      this.programmed.set(networkId, want);
      this.logger.debug('peers applied', { networkId, added: add.length, removed: remove.length });
    } catch (err) {
      // Forget what we think is programmed: the next reconcile compares against the kernel itself.
      this.programmed.delete(networkId);
      this.logger.warn('applying peers failed; will retry on the next reconcile', { networkId, error: errorMessage(err) });
    }
    return add.length + remove.length;
  }
}
