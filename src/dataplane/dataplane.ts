/**
 * The kernel side of the driver: one network namespace per overlay network holding br0 (the
 * gateway address) and vxlan0 (its UDP socket in the plugin's namespace), a veth pair per local
 * endpoint, and the remote containers as neighbour/FDB entries.
 *
 * The dataplane keeps no state the kernel and the netns directory do not also hold: after a
 * restart everything is found again by name. What is cached (namespace descriptors, netlink
 * sockets, device indexes) is only a shortcut and is re-read when missing.
 */
import * as path from 'node:path';
import type { Logger } from '../log';
import type { AttachedEndpoint, EndpointAttachment, OrphanReport, OverlayInfo, OverlaySpec, Peer } from './types';
import { LinkInfo, formatMac, parseUnicastMac } from './encode';
import { NlMessage, NlSocket, RTNLGRP_NEIGH, isNetlinkError } from './nlsock';
import { createNetns, deleteNetns, ensureNetnsDir, hostNetnsFd, isNetnsMounted, setIPv6Sysctls, withNetns } from './netns';
import { AF_INET, AF_INET6, formatIP, parseIP } from './encode';
import { type Overlay, type OverlayListing, OverlayNamespaces, networkPrefix, vethNames } from './overlay-namespaces';
import {
  BRIDGE_NAME,
  HOST_VETH_NAME,
  PORT_VETH_NAME,
  VXLAN_NAME,
  type VxlanSpec,
  deviceState,
  expectedVxlan,
  portDifferences,
  validateMtu,
  validateOverlayTarget,
} from './overlay-check';
import {
  createVeth,
  deleteLink,
  ensureAddress,
  ensureBridge,
  ensureLoopbackUp,
  ensureVxlan,
  getLink,
  listAllAddresses,
  listLinks,
  setLink,
} from './links';
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

/**
 * An IPv6 overlay's namespace: IPv6 on and router advertisements ignored (nothing on an overlay
 * may configure it). vxlan0 needs IPv6 state of its own: the kernel answers Neighbor Solicitations
 * from its neighbour table only on a device that has it (drivers/net/vxlan neigh_reduce).
 */
