/**
 * Per-network watches: one `endpoints/<network key>/` watch (or another per-network prefix) per
 * network with a local overlay on this host, opened at the first overlay's activation and closed
 * with the last one's release, so that a host never receives the records of networks it does not
 * use. Endpoints are followed with it once for peer distribution and the names view together
 * (EndpointFeed), names by the names view.
 */

import type { KVEntry, Store, Watch, WatchEvent } from '../store/store';
import { sleepUnref } from '../util/retry';
import { keys } from './records';

/** What the follower does with what a network's watch delivers. */
export interface NetworkWatchHandlers {
  /** A full state of the network's endpoints, current at `revision` (`reconnect`: not its first). */
  reset(networkKey: string, entries: KVEntry[], revision: number, reconnect: boolean): void;
  events(networkKey: string, events: WatchEvent[]): void;
  error(networkKey: string, err: Error): void;
}

interface NetworkWatch {
  /** Local overlays (Docker network ids) of the network key. */
  refs: number;
  /** Full states delivered so far (a second one is a reconnect). */
  resets: number;
  ready: Promise<void>;
  watch: Watch;
}

export class NetworkWatches {
  private readonly open = new Map<string, NetworkWatch>();
  /** Network keys whose watch is in trouble (an error since its last full state). */
  private readonly trouble = new Set<string>();

  constructor(
    private readonly store: Store,
    /** How long `follow` waits for a new watch's first full state. */
    private readonly waitMs: number,
    private readonly handlers: NetworkWatchHandlers,
    /** The prefix followed for a network: its endpoints unless told otherwise (the names view's `names/<key>/`). */
    private readonly prefixOf: (networkKey: string) => string = keys.endpoints,
  ) {}

  /** Some network's endpoint watch is in trouble. */
  get troubled(): boolean {
    return this.trouble.size > 0;
  }

  /** Whether the network is followed. */
  follows(networkKey: string): boolean {
    return this.open.has(networkKey);
  }

  /**
   * One more local overlay of the network: its endpoints are followed. Resolves once the watch
   * delivered its first full state, or after `waitMs` (the reset is then handled when it comes);
   * true when this call opened the watch and its first reset came in time.
   */
  async follow(networkKey: string): Promise<boolean> {
    const followed = this.open.get(networkKey);
    if (followed) {
      followed.refs++;
      await Promise.race([followed.ready, sleepUnref(this.waitMs)]);
      return false;
    }
    let markReady: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (markReady = resolve));
    const current = () => this.open.get(networkKey) === entry;
    const entry: NetworkWatch = {
      refs: 1,
      resets: 0,
      ready,
      watch: this.store.watch(this.prefixOf(networkKey), {
        onReset: (entries, revision) => {
          if (!current()) return;
          this.trouble.delete(networkKey);
          this.handlers.reset(networkKey, entries, revision, entry.resets++ > 0);
          markReady();
        },
        onEvents: (events) => {
          if (current()) this.handlers.events(networkKey, events);
        },
        onError: (err) => {
          if (!current()) return;
          this.trouble.add(networkKey);
          this.handlers.error(networkKey, err);
        },
      }),
    };
    this.open.set(networkKey, entry);
    return Promise.race([ready.then(() => true), sleepUnref(this.waitMs).then(() => false)]);
  }

  /** One local overlay of the network fewer; true when it was the last (its watch is closed). */
  unfollow(networkKey: string): boolean {
    const followed = this.open.get(networkKey);
    if (!followed || --followed.refs > 0) return false;
    this.open.delete(networkKey);
    this.trouble.delete(networkKey);
    void followed.watch.close().catch(() => undefined);
    return true;
  }

  async closeAll(): Promise<void> {
    const watches = [...this.open.values()].map((n) => n.watch);
    this.open.clear();
    this.trouble.clear();
    await Promise.all(watches.map((w) => w.close()));
  }
}
