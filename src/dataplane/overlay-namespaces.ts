/**
 * The overlay namespaces of this host as the kernel and the netns directory hold them, and the
 * handles into them: one netlink socket and namespace descriptor per overlay, opened on first use
 * and re-opened when the namespace behind them went away. Operations on one network run one at a
 * time (`serial`); everything here is a cache that a restart rebuilds by reading the directory.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AttachedEndpoint, OverlayInfo } from './types';
import { NlSocket } from './nlsock';
import { isNetnsMounted, listNetns, openNetns, withNetns } from './netns';
import { linkIndex } from './links';
import { VXLAN_NAME } from './overlay-check';

export interface OverlayListing {
  networkIdPrefix: string;
  netnsPath: string;
  epoch: number;
}

/** Namespace file name prefix of a network: its first 10 characters, as in `<epoch>-<prefix>`. */
export function networkPrefix(networkId: string): string {
  if (typeof networkId !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(networkId)) {
    throw new Error(`invalid network id ${JSON.stringify(networkId)}`);
  }
  return networkId.slice(0, 10);
}

/** Deterministic veth names from the endpoint id: `vc…` (Join's SrcName) and `ve…` (br0 port). */
export function vethNames(endpointId: string): AttachedEndpoint {
  if (typeof endpointId !== 'string' || !/^[A-Za-z0-9_-]+$/.test(endpointId)) {
    throw new Error(`invalid endpoint id ${JSON.stringify(endpointId)}`);
  }
  const id = endpointId.slice(0, 11);
  return { srcName: `vc${id}`, bridgePortName: `ve${id}` };
}

const NETNS_NAME = /^([0-9]+)-(.+)$/;

export interface Overlay {
  prefix: string;
  netnsPath: string;
  epoch: number;
  nsFd: number;
  sock: NlSocket;
  watchers: Set<NlSocket>;
  /**
   * br0's index as last ensured. Interface indexes are not reused within a namespace, so a
   * stale one (br0 deleted by hand) fails the enslave instead of hitting another device.
   */
  bridgeIndex?: number;
  /**
   * vxlan0's index as last ensured, for the same reason: a stale one fails the peer update (the
   * device is gone), which forgets it, and the next update looks the device up again.
   */
  vxlanIndex?: number;
}
export class OverlayNamespaces {
  readonly netnsDir: string;
  private readonly overlays = new Map<string, Overlay>();
  private readonly epochs = new Map<string, number>();
  private readonly locks = new Map<string, Promise<void>>();
  private hostSocketCache: NlSocket | undefined;
  private closed = false;

  constructor(netnsDir: string) {
    this.netnsDir = path.resolve(netnsDir);
  }

  /** A netlink socket in the plugin's own namespace (the main thread is always back there between calls). */
  hostSocket(): NlSocket {
    if (this.closed) throw new Error('dataplane closed');
    if (!this.hostSocketCache || this.hostSocketCache.isClosed) this.hostSocketCache = new NlSocket();
    return this.hostSocketCache;
  }

