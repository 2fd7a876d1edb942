/**
 * This host's one `endpoints/<network key>/` watch per network, and the one copy of what it
 * delivered (PeerView). Two readers share it: peer distribution follows the networks whose local
 * overlays program peers, the names view the networks whose names it serves (every local overlay,
 * whatever its mode). A network is watched while either follows it, so an endpoint event is
 * received, decoded and kept once however many readers it has.
 */
import type { Store, WatchEvent } from '../store/store';
import { NetworkWatches } from './peer-watches';
import type { PeerView } from './peer-view';
import type { PeerEndpoint } from './desired-peers';

/**
 * The joined endpoints (this host's own included) of the networks followed, as the names view
 * reads them. `follow` and `unfollow` are counted together with peer distribution's own.
 */
export interface JoinedEndpoints {
  /** One more reader of the network's endpoints: resolves once they are known, or after the follow wait. */
  follow(networkKey: string): Promise<void>;
  /** One reader fewer; the last one closes the watch and drops the network's endpoints. */
  unfollow(networkKey: string): void;
  /** A joined endpoint of a followed network, or undefined (unknown, left, or not followed). */
  joined(networkKey: string, endpointId: string): Readonly<PeerEndpoint> | undefined;
  /**
   * `listener` runs after a joined endpoint came, went or changed its address or host
   * (`endpointId`), or after a network's endpoints were replaced or dropped as a whole (none);
   * returns the unsubscribe.
   */
  onChange(listener: (networkKey: string, endpointId?: string) => void): () => void;
}

/** What peer distribution does beside keeping the view (programming, metrics, health). */
export interface EndpointFeedHooks {
  /** The network's full state is in the view (`reconnect`: not its first). */
  reset?(networkKey: string, reconnect: boolean): void;
  /** Events are in the view; `touched`: the networks they concerned. */
  events?(events: WatchEvent[], touched: Set<string>): void;
  error?(networkKey: string, err: Error): void;
  /** The network's last reader went: its watch is closed and its endpoints dropped. */
  released?(networkKey: string): void;
}

export class EndpointFeed implements JoinedEndpoints {
  private readonly watches: NetworkWatches;

  constructor(
    store: Store,
    private readonly view: PeerView,
    /** How long a follow waits for a new watch's first full state. */
    waitMs: number,
    private readonly hooks: EndpointFeedHooks = {},
  ) {
    this.watches = new NetworkWatches(store, waitMs, {
      reset: (networkKey, entries, revision, reconnect) => {
        view.resetEndpoints(networkKey, entries, revision);
        hooks.reset?.(networkKey, reconnect);
      },
      events: (_networkKey, events) => {
        const touched = view.endpointEvents(events);
        hooks.events?.(events, touched);
      },
      error: (networkKey, err) => hooks.error?.(networkKey, err),
    });
  }

  /** Some network's watch is in trouble. */
  get troubled(): boolean {
    return this.watches.troubled;
  }

  /** Whether the network's endpoints are watched (by any reader). */
  follows(networkKey: string): boolean {
    return this.watches.follows(networkKey);
  }

  /** As `follow`; true when this call opened the watch and its first full state came in time. */
  followNetwork(networkKey: string): Promise<boolean> {
    return this.watches.follow(networkKey);
  }

  async follow(networkKey: string): Promise<void> {
    await this.watches.follow(networkKey);
  }

  /** True when that was the last reader (the watch is closed, the network's endpoints dropped). */
  unfollow(networkKey: string): boolean {
    if (!this.watches.unfollow(networkKey)) return false;
    this.view.forgetNetwork(networkKey);
    this.hooks.released?.(networkKey);
    return true;
  }

  joined(networkKey: string, endpointId: string): Readonly<PeerEndpoint> | undefined {
    return this.view.joinedEndpoint(networkKey, endpointId);
  }

  onChange(listener: (networkKey: string, endpointId?: string) => void): () => void {
    return this.view.onEndpointChange(listener);
  }

  closeAll(): Promise<void> {
    return this.watches.closeAll();
  }
}