const IPV6_DEFAULTS = [
  ['all/disable_ipv6', '0'],
  ['default/disable_ipv6', '0'],
  ['all/accept_ra', '0'],
  ['default/accept_ra', '0'],
] as const;
/** br0 holds the gateway: no DAD (usable at once; the address is ours by allocation), no RAs. */
const IPV6_BRIDGE = [
  [`${BRIDGE_NAME}/disable_ipv6`, '0'],
  [`${BRIDGE_NAME}/accept_ra`, '0'],
  [`${BRIDGE_NAME}/accept_dad`, '0'],
] as const;

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

  constructor(opts: DataplaneOptions) {
    this.ns = new OverlayNamespaces(opts.netnsDir);
    this.log = opts.logger;
  }

  /** vxlan0 as overlay-check expects it, plus the multicast underlay device (found by the VTEP's address). */
  private async vxlanSpec(spec: OverlaySpec): Promise<VxlanSpec> {
    const v = expectedVxlan(spec);
    if (spec.mode === 'multicast' && spec.vtep) {
      const vtep = formatIP(parseIP(spec.vtep));
      const a = (await listAllAddresses(this.ns.hostSocket())).find((x) => x.ip === vtep);
      if (a) v.underlayIndex = a.index;
    }
    return v;
  }

  // ------------------------------------------------------------ overlays

  /**
   * The network's namespace with br0 (gateway address, MTU, up), vxlan0 (VNI, port 4789, mode
   * options, enslaved, up) and lo up. Reuses whatever already matches; on failure undoes what this
   * call created (the whole namespace if it made it).
   */
  async ensureOverlay(spec: OverlaySpec): Promise<OverlayInfo> {
    return (await this.ensure(spec)).info;
  }

  /**
   * ensureOverlay for the periodic drift repair: whether anything had to be created or fixed
   * (the namespace, br0, vxlan0, a port's master), so that the caller re-programs the peers.
   */
  async repairOverlay(spec: OverlaySpec): Promise<boolean> {
    return (await this.ensure(spec)).changed;
  }

  private ensure(spec: OverlaySpec): Promise<{ info: OverlayInfo; changed: boolean }> {
    return this.ns.serial(spec.networkId, async () => {
      validateOverlayTarget(spec);
      const vx = await this.vxlanSpec(spec);
      const prefix = networkPrefix(spec.networkId);
      const started = process.hrtime.bigint();

      let o = this.ns.existing(spec.networkId);
      let createdNs = false;
      if (!o) {
        ensureNetnsDir(this.ns.netnsDir);
        // A file left without a namespace (crash mid-create) is reused rather than leaked.
        const leftover = this.ns.filesOf(prefix).sort((a, b) => b.epoch - a.epoch)[0];
        const epoch = leftover?.epoch ?? this.ns.lastEpoch(prefix) + 1;
        const netnsPath = leftover?.netnsPath ?? path.join(this.ns.netnsDir, `${epoch}-${prefix}`);
        createdNs = createNetns(netnsPath);
        try {
          o = this.ns.open(prefix, netnsPath, epoch);
        } catch (e) {
          if (createdNs) deleteNetns(netnsPath);
          throw e;
        }
      }
      const created: LinkInfo[] = [];
      let repairedPorts = 0;
      try {
        await ensureLoopbackUp(o.sock);
        // IPv6 on, router advertisements ignored, before br0 and vxlan0 exist: they take the defaults.
        if (spec.gateway6Cidr) setIPv6Sysctls(o.nsFd, IPV6_DEFAULTS);
        const br = await ensureBridge(o.sock, BRIDGE_NAME, spec.mtu);
        o.bridgeIndex = br.link.index;
        if (br.created) created.push(br.link);
        if (spec.gateway6Cidr) setIPv6Sysctls(o.nsFd, IPV6_BRIDGE);
        await ensureAddress(o.sock, br.link.index, spec.gatewayCidr, AF_INET);
        await ensureAddress(o.sock, br.link.index, spec.gateway6Cidr, AF_INET6);
        const v = await ensureVxlan(this.ns.hostSocket(), o.sock, o.nsFd, vx, br.link.index);
        if (v.replaced) this.log.warn('replaced incompatible vxlan device', { network: spec.networkId, reason: v.replaced });
        if (v.created) created.push(v.link);
        // A br0 deleted (or a port released) by hand leaves the containers' ports without a master.
        if (!createdNs) repairedPorts = await this.reattachPorts(o, br.link.index);
      } catch (e) {
        this.log.error('ensureOverlay failed, rolling back', { network: spec.networkId, error: (e as Error).message });
        if (createdNs) {
          await this.destroy(o);
        } else {
          for (const l of created.reverse()) await deleteLink(o.sock, l.index).catch(() => undefined);
        }
        throw e;
      }
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      this.log[createdNs ? 'info' : 'debug']('overlay ready', {
        network: spec.networkId,
        netns: o.netnsPath,
        vni: spec.vni,
        mode: spec.mode,
        created: createdNs,
        ms: Math.round(ms * 10) / 10,
      });
      const changed = createdNs || created.length > 0 || repairedPorts > 0;
      if (changed && !createdNs) {
        this.log.warn('overlay repaired', { network: spec.networkId, recreated: created.map((l) => l.name), ports: repairedPorts });
      }
      return { info: { netnsPath: o.netnsPath, epoch: o.epoch }, changed };
    });
  }

  /** Enslaves to br0 (and brings up) every endpoint port in the namespace that lost its master. */
  private async reattachPorts(o: Overlay, brIndex: number): Promise<number> {
    let n = 0;
    const nameOf = (i: number): string | undefined => (i === brIndex ? BRIDGE_NAME : undefined);
    for (const l of await listLinks(o.sock)) {
      if (l.kind !== 'veth' || !PORT_VETH_NAME.test(l.name)) continue;
      const wrong = new Set(portDifferences(deviceState(l, nameOf), l.name).map((d) => d.field));
      if (wrong.has('master')) {
        await setLink(o.sock, l.index, { master: brIndex });
        n++;
      }
      if (wrong.has('up')) await setLink(o.sock, l.index, { up: true });
    }
    return n;
  }

  /** Deletes the devices in the namespace (so they are gone now, not when the kernel gets to it) and the namespace file. */
  private async destroy(o: Overlay): Promise<void> {
    try {
      const links = await listLinks(o.sock);
      // Bridge ports first, then vxlan0 and br0.
      const order = (l: LinkInfo): number => (l.kind === 'veth' ? 0 : l.name === BRIDGE_NAME ? 2 : 1);
      for (const l of links.filter((x) => x.name !== 'lo').sort((a, b) => order(a) - order(b))) {
        await deleteLink(o.sock, l.index);
      }
    } finally {
      this.ns.drop(o);
      deleteNetns(o.netnsPath);
    }
  }

  /** Removes the network's namespace (every epoch of it) and its devices; nothing there is fine. */
  removeOverlay(networkId: string): Promise<void> {
    return this.ns.serial(networkId, async () => {
      const prefix = networkPrefix(networkId);
      const cached = this.ns.cached(prefix);
      if (cached) await this.destroy(cached);
      for (const f of this.ns.filesOf(prefix)) {
        if (isNetnsMounted(f.netnsPath)) await this.destroy(this.ns.open(prefix, f.netnsPath, f.epoch));
        else deleteNetns(f.netnsPath);
      }
      this.log.info('overlay removed', { network: networkId });
    });
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
    return this.ns.serial(a.networkId, async () => {
      const names = vethNames(a.endpointId);
      const mac = parseUnicastMac(a.mac);
      validateMtu(a.mtu);
      const o = this.ns.required(a.networkId);
      const master = o.bridgeIndex ?? (await this.ns.indexOf(o, BRIDGE_NAME));
      const veth = { hostName: names.srcName, peerName: names.bridgePortName, mtu: a.mtu, mac, masterIndex: master };
      const create = async (): Promise<AttachedEndpoint> => {
        await createVeth(o.sock, hostNetnsFd(), veth);
        this.log.debug('endpoint attached', { network: a.networkId, endpoint: a.endpointId, ...names });
        return names;
      };
      // The common case first (nothing there yet); EEXIST means a retried Join or a leftover pair.
      try {
        return await create();
      } catch (e) {
        if (!isNetlinkError(e, 'EEXIST')) throw e;
      }
      const hostSock = this.ns.hostSocket();
      const peer = await getLink(o.sock, names.bridgePortName);
      const hostEnd = await getLink(hostSock, names.srcName);

      const paired =
        peer?.kind === 'veth' &&
        (!hostEnd || (hostEnd.kind === 'veth' && hostEnd.link === peer.index && peer.link === hostEnd.index));
      if (peer && paired) {
        if (hostEnd && (hostEnd.mac !== formatMac(mac) || hostEnd.mtu !== a.mtu)) {
          await setLink(hostSock, hostEnd.index, { mac, mtu: a.mtu });
        }
        if (peer.mtu !== a.mtu) await setLink(o.sock, peer.index, { mtu: a.mtu });
        const wrong = new Set(portDifferences(deviceState(peer, (i) => (i === master ? BRIDGE_NAME : undefined)), peer.name).map((d) => d.field));
        if (wrong.has('master')) await setLink(o.sock, peer.index, { master });
        if (wrong.has('up')) await setLink(o.sock, peer.index, { up: true });
        this.log.debug('endpoint already attached', { network: a.networkId, endpoint: a.endpointId, moved: !hostEnd });
        return names;
      }
      if (peer) await deleteLink(o.sock, peer.index);
      if (hostEnd) await deleteLink(hostSock, hostEnd.index);
      return create();
    });
  }

  /** Deletes the endpoint's pair through whichever end still exists; none is fine. */
  detachEndpoint(networkId: string, endpointId: string): Promise<void> {
    return this.ns.serial(networkId, async () => {
      const names = vethNames(endpointId);
      await deleteLink(this.ns.hostSocket(), names.srcName);
      const o = this.ns.existing(networkId);
      if (o) await deleteLink(o.sock, names.bridgePortName);
      this.log.debug('endpoint detached', { network: networkId, endpoint: endpointId });
    });
  }

  /** How many veths are br0 ports in the network's namespace (0 if it has none). */
  countAttachedEndpoints(networkId: string): Promise<number> {
    return this.ns.withOverlay(networkId, 0, async (o) => {
      const master = await this.ns.indexOf(o, BRIDGE_NAME);
      return (await listLinks(o.sock)).filter((l) => l.kind === 'veth' && l.master === master).length;
    });
  }

  /** Names of the endpoint ports (`ve…`) in the network's namespace (empty if it has none). */
  bridgePorts(networkId: string): Promise<string[]> {
    return this.ns.withOverlay(networkId, [], async (o) =>
      (await listLinks(o.sock)).filter((l) => l.kind === 'veth' && PORT_VETH_NAME.test(l.name)).map((l) => l.name),
    );
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
          await this.destroy(o);
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
