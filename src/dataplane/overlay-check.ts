/**
 * What a healthy overlay looks like on this host, and the validators that compare what the kernel
 * holds against it. The dataplane's write side decides from these differences what to rebuild
 * and what to set in place (links.ensureBridge/ensureVxlan, Dataplane.repairOverlay);
 * `tsoverlay inspect --check` reports the very same differences. One definition, in the manner of
 * CNI's bridge plugin (whose CHECK reuses the validators ADD relies on) and flannel's
 * `vxlanLinksIncompat`: when the two sides each had their own, `--check` could pass a device the
 * dataplane would replace, or flag one it keeps.
 *
 * Pure: no netlink, no I/O. The observed side is overlay-state.ts's plain description of
 * devices and tables.
 */
import { canonicalIPv6, isIPv6Text, isMulticastIPv4, isMulticastIPv6, parseIP, parseIPv4Cidr, parseIPv6Cidr, type LinkInfo } from './encode';
import type { OverlaySpec, Peer, ResolutionMode } from './types';
import { type DeviceState, type FdbState, type NeighbourState, type VxlanState, vxlanState } from './overlay-state';

export const BRIDGE_NAME = 'br0';
export const VXLAN_NAME = 'vxlan0';
export const VXLAN_PORT = 4789;
/** IPv6 needs this much of every link (RFC 8200); below it the kernel gives a device no IPv6 state at all. */
export const IPV6_MIN_MTU = 1280;
/** What VXLAN adds to a frame on an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14)… */
export const VXLAN_OVERHEAD_IPV4 = 50;
/** …and on an IPv6 underlay (outer IPv6 header 40). */
export const VXLAN_OVERHEAD_IPV6 = 70;

/** The VXLAN overhead for an underlay whose VTEP is `vtep` (IPv4 when unknown). */
export function vxlanOverhead(vtep: string | undefined): number {
  return vtep !== undefined && isIPv6Text(vtep) ? VXLAN_OVERHEAD_IPV6 : VXLAN_OVERHEAD_IPV4;
}

/** Whether two underlay addresses are of the same family (a peer on the other family cannot be reached). */
export function sameUnderlayFamily(a: string, b: string): boolean {
  return isIPv6Text(a) === isIPv6Text(b);
}

/** An underlay address in the form the kernel reports it (IPv6 canonical text; IPv4 as given). */
function canonicalIP(s: string): string {
  return isIPv6Text(s) ? canonicalIPv6(s) : s;
}
/** Encrypted networks' VXLAN port (`--encrypted-vxlan-port`): xfrm policies select it, see docs/encryption.md. */
export const DEFAULT_ENCRYPTED_VXLAN_PORT = 4793;
/** The all-zeros FDB entry: where a p2p/multicast vxlan0 sends what no other entry claims. Never a peer. */
export const ZERO_MAC = '00:00:00:00:00:00';
/** Our veth ends, as vethNames() makes them from a Docker endpoint id (alphanumeric, ≥ 12 chars). */
export const HOST_VETH_NAME = /^vc[A-Za-z0-9]{11}$/;
export const PORT_VETH_NAME = /^ve[A-Za-z0-9]{11}$/;

// ------------------------------------------------------------------ expected state

/** An overlay as this host must hold it: OverlaySpec without the Docker id it is filed under. */
export type OverlayTarget = Omit<OverlaySpec, 'networkId'>;

/** vxlan0 as it must be. */
export interface VxlanSpec {
  name: string;
  vni: number;
  mtu: number;
  /** `local`: the underlay address the UDP socket binds to. */
  local?: string;
  /** UDP destination port (4789 when absent). */
  port?: number;
  /** p2p: the unicast remote; multicast: the group. */
  group?: string;
  /** multicast: the underlay device index (host namespace). */
  underlayIndex?: number;
  /** static/miss: answer ARP locally and report misses; off for p2p/multicast, which must flood. */
  proxy: boolean;
  learning: boolean;
}

/**
 * This host's p2p remote: its own `-o remote` (each of the two hosts names the other), else the
 * one stored with the network record (the first creator's).
 */
