/**
 * The kernel side of the driver: one network namespace per overlay network holding br0 (the
 * gateway address) and vxlan0 (its UDP socket in the plugin's namespace), a veth pair per local
 * endpoint, and the remote containers as neighbour/FDB entries.
 *
 * The dataplane keeps no state the kernel and the netns directory do not also hold: after a
 * restart everything is found again by name. What is cached (namespace descriptors, netlink
 * sockets, device indexes) is only a shortcut and is re-read when missing.
 *
 * This class is the driver's one entry point; each job has its own file: the overlay's
 * namespace, br0 and vxlan0 in overlay-builder.ts, endpoints' veth pairs in endpoint-ports.ts,
 * peer entries in peers.ts, the namespace handles and per-network order in overlay-namespaces.ts.
 */
import * as path from 'node:path';
import type { Logger } from '../log';
import type { AttachedEndpoint, EndpointAttachment, OrphanReport, OverlayInfo, OverlaySpec, Peer } from './types';
import type { LinkInfo } from './encode';
import { EndpointPorts } from './endpoint-ports';
import { NlMessage, NlSocket, RTNLGRP_NEIGH } from './nlsock';
import { deleteNetns, isNetnsMounted, withNetns } from './netns';
import { type OverlayListing, OverlayNamespaces, networkPrefix, vethNames } from './overlay-namespaces';
import { OverlayBuilder } from './overlay-builder';
import { HOST_VETH_NAME, PORT_VETH_NAME, VXLAN_NAME } from './overlay-check';
import { deleteLink, listAllAddresses, listLinks } from './links';
import {
  FdbEntry,
  Miss,
  NeighbourEntry,
  PeerChangeResult,
  applyPeerDiff,
  listFdb,
  listNeighbours,
  listPeers as kernelPeers,
  parseMiss,
  setPeers as kernelSetPeers,
} from './peers';

export { BRIDGE_NAME, VXLAN_NAME } from './overlay-check';
export const DEFAULT_NETNS_DIR = '/run/tsoverlay/netns';
export { type OverlayListing, networkPrefix, vethNames } from './overlay-namespaces';

export interface DataplaneOptions {
  netnsDir: string;
  logger: Logger;
}
/** A network's namespace as `tsoverlay inspect` shows it (read-only; see inspectOverlay). */
export interface OverlayView {
  netnsPath: string;
  epoch: number;
  /** Every device in the namespace (lo, br0, vxlan0, the veth bridge ports). */
  links: LinkInfo[];
  addresses: { index: number; ip: string; prefix: number }[];
  /** vxlan0's IPv4 and IPv6 neighbour tables (`ip neigh show dev vxlan0`, `ip -6 …`); empty without vxlan0. */
  neighbours: NeighbourEntry[];
  /** vxlan0's FDB, its own and its bridge's entries (`bridge fdb show dev vxlan0`). */
  fdb: FdbEntry[];
}

export class Dataplane {
  private readonly ns: OverlayNamespaces;
  private readonly log: Logger;
  private readonly overlays: OverlayBuilder;
  private readonly ports: EndpointPorts;

  constructor(opts: DataplaneOptions) {
    this.ns = new OverlayNamespaces(opts.netnsDir);
    this.log = opts.logger;
    this.overlays = new OverlayBuilder(this.ns, this.log);
    this.ports = new EndpointPorts(this.ns, this.log);
  }

  // ------------------------------------------------------------ overlays

  /**
   * The network's namespace with br0 (gateway address, MTU, up), vxlan0 (VNI, port 4789, mode
   * options, enslaved, up) and lo up. Reuses whatever already matches; on failure undoes what this
   * call created (the whole namespace if it made it).
   */
  async ensureOverlay(spec: OverlaySpec): Promise<OverlayInfo> {
    return (await this.overlays.ensure(spec)).info;
  }

  /**
   * ensureOverlay for the periodic drift repair: whether anything had to be created or fixed
   * (the namespace, br0, vxlan0, a port's master), so that the caller re-programs the peers.
   */
  async repairOverlay(spec: OverlaySpec): Promise<boolean> {
    return (await this.overlays.ensure(spec)).changed;
  }

  /** Removes the network's namespace (every epoch of it) and its devices; nothing there is fine. */
  removeOverlay(networkId: string): Promise<void> {
    return this.overlays.remove(networkId);
  }

  /** The live namespace file of a network (highest epoch if several), found in the netns directory. */
  findOverlay(networkId: string): OverlayInfo | undefined {
    return this.ns.findOverlay(networkId);
  }

  listOverlays(): OverlayListing[] {
    return this.ns.listOverlays();
  }

  // ------------------------------------------------------------ endpoints

  /**
   * The endpoint's veth pair: `vc…` in the plugin's namespace (MAC, MTU; Docker moves it into the
   * container) and `ve…` in the overlay namespace as a br0 port, up. A pair that already exists is
   * kept (and corrected); a host end already moved away by Docker is fine; a broken pair is rebuilt.
   */
  attachEndpoint(a: EndpointAttachment): Promise<AttachedEndpoint> {
    return this.ports.attach(a);
  }

  /** Deletes the endpoint's pair through whichever end still exists; none is fine. */
  detachEndpoint(networkId: string, endpointId: string): Promise<void> {
    return this.ports.detach(networkId, endpointId);
  }

  /** How many veths are br0 ports in the network's namespace (0 if it has none). */
  countAttachedEndpoints(networkId: string): Promise<number> {
    return this.ports.count(networkId);
  }

  /** Names of the endpoint ports (`ve…`) in the network's namespace (empty if it has none). */
  bridgePorts(networkId: string): Promise<string[]> {
    return this.ports.names(networkId);
  }

