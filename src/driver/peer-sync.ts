import { randomUUID } from 'node:crypto';
import type { Miss } from '../dataplane/peers';
import type { ProbeTarget } from '../dataplane/underlay-probe';
import type { Peer } from '../dataplane/types';
import type { Logger } from '../log';
import type { KVEntry, Watch, WatchEvent } from '../store/store';
import { errorMessage } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { sleepUnref } from '../util/retry';
import { HostLiveness, type LivenessOptions } from './host-liveness';
import { HostRegistration } from './host-registration';
import type { PeerSyncHooks } from './local-overlays';
import { MissResponder, lookupMiss, missSubject, type MissOutcome } from './miss-responder';
import { PeerView, peerId } from './peer-view';
import { NetworkWatches } from './peer-watches';
import type { RecordStore } from './record-store';
import { keys, type NetworkRecord } from './records';

export { desiredPeersOf, type PeerEndpoint } from './peer-view';

/** What peer distribution needs from the kernel side. */
export interface PeerDataplane {
  applyPeers(networkId: string, add: Peer[], remove: Peer[]): Promise<unknown>;
  listPeers(networkId: string): Promise<Peer[]>;
  /** `miss` mode: L2/L3 miss notifications of the network's vxlan0 (absent: miss mode unsupported). */
  watchMisses?(networkId: string, onMiss: (m: Miss) => void): Promise<() => void>;
  /**
   * Makes the tables hold exactly `desired`, half entries included (a neighbour without its FDB
   * entry, an FDB entry added by hand), which listPeers cannot pair up. Used by reconcile when present.
   */
  setPeers?(networkId: string, desired: Peer[]): Promise<{ added: number; removed: number }>;
}

export type WatchName = 'endpoints' | 'hosts';

/** Why a network's peers are compared against the kernel (a metrics label, see src/metrics.ts). */
export type ReconcileTrigger = 'periodic' | 'endpoint watch reset' | 'host watch reset' | 'network active' | 'overlay repaired';

