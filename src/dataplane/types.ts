/**
 * What the driver asks of the kernel. The dataplane owns no state of its own beyond
 * what it can re-read from the kernel and the netns directory: every call is a
 * projection of desired state and may be repeated safely.
 */

export type ResolutionMode = 'static' | 'miss' | 'p2p' | 'multicast';

export interface OverlaySpec {
  networkId: string;
  vni: number;
  /** MTU of br0, vxlan0 and every veth end (underlay MTU - 50 unless overridden). */
  mtu: number;
  /** IPv4 gateway address with prefix length, put on br0, e.g. `10.20.0.1/24`; undefined on an IPv6-only network. */
  gatewayCidr?: string;
  /** IPv6 gateway address with prefix length, put on br0 beside the IPv4 one, e.g. `fd00:20::1/64`. */
  gateway6Cidr?: string;
  /** Underlay address the VXLAN socket binds to (`local`, IPv4 or IPv6: the underlay's family); undefined = any. */
  vtep?: string;
  mode: ResolutionMode;
  /** p2p: the one remote VTEP; multicast: the group address. */
  remote?: string;
  group?: string;
  /** VXLAN UDP port: 4789 unless the network is encrypted (its own port, see docs/encryption.md). */
  port?: number;
}

export interface OverlayInfo {
  /** Path of the namespace file, `<netnsDir>/<epoch>-<first 10 chars of network id>`. */
  netnsPath: string;
  epoch: number;
}

export interface EndpointAttachment {
  networkId: string;
  endpointId: string;
  mac: string;
  mtu: number;
}

export interface AttachedEndpoint {
  /** Name of the veth end left in the plugin's namespace for Docker to move (Join's SrcName). */
  srcName: string;
  /** Name of the veth end enslaved to br0 inside the overlay namespace. */
  bridgePortName: string;
}

/** A remote container: what a PERMANENT neighbour entry and a `dst` FDB entry are made of. */
export interface Peer {
  /** IPv4 address of the container; empty on an IPv6-only network (then `ip6` is set). */
  ip: string;
  /** IPv6 address of the container, beside `ip` (dual-stack) or alone (IPv6-only). */
  ip6?: string;
  mac: string;
  /** Underlay address of the host running the container (IPv4 or IPv6, this host's underlay family). */
  vtep: string;
}

/** What the dataplane's start-up sweep (removeOrphans) found and removed. */
export interface OrphanReport {
  /** `vc…` veths in the plugin's namespace. */
  hostVeths: string[];
  /** `ve…` bridge ports inside overlay namespaces. */
  ports: string[];
  /** Namespace files (live ones of unused networks, or empty leftovers). */
  namespaces: string[];
}