  /** Runs `fn` after every earlier operation on the same network has settled. */
  serial<T>(networkId: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error('dataplane closed'));
    let key: string;
    try {
      key = networkPrefix(networkId);
    } catch (e) {
      return Promise.reject(e);
    }
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(key, tail);
    void tail.then(() => {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    });
    return run;
  }

  filesOf(prefix: string): OverlayListing[] {
    return this.listOverlays().filter((o) => o.networkIdPrefix === prefix);
  }

  open(prefix: string, netnsPath: string, epoch: number): Overlay {
    const nsFd = openNetns(netnsPath);
    try {
      const sock = withNetns(nsFd, () => new NlSocket());
      const o: Overlay = { prefix, netnsPath, epoch, nsFd, sock, watchers: new Set() };
      this.overlays.set(prefix, o);
      if (epoch > (this.epochs.get(prefix) ?? 0)) this.epochs.set(prefix, epoch);
      return o;
    } catch (e) {
      fs.closeSync(nsFd);
      throw e;
    }
  }

  drop(o: Overlay): void {
    if (this.overlays.get(o.prefix) === o) this.overlays.delete(o.prefix);
    for (const w of o.watchers) w.close();
    o.watchers.clear();
    o.sock.close();
    try {
      fs.closeSync(o.nsFd);
    } catch {
      // already closed
    }
  }

  /** The cached overlay, or the one found in the netns directory; undefined if none is live. */
  existing(networkId: string): Overlay | undefined {
    const prefix = networkPrefix(networkId);
    const cached = this.overlays.get(prefix);
    if (cached && isNetnsMounted(cached.netnsPath)) return cached;
    if (cached) this.drop(cached);
    const found = this.findOverlay(networkId);
    return found ? this.open(prefix, found.netnsPath, found.epoch) : undefined;
  }

  required(networkId: string): Overlay {
    const o = this.existing(networkId);
    if (!o) throw new Error(`no overlay namespace for network ${networkId}`);
    return o;
  }

  /** `fn` on the network's live overlay, in the network's turn; `none` when it has no namespace here. */
  withOverlay<T>(networkId: string, none: T, fn: (o: Overlay) => Promise<T>): Promise<T> {
    return this.serial(networkId, async () => {
      const o = this.existing(networkId);
      return o ? fn(o) : none;
    });
  }

  /**
   * `fn` with vxlan0's index in the network's overlay (which must exist), in the network's turn.
   * The index is kept between calls: each lookup is a netlink round trip, and every netlink
   * request waits for the kernel's rtnl lock with this process's only thread.
   */
  withVxlan<T>(networkId: string, fn: (o: Overlay, vxlanIndex: number) => Promise<T>): Promise<T> {
    return this.serial(networkId, async () => {
      const o = this.required(networkId);
      const index = o.vxlanIndex ?? (o.vxlanIndex = await this.indexOf(o, VXLAN_NAME));
      try {
        return await fn(o, index);
      } catch (e) {
        if (o.vxlanIndex === index) o.vxlanIndex = undefined;
        throw e;
      }
    });
  }

  /** A device's index, looked up now (one round trip): a device replaced behind our back is found again. */
  async indexOf(o: Overlay, name: string): Promise<number> {
    const index = await linkIndex(o.sock, name);
    if (index === undefined) throw new Error(`${name} missing in ${o.netnsPath}: ensureOverlay first`);
    return index;
  }

  /** The open overlay of a network prefix, if any (it may be stale: see existing()). */
  cached(prefix: string): Overlay | undefined {
    return this.overlays.get(prefix);
  }

  /** The highest epoch seen for a network prefix in this process (0 if none). */
  lastEpoch(prefix: string): number {
    return this.epochs.get(prefix) ?? 0;
  }

  /** The live namespace file of a network (highest epoch if several), found in the netns directory. */
  findOverlay(networkId: string): OverlayInfo | undefined {
    const live = this.filesOf(networkPrefix(networkId))
      .filter((f) => isNetnsMounted(f.netnsPath))
      .sort((a, b) => b.epoch - a.epoch)[0];
    return live ? { netnsPath: live.netnsPath, epoch: live.epoch } : undefined;
  }

  listOverlays(): OverlayListing[] {
    const out: OverlayListing[] = [];
    for (const name of listNetns(this.netnsDir)) {
      const m = NETNS_NAME.exec(name);
      if (m) out.push({ networkIdPrefix: m[2]!, netnsPath: path.join(this.netnsDir, name), epoch: Number(m[1]) });
    }
    return out;
  }

  /** Closes sockets and descriptors. Namespaces and devices stay: they must outlive the process. */
  close(): void {
    this.closed = true;
    for (const o of [...this.overlays.values()]) this.drop(o);
    this.hostSocketCache?.close();
    this.hostSocketCache = undefined;
  }
}
