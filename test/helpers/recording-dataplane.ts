/**
 * Stand-ins for the kernel side of the network driver (OverlayDataplane, recording each call)
 * and of peer programming (PeerDataplane), for unit tests of the driver's own logic; the kernel side itself is covered by the
 * integration tests.
 */
import type { OverlayDataplane } from '../../src/driver/network-driver';
import type { AttachedEndpoint, EndpointAttachment, OrphanReport, OverlayInfo, OverlaySpec, Peer } from '../../src/dataplane/types';
import type { PeerDataplane } from '../../src/driver/peer-programmer';

export class RecordingDataplane implements OverlayDataplane {
  calls: string[] = [];
  overlays = new Map<string, OverlayInfo>();
  epoch = 0;
  failAttach = false;
  /** Endpoints whose veth pair exists, per network (what a real kernel would hold). */
  ports = new Map<string, Set<string>>();

  async ensureOverlay(spec: OverlaySpec): Promise<OverlayInfo> {
    this.calls.push('ensureOverlay');
    let o = this.overlays.get(spec.networkId);
    if (!o) {
      o = { netnsPath: `/run/test/${++this.epoch}`, epoch: this.epoch };
      this.overlays.set(spec.networkId, o);
      this.ports.set(spec.networkId, new Set());
    }
    return o;
  }
  async repairOverlay(): Promise<boolean> {
    return false;
  }
  async removeOverlay(networkId: string): Promise<void> {
    this.calls.push('removeOverlay');
    this.overlays.delete(networkId);
    this.ports.delete(networkId);
  }
  findOverlay(networkId: string): OverlayInfo | undefined {
    return this.overlays.get(networkId);
  }
  async attachEndpoint(a: EndpointAttachment): Promise<AttachedEndpoint> {
    this.calls.push(`attach ${a.endpointId}`);
    if (this.failAttach) throw new Error('netlink: no buffer space');
    let ports = this.ports.get(a.networkId);
    if (!ports) this.ports.set(a.networkId, (ports = new Set()));
    ports.add(a.endpointId);
    return { srcName: `vc${a.endpointId.slice(0, 11)}`, bridgePortName: `ve${a.endpointId.slice(0, 11)}` };
  }
  async detachEndpoint(networkId: string, endpointId: string): Promise<void> {
    this.calls.push(`detach ${endpointId}`);
    this.ports.get(networkId)?.delete(endpointId);
  }
  async applyPeers(): Promise<unknown> {
    return undefined;
  }
  async bridgePorts(): Promise<string[]> {
    return [];
  }
  async removeOrphans() {
    return { hostVeths: [], ports: [], namespaces: [] };
  }
}

/** A stand-in for the peer side of the kernel (PeerDataplane): the peer table as a map by address. */
export class PeerTableRecorder implements PeerDataplane {
  readonly table = new Map<string, Peer>();
  async applyPeers(_networkId: string, add: Peer[], remove: Peer[]): Promise<unknown> {
    for (const p of remove) this.table.delete(p.ip);
    for (const p of add) this.table.set(p.ip, p);
    return {};
  }
  async listPeers(): Promise<Peer[]> {
    return [...this.table.values()];
  }
}

/** What a reboot leaves, as recovery sees the dataplane: no overlay, no port; orphan sweeps are recorded. */
export function rebootedDataplane(): OverlayDataplane & { removed: OrphanReport[] } {
  const removed: OrphanReport[] = [];
  const unused = async (): Promise<never> => {
    throw new Error('not used by recovery');
  };
  return {
    removed,
    ensureOverlay: unused,
    repairOverlay: unused,
    removeOverlay: unused,
    attachEndpoint: unused,
    detachEndpoint: unused,
    applyPeers: unused,
    findOverlay: () => undefined,
    bridgePorts: async () => [],
    removeOrphans: async () => {
      const r = { hostVeths: [], ports: [], namespaces: [] };
      removed.push(r);
      return r;
    },
  };
}