export function p2pRemote(hostRemote: string | undefined, options: { readonly remote?: string | undefined }): string | undefined {
  return hostRemote ?? options.remote;
}

/** Where vxlan0 floods what no peer entry claims: p2p the remote, multicast the group; static/miss nowhere. */
export function floodDestination(t: Pick<OverlayTarget, 'mode' | 'remote' | 'group'>): string | undefined {
  return t.mode === 'p2p' ? t.remote : t.mode === 'multicast' ? t.group : undefined;
}

/** What a stored network record (and this host's VTEP and p2p remote) asks of this host's overlay. */
export function overlayTarget(
  n: {
    vni: number;
    mtu: number;
    /** IPv4 gateway and subnet: empty (or absent) on an IPv6-only network. */
    gateway?: string;
    subnet?: string;
    gateway6?: string | undefined;
    subnet6?: string | undefined;
    mode: ResolutionMode;
    options: Readonly<Record<string, string | undefined>>;
  },
  host: { vtep?: string | undefined; remote?: string | undefined; encryptedPort?: number | undefined },
): OverlayTarget {
  const remote = p2pRemote(host.remote, n.options);
  const group = n.options.group;
  const encrypted = n.options.encrypted === 'true';
  const cidr = (gw: string | undefined, subnet: string | undefined): string | undefined =>
    gw && subnet ? `${gw}/${subnet.split('/')[1] ?? ''}` : undefined;
  const gatewayCidr = cidr(n.gateway, n.subnet);
  const gateway6Cidr = cidr(n.gateway6, n.subnet6);
  return {
    vni: n.vni,
    mtu: n.mtu,
    ...(gatewayCidr ? { gatewayCidr } : {}),
    ...(gateway6Cidr ? { gateway6Cidr } : {}),
    mode: n.mode,
    ...(host.vtep ? { vtep: host.vtep } : {}),
    ...(remote ? { remote } : {}),
    ...(group ? { group } : {}),
    ...(encrypted ? { port: host.encryptedPort ?? DEFAULT_ENCRYPTED_VXLAN_PORT } : {}),
  };
}

export function validateMtu(mtu: number): void {
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw new Error(`invalid MTU ${mtu}`);
}

/** Throws on a target the kernel cannot be asked for (the write side's input check). */
export function validateOverlayTarget(t: OverlayTarget): void {
  validateMtu(t.mtu);
  if (t.gatewayCidr === undefined && t.gateway6Cidr === undefined) throw new Error('an overlay needs an IPv4 or an IPv6 gateway address');
  if (t.gatewayCidr !== undefined) parseIPv4Cidr(t.gatewayCidr);
  if (t.gateway6Cidr !== undefined) {
    const g = parseIPv6Cidr(t.gateway6Cidr);
    if (g.ip[0] === 0xfe && (g.ip[1]! & 0xc0) === 0x80) throw new Error(`IPv6 gateway ${t.gateway6Cidr} is link-local`);
    if (isMulticastIPv6(g.ip)) throw new Error(`IPv6 gateway ${t.gateway6Cidr} is a multicast address`);
    if (t.mtu < IPV6_MIN_MTU) throw new Error(`an IPv6 overlay needs an MTU of at least ${IPV6_MIN_MTU}, got ${t.mtu}`);
  }
  const underlay = t.vtep !== undefined ? parseIP(t.vtep).length : undefined;
  /** A p2p remote or multicast group must be of the underlay's family (the VTEP's, when it is set). */
  const sameFamily = (what: string, addr: string): Buffer => {
    const b = parseIP(addr);
    if (underlay !== undefined && b.length !== underlay) {
      throw new Error(`${what} ${addr} is ${b.length === 16 ? 'IPv6' : 'IPv4'} but the underlay (VTEP ${t.vtep}) is ${underlay === 16 ? 'IPv6' : 'IPv4'}: mixed underlays are not supported`);
    }
    return b;
  };
  switch (t.mode) {
    case 'static':
    case 'miss':
      return;
    case 'p2p':
      if (!t.remote) throw new Error('p2p mode needs a remote address');
      sameFamily('p2p remote', t.remote);
      return;
    case 'multicast': {
      const g = t.group ? sameFamily('multicast group', t.group) : undefined;
      if (!g || !(g.length === 4 ? isMulticastIPv4(g) : isMulticastIPv6(g))) {
        throw new Error(`multicast mode needs a multicast group, got ${JSON.stringify(t.group)}`);
      }
      return;
    }
    default:
      throw new Error(`unknown resolution mode ${JSON.stringify((t as { mode: unknown }).mode)}`);
  }
}

