import { randomUUID } from 'node:crypto';
import type { ProbeTarget } from '../dataplane/underlay-probe';
import type { Peer } from '../dataplane/types';
import type { Logger } from '../log';
import type { KVEntry, Watch, WatchEvent } from '../store/store';
import { KeyedMutex } from '../util/keyed-mutex';
import { sleepUnref } from '../util/retry';
import { HostLiveness, type LivenessOptions } from './host-liveness';
import { HostRegistration } from './host-registration';
import type { PeerSyncHooks } from './local-overlays';
import { PeerProgrammer, programsPeers, type PeerDataplane, type PeerProgrammingObserver, type ReconcileTrigger } from './peer-programmer';
import { PeerView, type LiveHosts } from './peer-view';
import { EndpointFeed, type JoinedEndpoints } from './endpoint-feed';
import type { RecordStore } from './record-store';
import { keys, type NetworkRecord } from './records';

export type WatchName = 'endpoints' | 'hosts';

/** What peer distribution reports as it works (the daemon's metrics implement it). */
export interface PeerSyncObserver extends PeerProgrammingObserver {
  /** A watch delivered the full state: on start (`reconnect` false) or after a reconnect/compaction. */
  watchReset(watch: WatchName, reconnect: boolean): void;
  watchError(watch: WatchName): void;
  /**
   * Events one watch delivery brought: endpoint events split by whether they concern a network
   * with local containers (the rest is work spent on networks this host does not use).
   */
  watchEvents?(watch: WatchName, used: number, unused: number): void;
}

export interface PeerSyncOptions {
  hostName: string;
  vtep: string;
  leaseTtlSeconds: number;
  /** Full kernel-vs-store comparison period, which also repairs hand-made drift. */
  reconcileIntervalMs: number;
  /** This machine's instance id; without one (library use, tests) an id for this process only. */
  instance?: string;
  /**
   * Checks over the underlay whether a host the store dropped is still there (see HostLiveness).
   * Without it a host is withdrawn as soon as its registration goes.
   */
  probe?: (target: ProbeTarget) => Promise<boolean>;
  liveness?: LivenessOptions;
}

/**
 * Peer distribution: the role Serf gossip played for Docker's classic overlay. This class follows
 * the store (registration, the host watch, one endpoint watch per network with a local overlay,
 * when the store's state is known); PeerProgrammer keeps the kernel tables equal to it.
 *
 * Desired state is the store: every joined endpoint of another live host on a network that
 * has local containers. The kernel tables are a projection of it, recomputed per network on
 * every watch event and fully compared against what the kernel really holds on (re)connect
 * and periodically. A host is live while its `hosts/<name>` key exists; that key hangs on the
 * host's lease, so a host that dies without a goodbye drops out when the lease expires and
 * all its peers are removed everywhere, even though its endpoint records are still there.
 *
 * Resolution modes: `static` programs every desired peer; `miss` programs only what the
 * kernel asks for (miss-responder.ts) and withdraws those entries when their peer leaves;
 * `p2p` and `multicast` rely on the VXLAN device's default destination and learning, so no
 * peer is programmed for them.
 */
export class PeerSync implements PeerSyncHooks {
  /** What the store wants (endpoints/ and hosts/ as the watches deliver them). */
  private readonly view: PeerView;
  private readonly programmer: PeerProgrammer;
  private readonly resets: Record<WatchName, number> = { endpoints: 0, hosts: 0 };
  private readonly watchTrouble: Partial<Record<WatchName, string>> = {};
  private hostWatch?: Watch;
  /**
   * One endpoint watch per network key with a local overlay here: followed for the networks
   * that program peers (static and miss modes) and by the names view (`endpoints`).
   */
  private readonly feed: EndpointFeed;
  /**
   * Joins on one network run side by side: a second one waits for the first's activation (its
   * watch and first reconcile), so that neither returns before the network's peers are programmed.
   */
  private readonly activations = new KeyedMutex();
  /**
   * The host watch has delivered a full state at least once (and each network waits for its own
   * endpoint watch). Before that the desired peer set is unknown, and reconciling against it
   * would wipe the kernel tables of overlays that survived a restart (running containers would
   * lose their remote peers until the store answered).
   */
  private synced = false;
  private readonly resetSeen = new Set<WatchName>();
  private markSynced: () => void = () => undefined;
  private readonly whenSynced = new Promise<void>((resolve) => (this.markSynced = resolve));
  private readonly registration: HostRegistration;
  private readonly liveness?: HostLiveness;

