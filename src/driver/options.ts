import type { ResolutionMode } from '../dataplane/types';
import { encryptedOverlayMtu } from '../dataplane/xfrm';
import ipaddr from 'ipaddr.js';
import { VXLAN_OVERHEAD_IPV4, VXLAN_OVERHEAD_IPV6, vxlanOverhead } from '../dataplane/overlay-check';
import { canonicalIp, isIPv4 } from './subnet';

/** An IPv6 address usable on the underlay (unicast, not link-local: a VTEP must be routable). */
function isIPv6Unicast(value: string): boolean {
  if (value.includes('%') || !ipaddr.IPv6.isValid(value)) return false;
  const range = ipaddr.IPv6.parse(value).range();
  return range !== 'multicast' && range !== 'linkLocal' && range !== 'unspecified' && range !== 'loopback' && range !== 'ipv4Mapped';
}

function isIPv6Multicast(value: string): boolean {
  return !value.includes('%') && ipaddr.IPv6.isValid(value) && ipaddr.IPv6.parse(value).range() === 'multicast';
}

/**
 * The `-o key=value` options of `docker network create -d tsoverlay`, as they arrive in
 * CreateNetwork's `com.docker.network.generic`. Unknown keys are refused so that a typo
 * (`-o vin=300`) is an error rather than a silently different network.
 */
export interface NetworkOptions {
  vni?: number;
  mode: ResolutionMode;
  remote?: string;
  group?: string;
  mtu?: number;
  allowDefaultIpam: boolean;
  /** `-o encrypted`: VXLAN inside IPsec ESP between hosts (docs/encryption.md); absent = plain. */
  encrypted?: boolean;
}

export const MTU_OPTION = 'com.docker.network.driver.mtu';
const KNOWN = new Set(['vni', 'mode', 'remote', 'group', MTU_OPTION, 'mtu', 'allow-default-ipam', 'encrypted']);
const MODES: readonly ResolutionMode[] = ['static', 'miss', 'p2p', 'multicast'];
export const MAX_VNI = 0xffffff;
export const FIRST_VNI = 256;

function parseInteger(key: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value)) throw new Error(`option ${key}="${value}" is not a whole number`);
  const n = Number(value);
  if (n < min || n > max) throw new Error(`option ${key}=${value} is out of range ${min}..${max}`);
  return n;
}

function parseBoolean(key: string, value: string): boolean {
  if (/^(1|true|yes)$/i.test(value)) return true;
  if (/^(0|false|no)$/i.test(value)) return false;
  throw new Error(`option ${key}="${value}" is not a boolean`);
}

export function parseNetworkOptions(raw: Record<string, string>): NetworkOptions {
  const options: NetworkOptions = { mode: 'static', allowDefaultIpam: false };
  for (const [key, value] of Object.entries(raw)) {
    if (key.startsWith('com.docker.') && key !== MTU_OPTION) continue;
    if (!KNOWN.has(key)) {
      throw new Error(`unknown option "${key}" (known: vni, mode, remote, group, mtu, ${MTU_OPTION}, allow-default-ipam, encrypted)`);
    }
    switch (key) {
      case 'vni':
        options.vni = parseInteger(key, value, 1, MAX_VNI);
        break;
      case 'mode':
        if (!(MODES as readonly string[]).includes(value)) {
          throw new Error(`option mode="${value}" is not one of ${MODES.join(', ')}`);
        }
        options.mode = value as ResolutionMode;
        break;
      case 'remote':
        if (!isIPv4(value) && !isIPv6Unicast(value)) throw new Error(`option remote="${value}" is not an IPv4 or IPv6 unicast address`);
        options.remote = canonicalIp(value);
        break;
      case 'group': {
        const v4 = isIPv4(value) && Number(value.split('.')[0]) >= 224 && Number(value.split('.')[0]) <= 239;
        if (!v4 && !isIPv6Multicast(value)) throw new Error(`option group="${value}" is not an IPv4 or IPv6 multicast address`);
        options.group = canonicalIp(value);
        break;
      }
      case MTU_OPTION:
      case 'mtu':
        options.mtu = parseInteger(key, value, 1280, 65535);
        break;
      case 'allow-default-ipam':
        options.allowDefaultIpam = parseBoolean(key, value);
        break;
      case 'encrypted':
        // Docker's own overlay takes a bare `--opt encrypted` (an empty value): so do we.
        if (value === '' || parseBoolean(key, value)) options.encrypted = true;
        break;
    }
  }
  if (options.mode === 'p2p' && !options.remote) throw new Error('mode=p2p needs -o remote=<IPv4 of the other host>');
  if (options.mode === 'multicast' && !options.group) throw new Error('mode=multicast needs -o group=<239.x.x.x>');
  if (options.remote && options.mode !== 'p2p') throw new Error('option remote is only valid with mode=p2p');
  if (options.group && options.mode !== 'multicast') throw new Error('option group is only valid with mode=multicast');
  if (options.encrypted && options.mode === 'multicast') {
    throw new Error('option encrypted needs unicast VXLAN: IPsec SAs are per pair of hosts, not for a multicast group');
  }
  return options;
}

/** VXLAN adds 50 bytes on an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14), 70 on an IPv6 one. */
export const VXLAN_OVERHEAD = VXLAN_OVERHEAD_IPV4;
export { VXLAN_OVERHEAD_IPV6 };

/** The overlay MTU for an underlay MTU; `vtep` (this host's) decides the outer header's family. */
export function overlayMtu(underlayMtu: number, override?: number, encrypted = false, vtep?: string): number {
  const base = override ?? underlayMtu;
  return encrypted ? encryptedOverlayMtu(base) : base - vxlanOverhead(vtep);
}

/**
 * Options that only make sense on one underlay family, checked against this host's VTEP: a p2p
 * remote or multicast group of the other family (mixed underlays are not supported), and
 * encryption on an IPv6 underlay (the IPsec policies are IPv4, see docs/encryption.md).
 */
export function checkUnderlayFamily(options: NetworkOptions, vtep: string): void {
  const v6 = vtep.includes(':');
  const family = (a: string): string => (a.includes(':') ? 'IPv6' : 'IPv4');
  const underlay = v6 ? 'IPv6' : 'IPv4';
  for (const [key, value] of [['remote', options.remote], ['group', options.group]] as const) {
    if (value !== undefined && family(value) !== underlay) {
      throw new Error(`option ${key}=${value} is an ${family(value)} address but this host's underlay (VTEP ${vtep}) is ${underlay}: mixed underlays are not supported`);
    }
  }
  if (options.encrypted && v6) throw new Error(`option encrypted is not supported on an IPv6 underlay (VTEP ${vtep})`);
}