/**
 * vxlan0 for a target: the VNI on port 4789 (an encrypted network's own port), bound to the VTEP, learning; static/miss answer ARP
 * themselves and report misses (proxy, l2miss, l3miss), p2p/multicast flood to their
 * destination instead. The multicast underlay device is the caller's to add (it takes a lookup).
 */
export function expectedVxlan(t: OverlayTarget): VxlanSpec {
  const group = floodDestination(t);
  return {
    name: VXLAN_NAME,
    vni: t.vni,
    mtu: t.mtu,
    learning: true,
    proxy: t.mode === 'static' || t.mode === 'miss',
    ...(t.vtep ? { local: canonicalIP(t.vtep) } : {}),
    ...(group ? { group: canonicalIP(group) } : {}),
    ...(t.port !== undefined ? { port: t.port } : {}),
  };
}

/** vxlan0's flags as `ip -d link` names them, in that order. */
export function vxlanFlags(s: Pick<VxlanSpec, 'proxy' | 'learning'>): string[] {
  return [...(s.proxy ? ['proxy'] : []), ...(s.learning ? ['learning'] : []), ...(s.proxy ? ['l2miss', 'l3miss'] : [])];
}

// ------------------------------------------------------------------ validators

export type DifferenceField =
  | 'missing'
  | 'kind'
  | 'vni'
  | 'dstport'
  | 'mtu'
  | 'up'
  | 'master'
  | 'address'
  | 'flags'
  | 'local'
  | 'group'
  | 'underlay'
  | 'netns';

export interface Difference {
  field: DifferenceField;
  /** One line an operator can act on (what `inspect --check` prints). */
  message: string;
  /** Only a new device fixes it; the others are set on the device in place. */
  rebuild: boolean;
}

function diff(field: DifferenceField, message: string, rebuild = false): Difference {
  return { field, message, rebuild };
}

/** br0: a bridge, up, at the overlay MTU, holding the gateway addresses (when `gatewayCidr`/`gateway6Cidr` are asked about). */
export function bridgeDifferences(br: DeviceState | undefined, want: { mtu: number; gatewayCidr?: string; gateway6Cidr?: string }): Difference[] {
  if (!br) return [diff('missing', `${BRIDGE_NAME} missing`, true)];
  const out: Difference[] = [];
  if (br.kind !== 'bridge') out.push(diff('kind', `${br.name} is a ${br.kind ?? 'unknown device'}, not a bridge`, true));
  if (!br.up) out.push(diff('up', `${br.name} is down`));
  if (br.mtu !== want.mtu) out.push(diff('mtu', `${br.name} mtu ${br.mtu} != ${want.mtu}`));
  if (want.gatewayCidr !== undefined && !br.addresses.includes(want.gatewayCidr)) {
    out.push(diff('address', `${br.name} lacks the gateway address ${want.gatewayCidr} (has ${br.addresses.join(', ') || 'none'})`));
  }
  if (want.gateway6Cidr !== undefined) {
    const [ip, prefix] = want.gateway6Cidr.split('/');
    const canonical = `${canonicalIPv6(ip ?? '')}/${prefix ?? ''}`;
    if (!br.addresses.includes(canonical)) {
      out.push(diff('address', `${br.name} lacks the IPv6 gateway address ${canonical} (has ${br.addresses.join(', ') || 'none'})`));
    }
  }
  return out;
}