  constructor(
    private readonly records: RecordStore,
    dataplane: PeerDataplane,
    private readonly options: PeerSyncOptions,
    private readonly logger: Logger,
    private readonly observer?: PeerSyncObserver,
    registration?: HostRegistration,
  ) {
    this.registration = registration ?? new HostRegistration(records, { ...options, instance: options.instance ?? randomUUID() }, logger);
    const liveness = options.probe
      ? new HostLiveness(options.probe, (name) => {
          if (this.view.hostDead(name)) this.programmer.projectAll();
        }, logger, options.liveness)
      : undefined;
    this.liveness = liveness;
    this.view = new PeerView(options.hostName, logger, liveness, () => this.programmer.projectAll(), options.vtep);
    this.programmer = new PeerProgrammer(this.view, dataplane, () => this.synced, logger, observer);
    this.feed = new EndpointFeed(records.store, this.view, options.leaseTtlSeconds * 1000, {
      reset: (networkKey, reconnect) => {
        if (!this.feed.troubled) delete this.watchTrouble.endpoints;
        this.observer?.watchReset('endpoints', reconnect);
        if (this.view.promoteSettled()) this.programmer.projectAll();
        this.programmer.reconcileNetwork(networkKey, 'endpoint watch reset');
      },
      events: (events, touched) => {
        this.countEndpointEvents(events);
        if (this.view.promoteSettled()) {
          this.programmer.projectAll();
          return;
        }
        this.programmer.projectNetworks(touched);
      },
      error: (networkKey, err) => {
        this.watchErrorSeen('endpoints', err);
        this.logger.warn('endpoint watch trouble', { networkKey, error: err.message });
      },
      released: () => {
        if (!this.feed.troubled) delete this.watchTrouble.endpoints;
      },
    });
  }

  /** Store watches currently in trouble (empty when healthy), and hosts kept only because they answer probes, for /healthz. */
  health(): { watchTrouble: Partial<Record<WatchName, string>>; unregisteredPeers: string[] } {
    return { watchTrouble: { ...this.watchTrouble }, unregisteredPeers: this.liveness?.suspected() ?? [] };
  }

  /** Which hosts are alive for the data plane, as peers are programmed (the names view serves by it). */
  get liveHosts(): LiveHosts {
    return this.view;
  }

  /** The endpoints this host follows, for the names view: the same watch and records as the peers'. */
  get endpoints(): JoinedEndpoints {
    return this.feed;
  }

  /**
   * Registers this host (see HostRegistration), then follows `hosts/`. Endpoints are followed
   * per network, from its first local overlay (networkActive) to its release.
   */
  async start(): Promise<void> {
    await this.registration.start();
    this.hostWatch = this.follow('hosts', keys.hosts(), (entries) => {
      this.registration.noticeHosts(entries);
      this.view.resetHosts(entries);
      this.programmer.reconcileAll('host watch reset');
    }, (events) => {
      this.observer?.watchEvents?.('hosts', events.length, 0);
      this.registration.noticeHostEvents(events);
      this.view.hostEvents(events);
      this.programmer.projectAll();
    });
    this.programmer.startPeriodic(this.options.reconcileIntervalMs);
    const waitMs = Math.max(5_000, this.options.leaseTtlSeconds * 1000);
    const timedOut = await Promise.race([this.whenSynced.then(() => false), sleepUnref(waitMs).then(() => true)]);
    if (timedOut) this.logger.warn('store watches not synced yet: peers are programmed once they are', { waitedMs: waitMs });
  }

