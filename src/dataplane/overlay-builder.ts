/**
 * Building an overlay's namespace to the shape overlay-check.ts defines (br0 with the gateway,
 * vxlan0 made from the host namespace, lo up), repairing it in place, and tearing it down. The
 * veth pairs of endpoints are endpoint-ports.ts's; Dataplane is the one entry point for both.
 */
import * as path from 'node:path';
import type { Logger } from '../log';
import type { OverlayInfo, OverlaySpec } from './types';
import { AF_INET, AF_INET6, type LinkInfo, formatIP, parseIP } from './encode';
import { createNetns, deleteNetns, ensureNetnsDir, isNetnsMounted, setIPv6Sysctls } from './netns';
import { type Overlay, type OverlayNamespaces, networkPrefix } from './overlay-namespaces';
import {
  BRIDGE_NAME,
  PORT_VETH_NAME,
  type VxlanSpec,
  expectedVxlan,
  portDifferences,
  validateOverlayTarget,
} from './overlay-check';
import { deviceState } from './overlay-state';
import { deleteLink, ensureAddress, ensureBridge, ensureLoopbackUp, ensureVxlan, listAllAddresses, listLinks, setLink } from './links';

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

export class OverlayBuilder {
  constructor(
    private readonly ns: OverlayNamespaces,
    private readonly log: Logger,
  ) {}

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

  /**
   * The network's namespace with br0 (gateway address, MTU, up), vxlan0 (VNI, port 4789, mode
   * options, enslaved, up) and lo up. Reuses whatever already matches; on failure undoes what this
   * call created (the whole namespace if it made it). `changed`: whether anything had to be
   * created or fixed (the namespace, br0, vxlan0, a port's master).
   */
  ensure(spec: OverlaySpec): Promise<{ info: OverlayInfo; changed: boolean }> {
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
        o.vxlanIndex = v.link.index;
        if (v.replaced) this.log.warn('replaced incompatible vxlan device', { network: spec.networkId, reason: v.replaced });
        if (v.created) created.push(v.link);
        // A br0 deleted (or a port released) by hand leaves the containers' ports without a master.
        if (!createdNs) repairedPorts = await this.reattachPorts(o, br.link.index);
      } catch (e) {
        this.log.error('ensureOverlay failed, rolling back', { network: spec.networkId, error: (e as Error).message });
        o.vxlanIndex = undefined; // the rollback may delete the vxlan0 it made
        if (createdNs) {
          await this.destroy(o);
        } else {
          for (const l of created.reverse()) {
            await deleteLink(o.sock, l.index).catch((err: unknown) =>
              this.log.error('rollback left a link behind (the next reconcile removes or reuses it)', { network: spec.networkId, link: l.name, error: (err as Error).message }),
            );
          }
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
  async destroy(o: Overlay): Promise<void> {
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
  remove(networkId: string): Promise<void> {
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

}