/** What peer distribution reports as it works (the daemon's metrics implement it). */
export interface PeerSyncObserver {
  /** Peers now programmed in a network's namespace (0 when it goes inactive). */
  peersProgrammed(networkId: string, count: number): void;
  peersChanged(added: number, removed: number): void;
  /** One kernel-vs-store comparison of one network; `repairs` = entries added or removed by it. */
  reconciled(trigger: ReconcileTrigger, repairs: number): void;
  /** A watch delivered the full state: on start (`reconnect` false) or after a reconnect/compaction. */
  watchReset(watch: WatchName, reconnect: boolean): void;
  watchError(watch: WatchName): void;
  miss(kind: Miss['kind'], outcome: MissOutcome): void;
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

interface ActiveNetwork {
  networkKey: string;
  mode: NetworkRecord['mode'];
}

/**
 * Peer distribution: the role Serf gossip played for Docker's classic overlay.
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
  private reconciling = false;
  private readonly active = new Map<string, ActiveNetwork>();
  /** What we believe is programmed per network id, so that events cost a diff, not a dump. */
  private readonly programmed = new Map<string, Map<string, Peer>>();
  private readonly locks = new KeyedMutex();
  private readonly misses?: MissResponder;
  private readonly resets: Record<WatchName, number> = { endpoints: 0, hosts: 0 };
  private readonly watchTrouble: Partial<Record<WatchName, string>> = {};
  private hostWatch?: Watch;
  /** One endpoint watch per network key with a local overlay here (static and miss modes). */
  private readonly networkWatches: NetworkWatches;
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
  private timer?: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly records: RecordStore,
    private readonly dataplane: PeerDataplane,
    private readonly options: PeerSyncOptions,
    private readonly logger: Logger,
    private readonly observer?: PeerSyncObserver,
    registration?: HostRegistration,
  ) {
    this.registration = registration ?? new HostRegistration(records, { ...options, instance: options.instance ?? randomUUID() }, logger);
    const liveness = options.probe
      ? new HostLiveness(options.probe, (name) => {
          if (this.view.hostDead(name)) this.projectAll();
        }, logger, options.liveness)
      : undefined;
    this.liveness = liveness;
    this.view = new PeerView(options.hostName, logger, liveness, () => this.projectAll(), options.vtep);
    this.networkWatches = new NetworkWatches(records.store, options.leaseTtlSeconds * 1000, {
      reset: (networkKey, entries, revision, reconnect) => {
        if (!this.networkWatches.troubled) delete this.watchTrouble.endpoints;
        this.observer?.watchReset('endpoints', reconnect);
        this.view.resetEndpoints(networkKey, entries, revision);
        if (this.view.promoteSettled()) this.projectAll();
        this.reconcileNetwork(networkKey, 'endpoint watch reset');
      },
      events: (_networkKey, events) => {
        this.countEndpointEvents(events);
        const touched = this.view.endpointEvents(events);
        if (this.view.promoteSettled()) {
          this.projectAll();
          return;
        }
        for (const [networkId, net] of this.active) {
          if (touched.has(net.networkKey)) void this.project(networkId);
        }
      },
      error: (networkKey, err) => {
        this.watchErrorSeen('endpoints', err);
        this.logger.warn('endpoint watch trouble', { networkKey, error: err.message });
      },
    });
    const dp = this.dataplane;
    if (dp.watchMisses) {
      const watchMisses = dp.watchMisses.bind(dp);
      this.misses = new MissResponder({ watchMisses }, (networkId, miss) => this.answerMiss(networkId, miss), logger);
    }
  }

  /** Store watches currently in trouble (empty when healthy), and hosts kept only because they answer probes, for /healthz. */
  health(): { watchTrouble: Partial<Record<WatchName, string>>; unregisteredPeers: string[] } {
    return { watchTrouble: { ...this.watchTrouble }, unregisteredPeers: this.liveness?.suspected() ?? [] };
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
      this.reconcileAll('host watch reset');
    }, (events) => {
      this.observer?.watchEvents?.('hosts', events.length, 0);
      this.registration.noticeHostEvents(events);
      this.view.hostEvents(events);
      this.projectAll();
    });
    this.timer = setInterval(() => void this.reconcileInTurn('periodic'), this.options.reconcileIntervalMs);
    this.timer.unref();
    const waitMs = Math.max(5_000, this.options.leaseTtlSeconds * 1000);
    const timedOut = await Promise.race([this.whenSynced.then(() => false), sleepUnref(waitMs).then(() => true)]);
    if (timedOut) this.logger.warn('store watches not synced yet: peers are programmed once they are', { waitedMs: waitMs });
  }

  /** Re-programs a network's peers against what the kernel holds (its devices were rebuilt, say). */
  async resync(networkId: string, reason: ReconcileTrigger): Promise<void> {
    this.programmed.delete(networkId);
    // A rebuilt vxlan0 has a new index: the miss listener (which filters on it) starts over.
    if (this.active.get(networkId)?.mode === 'miss') this.misses?.unwatch(networkId);
    await this.reconcile(networkId, reason);
  }

  /**
   * `revokeLease` (default true) announces our departure at once (see HostRegistration.close).
   * The daemon stopping on SIGTERM passes false: that is a plugin restart (docker plugin
   * disable/enable, upgrade, systemctl restart) while the containers and their overlay
   * namespaces stay, and peers must keep reaching them.
   */
  async close(revokeLease = true): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.misses?.close();
    this.liveness?.close();
    await Promise.all([this.hostWatch?.close(), this.networkWatches.closeAll()]);
    await this.registration.close(revokeLease);
  }

  /** For Join: the network has a local container now, so its namespace wants every peer. */
  async networkActive(networkId: string, network: NetworkRecord): Promise<void> {
    const already = this.active.get(networkId);
    this.active.set(networkId, { networkKey: network.key, mode: network.mode });
    // p2p and multicast program no peers: their endpoints are not followed.
    const followed = network.mode === 'static' || network.mode === 'miss';
    let reconciling = false;
    if (followed && already?.networkKey !== network.key) {
      if (already && (already.mode === 'static' || already.mode === 'miss')) this.unfollow(already.networkKey);
      reconciling = await this.networkWatches.follow(network.key);
    }
    if (network.mode === 'miss') {
      if (!this.misses) throw new Error('mode=miss needs a dataplane that reports vxlan misses');
      await this.misses.watch(networkId);
    }
    // The watch's first reset already queued this network's reconcile: wait for it, not a second one.
    if (reconciling) await this.locks.run(networkId, () => Promise.resolve());
    else if (!already) await this.reconcile(networkId, 'network active');
  }

  async networkInactive(networkId: string): Promise<void> {
    const net = this.active.get(networkId);
    this.active.delete(networkId);
    if (net && (net.mode === 'static' || net.mode === 'miss')) this.unfollow(net.networkKey);
    this.programmed.delete(networkId);
    this.misses?.unwatch(networkId);
    this.observer?.peersProgrammed(networkId, 0);
  }

  /** The last local overlay of the network went: its endpoints are no longer followed nor held. */
  private unfollow(networkKey: string): void {
    if (!this.networkWatches.unfollow(networkKey)) return;
    if (!this.networkWatches.troubled) delete this.watchTrouble.endpoints;
    this.view.forgetNetwork(networkKey);
  }

  /** Peers the store wants programmed in a network's namespace. */
  desiredPeers(networkKey: string): Peer[] {
    return this.view.desiredPeers(networkKey);
  }

  private countEndpointEvents(events: WatchEvent[]): void {
    if (!this.observer?.watchEvents) return;
    const used = new Set<string>();
    for (const net of this.active.values()) used.add(net.networkKey);
    let mine = 0;
    for (const ev of events) {
      const networkKey = keys.parseEndpoint(ev.key)?.networkKey;
      if (networkKey !== undefined && used.has(networkKey)) mine++;
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

  /**
   * `miss` mode: the kernel asks for one IP's MAC (L3) or one MAC's VTEP (L2). Both are answered
   * with the peer's neighbour + FDB pair, so an answered ARP needs no second round for the frame.
   */
  private answerMiss(networkId: string, miss: Miss): Promise<MissOutcome> {
    return this.locks.run(networkId, async () => {
      const net = this.active.get(networkId);
      if (!net || net.mode !== 'miss') return 'unknown';
      const peer = lookupMiss(this.view.peerIndex(net.networkKey), miss);
      if (!peer) {
        this.logger.debug('vxlan miss for an address the store does not know', { networkId, miss: missSubject(miss) });
        this.observer?.miss(miss.kind, 'unknown');
        return 'unknown';
      }
      const programmed = new Map(this.programmed.get(networkId) ?? []);
      // Whatever held the same IP or MAC before (a container that left) goes first.
      const replaced = [...programmed.values()].filter((p) => peerId(p) !== peerId(peer) && (sameAddress(p, peer) || p.mac === peer.mac));
      for (const p of replaced) programmed.delete(peerId(p));
      try {
        await this.dataplane.applyPeers(networkId, [peer], replaced);
      } catch (err) {
        this.observer?.miss(miss.kind, 'failed');
        throw err;
      }
      programmed.set(peerId(peer), peer);
      this.programmed.set(networkId, programmed);
      this.observer?.peersChanged(1, replaced.length);
      this.observer?.peersProgrammed(networkId, programmed.size);
      this.observer?.miss(miss.kind, 'answered');
      this.logger.debug('vxlan miss answered', { networkId, miss: missSubject(miss), ip: peer.ip, mac: peer.mac, vtep: peer.vtep });
      return 'answered';
    });
  }

  /**
   * What the kernel should hold for a network given what it holds (or what we programmed):
   * static mode wants every desired peer; miss mode keeps only entries asked for before that
   * the store still wants (updated when the peer moved), never adds unasked ones.
   */
  private target(net: ActiveNetwork, current: Iterable<Peer>): ReadonlyMap<string, Peer> | undefined {
    if (net.mode === 'static') return this.view.desiredSet(net.networkKey);
    if (net.mode !== 'miss') return undefined;
    const index = this.view.peerIndex(net.networkKey);
    const keep = new Map<string, Peer>();
    for (const p of current) {
      const now = (p.ip ? index.byIp.get(p.ip) : p.ip6 ? index.byIp.get(p.ip6) : undefined) ?? index.byMac.get(p.mac.toLowerCase());
      if (now) keep.set(peerId(now), now);
    }
    return keep;
  }

  private projectAll(): void {
    for (const networkId of this.active.keys()) void this.project(networkId);
  }

  private reconcileAll(reason: ReconcileTrigger): void {
    for (const networkId of this.active.keys()) void this.reconcile(networkId, reason);
  }

  private reconcileNetwork(networkKey: string, reason: ReconcileTrigger): void {
    for (const [networkId, net] of this.active) if (net.networkKey === networkKey) void this.reconcile(networkId, reason);
  }

  /**
   * The periodic comparison, one network after the other: each reads its namespace's whole
   * tables, and doing them all at once would hold every network's dump in memory together.
   * A round still running when the next is due is not doubled.
   */
  private async reconcileInTurn(reason: ReconcileTrigger): Promise<void> {
    if (this.reconciling) return;
    this.reconciling = true;
    try {
      for (const networkId of [...this.active.keys()]) {
        if (this.closed) return;
        await this.reconcile(networkId, reason).catch((err: unknown) => {
          this.logger.warn('reconciling peers failed; will retry on the next reconcile', { networkId, error: errorMessage(err) });
        });
      }
    } finally {
      this.reconciling = false;
    }
  }

  /** Event path: diff desired against what we programmed last. */
  private project(networkId: string): Promise<void> {
    return this.locks.run(networkId, async () => {
      const net = this.active.get(networkId);
      if (!net || !this.synced || !this.view.knows(net.networkKey)) return;
      const programmed = this.programmed.get(networkId) ?? new Map<string, Peer>();
      const target = this.target(net, programmed.values());
      if (target) await this.applyDiff(networkId, programmed, target);
    });
  }

  /** Resync path: diff desired against what the kernel actually holds (restarts, drift, reconnects). */
  private reconcile(networkId: string, reason: ReconcileTrigger): Promise<void> {
    return this.locks.run(networkId, async () => {
      const net = this.active.get(networkId);
      // Before the host watch and the network's endpoint watch have each delivered a full state
      // the desired set is unknown: reconciling would wipe tables that survived a restart.
      if (!net || !this.synced || (net.mode !== 'static' && net.mode !== 'miss') || !this.view.knows(net.networkKey)) return;
      if (net.mode === 'miss' && this.misses && !this.misses.watching(networkId)) {
        // The listener could not be started earlier (e.g. after a restart): try again.
        await this.misses.watch(networkId).catch((err: unknown) => {
          this.logger.warn('cannot listen for vxlan misses', { networkId, error: errorMessage(err) });
        });
      }
      // Static mode with setPeers (which reads the tables itself) needs no listing of its own.
      let actual: Peer[] = [];
      try {
        if (net.mode !== 'static' || !this.dataplane.setPeers) actual = await this.dataplane.listPeers(networkId);
      } catch (err) {
        this.logger.warn('cannot read peers from the kernel', { networkId, error: errorMessage(err) });
        return;
      }
      const target = this.target(net, actual) ?? new Map<string, Peer>();
      const changed = this.dataplane.setPeers
        ? await this.setExactly(networkId, target)
        : await this.applyDiff(networkId, new Map(actual.map((p) => [peerId(p), p])), target);
      this.observer?.reconciled(reason, changed);
      if (changed > 0) this.logger.info('peers reconciled', { networkId, reason, changed });
    });
  }

  /** Reconcile with the dataplane's setPeers: exact tables, stale half entries removed too. */
  private async setExactly(networkId: string, target: ReadonlyMap<string, Peer>): Promise<number> {
    // A copy: `target` may be the live desired set, which events change while setPeers runs.
    const want = new Map(target);
    try {
      const r = await this.dataplane.setPeers!(networkId, [...want.values()]);
      this.programmed.set(networkId, want);
      this.observer?.peersChanged(r.added, r.removed);
      this.observer?.peersProgrammed(networkId, want.size);
      return r.added + r.removed;
    } catch (err) {
      this.programmed.delete(networkId);
      this.logger.warn('reconciling peers failed; will retry on the next reconcile', { networkId, error: errorMessage(err) });
      return 0;
    }
  }

  /**
   * Programs the difference between `current` (what the kernel holds) and `want`, then updates
   * `current` in place to what was applied and keeps it as the network's programmed set. Only
   * the difference is allocated: an event costs two passes over the maps, not copies of them
   * (forEach, as `for (const [id, p] of map)` allocates an entry array per element).
   */
  private async applyDiff(networkId: string, current: Map<string, Peer>, want: ReadonlyMap<string, Peer>): Promise<number> {
    const [add, addIds] = notIn(want, current);
    const [remove, removeIds] = notIn(current, want);
    if (add.length === 0 && remove.length === 0) {
      this.programmed.set(networkId, current);
      this.observer?.peersProgrammed(networkId, current.size);
      return 0;
    }
    try {
      await this.dataplane.applyPeers(networkId, add, remove);
      // `want` may have changed meanwhile (its events queue their own diff): record what was applied.
      for (const id of removeIds) current.delete(id);
      addIds.forEach((id, i) => current.set(id, add[i]!));
      this.programmed.set(networkId, current);
      this.observer?.peersChanged(add.length, remove.length);
      this.observer?.peersProgrammed(networkId, current.size);
      this.logger.debug('peers applied', { networkId, added: add.length, removed: remove.length });
    } catch (err) {
      // Forget what we think is programmed: the next reconcile compares against the kernel itself.
      this.programmed.delete(networkId);
      this.logger.warn('applying peers failed; will retry on the next reconcile', { networkId, error: errorMessage(err) });
    }
    return add.length + remove.length;
  }
}

/** The peers of `from` that `other` lacks, and their ids (forEach: no entry array per element). */
function notIn(from: ReadonlyMap<string, Peer>, other: ReadonlyMap<string, Peer>): [Peer[], string[]] {
  const peers: Peer[] = [];
  const ids: string[] = [];
  from.forEach((p, id) => {
    if (other.has(id)) return;
    peers.push(p);
    ids.push(id);
  });
  return [peers, ids];
}

/** Two peers share an address of either family (an IPv6-only peer's IPv4 address is empty, never shared). */
function sameAddress(a: Peer, b: Peer): boolean {
  return (a.ip !== '' && a.ip === b.ip) || (a.ip6 !== undefined && a.ip6 === b.ip6);
}
