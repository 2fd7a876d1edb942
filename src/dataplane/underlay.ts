import { createRtNetlink } from 'netlink';
import { canonicalIPv6, formatIPv6, isIPv6Text } from './addresses';

export interface Underlay {
  address: string;
  interfaceName: string;
  mtu: number;
}

function ipv4(bytes: Buffer | undefined): string | undefined {
  return bytes && bytes.length === 4 ? Array.from(bytes).join('.') : undefined;
}

/** An IPv6 address (not link-local) in its canonical text form. */
function ipv6(bytes: Buffer | undefined): string | undefined {
  if (!bytes || bytes.length !== 16 || (bytes[0] === 0xfe && (bytes[1]! & 0xc0) === 0x80)) return undefined;
  return formatIPv6(bytes);
}

/**
 * The underlay this host's VTEP sits on: the interface holding `vtep` if given (IPv4 or IPv6; an
 * IPv6 VTEP comes back in canonical form, as the kernel reports vxlan0's `local`), else the one
 * carrying the IPv4 default route (the address other hosts will most likely reach us at).
 */
export async function detectUnderlay(vtep?: string): Promise<Underlay> {
  const socket = createRtNetlink();
  try {
    // One dump at a time: node-netlink mixes up the parts of concurrent multipart replies.
    const links = await socket.getLinks();
    const addresses = await socket.getAddresses();
    const v4 = addresses
      .filter((a) => a.data.family === 2)
      .map((a) => ({ index: a.data.index, address: ipv4(a.attrs.local ?? a.attrs.address) }))
      .filter((a): a is { index: number; address: string } => a.address !== undefined && !a.address.startsWith('127.'));
    let chosen: { index: number; address: string } | undefined;
    if (vtep && isIPv6Text(vtep)) {
      const want = canonicalIPv6(vtep);
      chosen = addresses
        .filter((a) => a.data.family === 10)
        .map((a) => ({ index: a.data.index, address: ipv6(a.attrs.address ?? a.attrs.local) }))
        .find((a): a is { index: number; address: string } => a.address === want);
      if (!chosen) throw new Error(`--vtep ${vtep} is not an address of any interface of this host`);
    } else if (vtep) {
      chosen = v4.find((a) => a.address === vtep);
      if (!chosen) throw new Error(`--vtep ${vtep} is not an address of any interface of this host`);
    } else {
      const routes = await socket.getRoutes({ family: 2 });
      const defaultRoute = routes.find((r) => r.data.dstLen === 0 && r.attrs.oif !== undefined && (r.data.table ?? 254) === 254);
      chosen = defaultRoute ? v4.find((a) => a.index === defaultRoute.attrs.oif) : undefined;
      chosen ??= v4[0];
      if (!chosen) throw new Error('cannot find an underlay IPv4 address: pass --vtep');
    }
    const link = links.find((l) => l.data.index === chosen!.index);
    return { address: chosen.address, interfaceName: link?.attrs.ifname ?? '?', mtu: link?.attrs.mtu ?? 1500 };
  } finally {
    socket.socket.close();
  }
}