/**
 * vxlan0 against its spec. `mode` names the mode in the flags line; `anyLocal` skips the local
 * address when this host's VTEP is not known (inspect without a registered host).
 */
export function vxlanDifferences(
  vx: VxlanState | undefined,
  want: VxlanSpec,
  opts: { mode?: ResolutionMode; anyLocal?: boolean } = {},
): Difference[] {
  if (!vx) return [diff('missing', `${want.name} missing`, true)];
  const n = vx.name;
  const out: Difference[] = [];
  if (vx.kind !== 'vxlan') out.push(diff('kind', `${n} is a ${vx.kind ?? 'unknown device'}, not vxlan`, true));
  if (vx.id !== want.vni) out.push(diff('vni', `${n} id ${vx.id} != VNI ${want.vni} in the store`, true));
  const port = want.port ?? VXLAN_PORT;
  if (vx.port !== port) out.push(diff('dstport', `${n} dstport ${vx.port} != ${port}`, true));
  if (vx.mtu !== want.mtu) out.push(diff('mtu', `${n} mtu ${vx.mtu} != ${want.mtu}`));
  if (!vx.up) out.push(diff('up', `${n} is down`));
  if (vx.master !== BRIDGE_NAME) out.push(diff('master', `${n} is not a ${BRIDGE_NAME} port (master ${vx.master ?? 'none'})`));
  const flags = vxlanFlags(want);
  if (flags.length !== vx.flags.length || flags.some((f) => !vx.flags.includes(f))) {
    out.push(diff('flags', `${n} flags [${vx.flags.join(' ')}] != [${flags.join(' ')}]${opts.mode ? ` for mode=${opts.mode}` : ''}`, true));
  }
  if (!opts.anyLocal && vx.local !== want.local) {
    out.push(diff('local', `${n} local ${vx.local ?? 'unset'} != this host's VTEP ${want.local ?? 'unset'}`, true));
  }
  if (vx.group !== want.group) out.push(diff('group', `${n} remote/group ${vx.group ?? 'unset'} != ${want.group ?? 'unset'}`, true));
  if (want.underlayIndex !== undefined && vx.underlayIndex !== want.underlayIndex) {
    out.push(diff('underlay', `${n} underlay device #${vx.underlayIndex ?? 'none'} != #${want.underlayIndex}`, true));
  }
  // Without a link netns id the device (and its UDP socket) lives in the overlay namespace itself.
  if (vx.linkNetnsid === undefined) {
    out.push(diff('netns', `${n} has its UDP socket inside the overlay namespace (not created from the host namespace)`, true));
  }
  return out;
}

/**
 * Why an existing device cannot serve as the wanted vxlan0 (undefined: it can, perhaps after its
 * MTU, master or state are set): the first difference only a new device fixes.
 */
export function vxlanIncompat(l: LinkInfo, want: VxlanSpec): string | undefined {
  return firstIncompat(vxlanDifferences(vxlanState(l, () => undefined), want));
}

/** The first of `diffs` only a new device fixes, as a reason for the log; undefined if none. */
export function firstIncompat(diffs: readonly Difference[]): string | undefined {
  const d = diffs.find((x) => x.rebuild);
  return d ? `${d.field}: ${d.message}` : undefined;
}

/**
 * An endpoint's bridge port: present, enslaved to br0, up. `owner` names the endpoint in the
 * lines (`web (10.20.0.2)`).
 */
export function portDifferences(port: DeviceState | undefined, name: string, owner?: string): Difference[] {
  const of = owner ? ` of ${owner}` : '';
  if (!port) return [diff('missing', `local endpoint ${owner ?? name} is joined but its ${BRIDGE_NAME} port ${name} is missing`, true)];
  const out: Difference[] = [];
  if (port.master !== BRIDGE_NAME) out.push(diff('master', `${BRIDGE_NAME} port ${name}${of} is not enslaved to ${BRIDGE_NAME} (master ${port.master ?? 'none'})`));
  if (!port.up) out.push(diff('up', `${BRIDGE_NAME} port ${name}${of} is down`));
  return out;
}

