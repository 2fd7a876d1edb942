/**
 * What the kernel holds, as overlay-check.ts's validators compare it: a plain description of
 * devices and tables (what `ip -d link`, `ip neigh` and `bridge fdb` show), made from netlink
 * dumps by deviceState/vxlanState here and by the inspect report for the tables. Pure: the
 * dumps are read by links.ts and peers.ts.
 */
import { IFF_UP, type LinkInfo } from './encode';

/** A device as the validators (and `inspect`) see it. */
export interface DeviceState {
  name: string;
  index: number;
  kind?: string;
  up: boolean;
  mtu?: number;
  mac?: string;
  /** Name of the device's master (br0 for its ports), `#<index>` when it is not known. */
  master?: string;
  addresses: string[];
}

export interface VxlanState extends DeviceState {
  id?: number;
  port?: number;
  local?: string;
  /** p2p: the remote; multicast: the group. */
  group?: string;
  /** Underlay device index in the host namespace (multicast). */
  underlayIndex?: number;
  /** Which of proxy, learning, l2miss, l3miss are on. */
  flags: string[];
  /** Set when the UDP socket lives in another namespace than the device (the host's): it should. */
  linkNetnsid?: number;
}

export interface NeighbourState {
  ip: string;
  mac?: string;
  /** As `ip neigh` prints it, e.g. `PERMANENT`. */
  state: string;
}

export interface FdbState {
  mac: string;
  dst?: string;
  /** self (the vxlan device's own table) and/or master (learned/kept by br0). */
  flags: string[];
  state: 'permanent' | 'static' | 'dynamic';
}

/** Names a device index where the caller knows it (undefined: the state shows `#<index>`). */
export type NameOf = (index: number) => string | undefined;
/** IPv4 addresses of a namespace, as listIPv4Addresses gives them. */
export type Addresses = readonly { index: number; ip: string; prefix: number }[];

/** A device from its netlink description, with its master named by `nameOf` and its addresses. */
export function deviceState(l: LinkInfo, nameOf: NameOf, addresses: Addresses = []): DeviceState {
  const master = l.master !== undefined ? (nameOf(l.master) ?? `#${l.master}`) : undefined;
  return {
    name: l.name,
    index: l.index,
    ...(l.kind ? { kind: l.kind } : {}),
    up: (l.flags & IFF_UP) !== 0,
    ...(l.mtu !== undefined ? { mtu: l.mtu } : {}),
    ...(l.mac ? { mac: l.mac } : {}),
    ...(master ? { master } : {}),
    addresses: addresses.filter((a) => a.index === l.index).map((a) => `${a.ip}/${a.prefix}`),
  };
}

export function vxlanState(l: LinkInfo, nameOf: NameOf, addresses: Addresses = []): VxlanState {
  const v = l.vxlan ?? {};
  return {
    ...deviceState(l, nameOf, addresses),
    ...(v.id !== undefined ? { id: v.id } : {}),
    ...(v.port !== undefined ? { port: v.port } : {}),
    ...(v.local ? { local: v.local } : {}),
    ...(v.group ? { group: v.group } : {}),
    ...(v.link ? { underlayIndex: v.link } : {}),
    flags: (['proxy', 'learning', 'l2miss', 'l3miss'] as const).filter((f) => !!v[f]),
    ...(l.linkNetnsid !== undefined ? { linkNetnsid: l.linkNetnsid } : {}),
  };
}