  /** Re-programs a network's peers against what the kernel holds (its devices were rebuilt, say). */
  resync(networkId: string, reason: ReconcileTrigger): Promise<void> {
    return this.programmer.resync(networkId, reason);
  }

  /**
   * `revokeLease` (default true) announces our departure at once (see HostRegistration.close).
   * The daemon stopping on SIGTERM passes false: that is a plugin restart (docker plugin
   * disable/enable, upgrade, systemctl restart) while the containers and their overlay
   * namespaces stay, and peers must keep reaching them.
   */
  async close(revokeLease = true): Promise<void> {
    this.programmer.close();
    this.liveness?.close();
    await Promise.all([this.hostWatch?.close(), this.feed.closeAll()]);
    await this.registration.close(revokeLease);
  }

  /** For Join: the network has a local container now, so its namespace wants every peer. */
  networkActive(networkId: string, network: NetworkRecord): Promise<void> {
    return this.activations.run(networkId, async () => {
      const already = this.programmer.activate(networkId, { networkKey: network.key, mode: network.mode });
      // p2p and multicast program no peers: their endpoints are not followed.
      let reconciling = false;
      if (programsPeers(network.mode) && already?.networkKey !== network.key) {
        if (already && programsPeers(already.mode)) this.unfollow(already.networkKey);
        reconciling = await this.feed.followNetwork(network.key);
      }
      if (network.mode === 'miss') await this.programmer.watchMisses(networkId);
      // The watch's first reset already queued this network's reconcile: wait for it, not a second one.
      if (reconciling) await this.programmer.queued(networkId);
      else if (!already) await this.programmer.reconcile(networkId, 'network active');
    });
  }

  networkInactive(networkId: string): Promise<void> {
    return this.activations.run(networkId, async () => {
      const net = this.programmer.deactivate(networkId);
      if (net && programsPeers(net.mode)) this.unfollow(net.networkKey);
    });
  }

  /** One local overlay of the network fewer: its endpoints go with the watch's last reader. */
  private unfollow(networkKey: string): void {
    this.feed.unfollow(networkKey);
  }

  /** Peers the store wants programmed in a network's namespace. */
  desiredPeers(networkKey: string): Peer[] {
    return this.view.desiredPeers(networkKey);
  }

  private countEndpointEvents(events: WatchEvent[]): void {
    if (!this.observer?.watchEvents) return;
    const used = this.programmer.networkKeys();
    let mine = 0;
    for (const ev of events) {
      const networkKey = keys.parseEndpoint(ev.key)?.networkKey;
      if (networkKey !== undefined && (used.has(networkKey) || this.feed.follows(networkKey))) mine++;
    }
    this.observer.watchEvents('endpoints', mine, events.length - mine);
  }

  /** A store watch whose resets and errors are reported under `watch`. */
  private follow(watch: WatchName, prefix: string, onReset: (entries: KVEntry[]) => void, onEvents: (events: WatchEvent[]) => void): Watch {
    return this.records.store.watch(prefix, {
      onReset: (entries) => {
        this.watchResetSeen(watch);
        this.noteReset(watch);
        onReset(entries);
      },
      onEvents,
      onError: (err) => {
        this.watchErrorSeen(watch, err);
        this.logger.warn(`${watch === 'hosts' ? 'host' : 'endpoint'} watch trouble`, { error: err.message });
      },
    });
  }

  private noteReset(watch: WatchName): void {
    this.resetSeen.add(watch);
    if (!this.synced && this.resetSeen.has('hosts')) {
      this.synced = true;
      this.markSynced();
    }
  }

  private watchResetSeen(watch: WatchName): void {
    delete this.watchTrouble[watch];
    this.observer?.watchReset(watch, this.resets[watch]++ > 0);
  }

  private watchErrorSeen(watch: WatchName, err: Error): void {
    this.watchTrouble[watch] = err.message;
    this.observer?.watchError(watch);
  }
}
