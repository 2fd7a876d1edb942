import type { Miss } from '../dataplane/peers';
import type { Peer } from '../dataplane/types';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { MissResponder, lookupMiss, missSubject, type MissOutcome } from './miss-responder';
import type { PeerView } from './peer-view';
import { peerId } from './desired-peers';
import type { NetworkRecord } from './records';

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

/** Why a network's peers are compared against the kernel (a metrics label, see src/metrics.ts). */
export type ReconcileTrigger = 'periodic' | 'endpoint watch reset' | 'host watch reset' | 'network active' | 'overlay repaired';

/** What the programming of peers reports as it works (part of PeerSyncObserver). */
export interface PeerProgrammingObserver {
  /** Peers now programmed in a network's namespace (0 when it goes inactive). */
  peersProgrammed(networkId: string, count: number): void;
  peersChanged(added: number, removed: number): void;
  /** One kernel-vs-store comparison of one network; `repairs` = entries added or removed by it. */
  reconciled(trigger: ReconcileTrigger, repairs: number): void;
  miss(kind: Miss['kind'], outcome: MissOutcome): void;
}

/** A network with a local overlay on this host, as peer programming needs it. */
export interface ActiveNetwork {
  networkKey: string;
  mode: NetworkRecord['mode'];
}

/** The modes whose peers are programmed from the store; p2p and multicast rely on the VXLAN device's flooding. */
export function programsPeers(mode: NetworkRecord['mode']): boolean {
  return mode === 'static' || mode === 'miss';
}

/**
 * The programming side of peer distribution: for each network with a local overlay, keeps the
 * kernel's neighbour and FDB tables equal to what the store's view wants. Events cost a diff
 * against what was last programmed (`project`); restarts, reconnects and the periodic round
 * compare against what the kernel really holds (`reconcile`). One network's work runs one at a
 * time. What the store wants, and when it is known, is PeerSync's business (the watches).
 */