  /**
   * Start-up sweep after a crash: removes every kernel object of ours that no endpoint or network
   * in `keep` accounts for — `vc…` veths left in the plugin's namespace (a crash between creating
   * a pair and Docker taking its end), `ve…` ports in overlay namespaces, the namespaces of
   * networks not in `keep.networkIds` (and older epochs of kept ones), and namespace files with
   * nothing mounted on them. Must run before requests are served (nothing is being built).
   */
  async removeOrphans(keep: { endpointIds: Iterable<string>; networkIds: Iterable<string> }): Promise<OrphanReport> {
    const keepHost = new Set<string>();
    const keepPorts = new Set<string>();
    for (const id of keep.endpointIds) {
      const n = vethNames(id);
      keepHost.add(n.srcName);
      keepPorts.add(n.bridgePortName);
    }
    const keepNets = new Set([...keep.networkIds].map(networkPrefix));
    const report: OrphanReport = { hostVeths: [], ports: [], namespaces: [] };
    const hostSock = this.ns.hostSocket();
    for (const l of await listLinks(hostSock)) {
      if (l.kind !== 'veth' || !HOST_VETH_NAME.test(l.name) || keepHost.has(l.name)) continue;
      await deleteLink(hostSock, l.index);
      report.hostVeths.push(l.name);
    }
    const newest = new Map<string, number>();
    for (const f of this.listOverlays()) {
      if (isNetnsMounted(f.netnsPath)) newest.set(f.networkIdPrefix, Math.max(newest.get(f.networkIdPrefix) ?? 0, f.epoch));
    }
    for (const f of this.listOverlays()) {
      const prefix = f.networkIdPrefix;
      if (!/^[A-Za-z0-9_.-]+$/.test(prefix)) continue; // not a file of ours
      await this.ns.serial(prefix, async () => {
        if (!isNetnsMounted(f.netnsPath)) {
          deleteNetns(f.netnsPath);
          report.namespaces.push(path.basename(f.netnsPath));
          return;
        }
        const cached = this.ns.cached(prefix);
        const o = cached && cached.netnsPath === f.netnsPath ? cached : this.ns.open(prefix, f.netnsPath, f.epoch);
        if (!keepNets.has(prefix) || newest.get(prefix) !== f.epoch) {
          await this.overlays.destroy(o);
          report.namespaces.push(path.basename(f.netnsPath));
          return;
        }
        for (const l of await listLinks(o.sock)) {
          if (l.kind !== 'veth' || !PORT_VETH_NAME.test(l.name) || keepPorts.has(l.name)) continue;
          await deleteLink(o.sock, l.index);
          report.ports.push(l.name);
        }
      });
    }
    return report;
  }

  // ------------------------------------------------------------ peers

  /** Removes `remove` then adds `add` (see peers.applyPeerDiff). */
  applyPeers(networkId: string, add: Peer[], remove: Peer[]): Promise<PeerChangeResult> {
    return this.ns.withVxlan(networkId, (o, vxlanIndex) => applyPeerDiff(o.sock, vxlanIndex, add, remove));
  }

  /** Makes the tables hold exactly `desired` (see peers.setPeers). */
  setPeers(networkId: string, desired: Peer[]): Promise<PeerChangeResult> {
    return this.ns.withVxlan(networkId, (o, vxlanIndex) => kernelSetPeers(o.sock, vxlanIndex, desired));
  }

  /** Remote containers as programmed: PERMANENT neighbours joined with their `self` FDB entries. */
  listPeers(networkId: string): Promise<Peer[]> {
    return this.ns.withOverlay(networkId, [], async (o) => kernelPeers(o.sock, await this.ns.indexOf(o, VXLAN_NAME)));
  }

  /** Devices, addresses and vxlan0's tables of a network's namespace; undefined when it has none. */
  inspectOverlay(networkId: string): Promise<OverlayView | undefined> {
    return this.ns.withOverlay<OverlayView | undefined>(networkId, undefined, async (o) => {
      const [links, addresses] = await Promise.all([listLinks(o.sock), listAllAddresses(o.sock)]);
      const vx = links.find((l) => l.name === VXLAN_NAME);
      const [neighbours, fdb] = vx ? await Promise.all([listNeighbours(o.sock, vx.index), listFdb(o.sock, vx.index)]) : [[], []];
      return { netnsPath: o.netnsPath, epoch: o.epoch, links, addresses, neighbours, fdb };
    });
  }

  /**
   * `miss` mode: calls `onMiss` for every L2/L3 miss vxlan0 reports in the network's namespace,
   * until the returned function is called (or the overlay is removed, or close()). The handler
   * answers by programming peers (applyPeers); the kernel asks again on the next packet, so a
   * miss lost to a receive-buffer overrun costs only a retry.
   */
  watchMisses(networkId: string, onMiss: (m: Miss) => void): Promise<() => void> {
    return this.ns.withVxlan(networkId, async (o, vxlanIndex) => {
      const sock = withNetns(o.nsFd, () => new NlSocket({ groups: [RTNLGRP_NEIGH] }));
      sock.on('notification', (m: NlMessage) => {
        const miss = parseMiss(m.type, m.data);
        if (!miss || miss.ifindex !== vxlanIndex) return;
        try {
          onMiss(miss);
        } catch (e) {
          this.log.error('miss handler failed', { network: networkId, error: (e as Error).message });
        }
      });
      sock.on('overrun', () => this.log.warn('miss notifications lost (receive buffer overrun)', { network: networkId }));
      o.watchers.add(sock);
      return () => {
        o.watchers.delete(sock);
        sock.close();
      };
    });
  }
  /** Closes sockets and descriptors. Namespaces and devices stay: they must outlive the process. */
  close(): void {
    this.ns.close();
  }
}