/** A `self` FDB entry that programs a peer (the all-zeros default entry does not). */
export function isPeerFdb(e: { mac: string; self: boolean; permanent: boolean }): boolean {
  return e.self && e.permanent && e.mac !== ZERO_MAC;
}

/**
 * vxlan0's neighbour and FDB tables against the peers the store wants. static: every desired
 * peer as a PERMANENT neighbour and a `self permanent` FDB entry to its VTEP; miss: the same for
 * the peers asked for so far (none is fine); p2p/multicast: no peer entries, and the default
 * entry pointing at the flood destination. In every mode no entry of a peer the store lacks.
 */
export function peerDifferences(
  t: Pick<OverlayTarget, 'mode' | 'remote' | 'group'>,
  tables: { neighbours: readonly NeighbourState[]; fdb: readonly FdbState[] },
  desired: readonly Peer[],
): string[] {
  const out: string[] = [];
  const permNeigh = new Map(tables.neighbours.filter((n) => n.state.includes('PERMANENT')).map((n) => [n.ip, n]));
  const selfFdb = new Map<string, FdbState[]>();
  for (const f of tables.fdb) {
    if (!isPeerFdb({ mac: f.mac, self: f.flags.includes('self'), permanent: f.state === 'permanent' })) continue;
    selfFdb.set(f.mac, [...(selfFdb.get(f.mac) ?? []), f]);
  }
  // A dual-stack peer has a neighbour per family; IPv6 compared in the canonical form dumps give.
  const ipsOf = (p: Peer): string[] => [...(p.ip ? [p.ip] : []), ...(p.ip6 !== undefined ? [canonicalIPv6(p.ip6)] : [])];
  const wantIp = new Map(desired.flatMap((p) => ipsOf(p).map((ip) => [ip, p] as const)));
  const wantMac = new Map(desired.map((p) => [p.mac.toLowerCase(), p]));

  if (t.mode === 'static' || t.mode === 'miss') {
    for (const p of desired) {
      const mac = p.mac.toLowerCase();
      const ips = ipsOf(p);
      const fdb = selfFdb.get(mac) ?? [];
      if (t.mode === 'miss' && ips.every((ip) => !permNeigh.has(ip)) && fdb.length === 0) continue; // not asked for yet: fine
      const vtep = canonicalIP(p.vtep);
      for (const ip of ips) {
        const n = permNeigh.get(ip);
        if (!n) out.push(`missing neighbour ${ip} lladdr ${mac} PERMANENT (peer at ${vtep})`);
        else if (n.mac !== mac) out.push(`neighbour ${ip} has lladdr ${n.mac ?? 'none'}, the store says ${mac}`);
      }
      const label = ips.join(' ');
      if (fdb.length === 0) out.push(`missing fdb ${mac} dst ${vtep} self permanent (peer ${label})`);
      else if (!fdb.some((f) => f.dst === vtep)) out.push(`fdb ${mac} points at ${fdb.map((f) => f.dst).join(', ')}, the store says ${vtep}`);
    }
    for (const n of permNeigh.values()) {
      if (!wantIp.has(n.ip)) out.push(`stale neighbour ${n.ip} lladdr ${n.mac ?? 'none'} PERMANENT: no such peer in the store`);
    }
    for (const [mac, entries] of selfFdb) {
      if (!wantMac.has(mac)) for (const f of entries) out.push(`stale fdb ${mac} dst ${f.dst ?? 'none'} self permanent: no such peer in the store`);
    }
  } else {
    const dest = floodDestination(t);
    const want = dest && canonicalIP(dest);
    const dflt = tables.fdb.filter((f) => f.mac === ZERO_MAC && f.flags.includes('self'));
    if (want && !dflt.some((f) => f.dst === want)) {
      out.push(`missing default fdb ${ZERO_MAC} dst ${want} self permanent (unknown traffic has nowhere to go)`);
    }
    for (const [mac, entries] of selfFdb) for (const f of entries) out.push(`unexpected permanent fdb ${mac} dst ${f.dst ?? 'none'} in mode=${t.mode}`);
  }
  return out;
}