export class PeerProgrammer {
  private readonly active = new Map<string, ActiveNetwork>();
  /** What we believe is programmed per network id, so that events cost a diff, not a dump. */
  private readonly programmed = new Map<string, Map<string, Peer>>();
  private readonly locks = new KeyedMutex();
  /**
   * Per network, the desired set its last projection diffed against. While it is the same
   * object, the ids it reports changed are all that can differ from what was programmed (the
   * programmed map changes only through this class), so an event costs its own peers, not a
   * pass over the network's thousands.
   */
  private readonly projectedFrom = new Map<string, ReadonlyMap<string, Peer>>();
  /** Per network, the projection waiting for its turn (see project). */
  private readonly projections = new Map<string, Promise<void>>();
  private readonly misses?: MissResponder;
  private reconciling = false;
  private timer?: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly view: PeerView,
    private readonly dataplane: PeerDataplane,
    /** Whether the store's state has been delivered at least once (before that, the desired set is unknown). */
    private readonly synced: () => boolean,
    private readonly logger: Logger,
    private readonly observer?: PeerProgrammingObserver,
  ) {
    const dp = this.dataplane;
    if (dp.watchMisses) {
      const watchMisses = dp.watchMisses.bind(dp);
      this.misses = new MissResponder({ watchMisses }, (networkId, miss) => this.answerMiss(networkId, miss), logger);
    }
  }

  /** Starts the periodic comparison, which also repairs hand-made drift. */
  startPeriodic(intervalMs: number): void {
    this.timer = setInterval(() => void this.reconcileInTurn('periodic'), intervalMs);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.misses?.close();
  }

  /** The network has a local overlay now; returns what it was active as before, if it was. */
  activate(networkId: string, net: ActiveNetwork): ActiveNetwork | undefined {
    const already = this.active.get(networkId);
    this.active.set(networkId, net);
    // Its mode may have changed (miss answers program outside any diff): the next projection is whole.
    this.projectedFrom.delete(networkId);
    return already;
  }

  /** The network's last local overlay went: nothing of it is programmed any more. */
  deactivate(networkId: string): ActiveNetwork | undefined {
    const net = this.active.get(networkId);
    this.active.delete(networkId);
    this.programmed.delete(networkId);
    this.projectedFrom.delete(networkId);
    this.misses?.unwatch(networkId);
    this.observer?.peersProgrammed(networkId, 0);
    return net;
  }

  /** `miss` mode: starts answering the kernel's misses in the network's namespace. */
  async watchMisses(networkId: string): Promise<void> {
    if (!this.misses) throw new Error('mode=miss needs a dataplane that reports vxlan misses');
    await this.misses.watch(networkId);
  }

  /** Resolves once the work queued for the network so far has run. */
  queued(networkId: string): Promise<void> {
    return this.locks.run(networkId, () => Promise.resolve());
  }

  /** Network keys with a local overlay here. */
  networkKeys(): Set<string> {
    const keys = new Set<string>();
    for (const net of this.active.values()) keys.add(net.networkKey);
    return keys;
  }

  /** Re-programs a network's peers against what the kernel holds (its devices were rebuilt, say). */
  async resync(networkId: string, reason: ReconcileTrigger): Promise<void> {
    this.programmed.delete(networkId);
    // A rebuilt vxlan0 has a new index: the miss listener (which filters on it) starts over.
    if (this.active.get(networkId)?.mode === 'miss') this.misses?.unwatch(networkId);
    await this.reconcile(networkId, reason);
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

  projectAll(): void {
    for (const networkId of this.active.keys()) void this.project(networkId);
  }

  /** The networks whose keys a watch delivery touched. */
  projectNetworks(networkKeys: ReadonlySet<string>): void {
    for (const [networkId, net] of this.active) {
      if (networkKeys.has(net.networkKey)) void this.project(networkId);
    }
  }

  reconcileAll(reason: ReconcileTrigger): void {
    for (const networkId of this.active.keys()) void this.reconcile(networkId, reason);
  }

  reconcileNetwork(networkKey: string, reason: ReconcileTrigger): void {
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

  /**
   * Event path: diff desired against what we programmed last. A projection waiting for its turn
   * covers every change made before it runs, so deliveries that arrive meanwhile join it instead
   * of queueing one diff and one netlink batch each: in a burst, each network costs one diff per
   * kernel round trip, not one per watch response.
   */
  private project(networkId: string): Promise<void> {
    const queued = this.projections.get(networkId);
    if (queued) return queued;
    let started = false;
    const projection = this.locks.run(networkId, async () => {
      started = true;
      this.projections.delete(networkId);
      const net = this.active.get(networkId);
      if (!net || !this.synced() || !this.view.knows(net.networkKey)) return;
      const programmed = this.programmed.get(networkId);
      if (net.mode === 'static') {
        const { set, changed } = this.view.desiredChanges(net.networkKey);
        const incremental = programmed !== undefined && this.projectedFrom.get(networkId) === set && this.soleUser(networkId, net.networkKey);
        this.projectedFrom.set(networkId, set);
        if (incremental) {
          await this.applyChanges(networkId, programmed, set, changed);
          return;
        }
      }
      const current = programmed ?? new Map<string, Peer>();
      const target = this.target(net, current.values());
      if (target) await this.applyDiff(networkId, current, target);
    });
    if (!started) this.projections.set(networkId, projection);
    return projection;
  }

  /** Resync path: diff desired against what the kernel actually holds (restarts, drift, reconnects). */
  reconcile(networkId: string, reason: ReconcileTrigger): Promise<void> {
    return this.locks.run(networkId, async () => {
      const net = this.active.get(networkId);
      // Before the host watch and the network's endpoint watch have each delivered a full state
      // the desired set is unknown: reconciling would wipe tables that survived a restart.
      if (!net || !this.synced() || !programsPeers(net.mode) || !this.view.knows(net.networkKey)) return;
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
   * Whether `networkId` is the only active network on `networkKey`: the desired set's change
   * list is taken by one projection, so two local networks on one key diff in full.
   */
  private soleUser(networkId: string, networkKey: string): boolean {
    for (const [id, net] of this.active) if (id !== networkId && net.networkKey === networkKey) return false;
    return true;
  }

  /** applyDiff restricted to the ids that changed in `want` since `current` was last brought in line with it. */
  private applyChanges(networkId: string, current: Map<string, Peer>, want: ReadonlyMap<string, Peer>, changed: ReadonlySet<string>): Promise<number> {
    const add: Peer[] = [];
    const addIds: string[] = [];
    const remove: Peer[] = [];
    const removeIds: string[] = [];
    for (const id of changed) {
      const wanted = want.get(id);
      const held = current.get(id);
      if (wanted && !held) {
        add.push(wanted);
        addIds.push(id);
      } else if (!wanted && held) {
        remove.push(held);
        removeIds.push(id);
      }
    }
    return this.applyLists(networkId, current, [add, addIds], [remove, removeIds]);
  }

  /**
   * Programs the difference between `current` (what the kernel holds) and `want`, then updates
   * `current` in place to what was applied and keeps it as the network's programmed set. Only
   * the difference is allocated: two passes over the maps, not copies of them (forEach, as
   * `for (const [id, p] of map)` allocates an entry array per element).
   */
  private applyDiff(networkId: string, current: Map<string, Peer>, want: ReadonlyMap<string, Peer>): Promise<number> {
    return this.applyLists(networkId, current, notIn(want, current), notIn(current, want));
  }

  private async applyLists(networkId: string, current: Map<string, Peer>, [add, addIds]: [Peer[], string[]], [remove, removeIds]: [Peer[], string[]]): Promise<number> {
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
