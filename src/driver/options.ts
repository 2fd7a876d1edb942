import type { ResolutionMode } from '../dataplane/types';
import { encryptedOverlayMtu } from '../dataplane/xfrm';
import ipaddr from 'ipaddr.js';
import { canonicalIp, isIPv4, isIPv6 } from './subnet';

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
        // Of the underlay's family: checked against this host's VTEP at CreateNetwork.
        if (!isIPv4(value) && !isIPv6(value)) throw new Error(`option remote="${value}" is not an IPv4 or IPv6 address`);
        options.remote = canonicalIp(value);
        break;
      case 'group':
        if (isIPv6(value) ? ipaddr.IPv6.parse(value).range() !== 'multicast' : !isIPv4(value) || Number(value.split('.')[0]) < 224 || Number(value.split('.')[0]) > 239) {
          throw new Error(`option group="${value}" is not an IPv4 or IPv6 multicast address`);
        }
        options.group = canonicalIp(value);
        break;
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

/** VXLAN adds 50 bytes (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8). */
export const VXLAN_OVERHEAD = 50;

export function overlayMtu(underlayMtu: number, override?: number, encrypted = false): number {
  const base = override ?? underlayMtu;
  return encrypted ? encryptedOverlayMtu(base) : base - VXLAN_OVERHEAD;
}
