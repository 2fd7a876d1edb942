/**
 * What a request must hold before the driver touches a record or the kernel: CreateNetwork's
 * options and pools, CreateEndpoint's addresses and MAC. Pure; what they throw goes back to
 * Docker as a 400 (PluginError), so a bad request costs no store call.
 */
import { PluginError, errorMessage } from '../util/errors';
import { GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE } from './ipam';
import { normalizeMac } from './mac';
import { checkUnderlayFamily, parseNetworkOptions, type NetworkOptions } from './options';
import { contains, firstHost, parseAddressCidr, parseSubnet, subnetKey, type Subnet } from './subnet';

/** One family's IPAM data of CreateNetwork (IPv4Data or IPv6Data). */
export interface IpData {
  addressSpace: string;
  pool: string;
  gateway?: string;
}

export interface CreateNetworkInput {
  networkId: string;
  genericOptions: Record<string, string>;
  ipv4: IpData[];
  ipv6: IpData[];
}

export interface CreateEndpointInput {
  networkId: string;
  endpointId: string;
  address?: string;
  addressIPv6?: string;
  macAddress?: string;
}

export interface ParsedPool {
  data: IpData;
  subnet: Subnet;
  gateway: string;
}

/** A CreateNetwork request that passed every check that needs no store and no kernel. */
export interface CheckedNetwork {
  options: NetworkOptions;
  v4?: ParsedPool;
  v6?: ParsedPool;
  /** `networks/<key>`: the VNI's when `-o vni` is given, else the first subnet's. */
  networkKey: string;
}

/** `-o` options of CreateNetwork or AllocateNetwork, for an underlay of `vtep`'s family. */
export function checkNetworkOptions(raw: Record<string, string>, vtep: string): NetworkOptions {
  const options = parse(() => parseNetworkOptions(raw));
  parse(() => checkUnderlayFamily(options, vtep));
  return options;
}

/**
 * CreateNetwork's options and pools, checked for this host (`vtep`) and this store
 * (`distributed`: every host must then allocate from the same cluster-wide IPAM).
 */
export function checkCreateNetwork(input: CreateNetworkInput, vtep: string, distributed: boolean): CheckedNetwork {
  const options = checkNetworkOptions(input.genericOptions, vtep);
  const v4 = onePool(input.ipv4, 4);
  const v6 = onePool(input.ipv6, 6);
  // IPv4 fields hold IPv4 and IPv6 fields IPv6: an IPv6-only network (Docker 28's
  // --ipv4=false) has empty IPv4 ones, as its containers have an empty IPv4 address.
  const first = v4 ?? v6;
  if (!first) throw new PluginError('the network has no subnet; pass --subnet');
  const ours = (d: ParsedPool) => d.data.addressSpace === LOCAL_ADDRESS_SPACE || d.data.addressSpace === GLOBAL_ADDRESS_SPACE;
  if (v4 && v6 && ours(v4) !== ours(v6)) {
    throw new PluginError('use one IPAM driver for both families: tsoverlay (--ipam-driver tsoverlay) or the default one for both');
  }
  if (distributed && !ours(first) && !options.allowDefaultIpam) {
    throw new PluginError(
      'with a distributed store every host must allocate from the same cluster-wide IPAM: ' +
        'create the network with --ipam-driver tsoverlay (or -o allow-default-ipam=true to accept per-host address allocation)',
    );
  }
  const networkKey = options.vni !== undefined ? `vni-${options.vni}` : subnetKey(first.subnet);
  if (options.remote && options.remote === vtep) {
    throw new PluginError(`-o remote=${options.remote} is this host's own address: name the other host of the p2p link`);
  }
  return { options, ...(v4 ? { v4 } : {}), ...(v6 ? { v6 } : {}), networkKey };
}

/** CreateEndpoint's addresses (at least one) and the MAC Docker gave, if any, in our form. */
export function checkEndpointInput(input: CreateEndpointInput): { ip4?: string; ip6?: string; givenMac?: string } {
  const ip4 = input.address ? parse(() => parseAddressCidr(input.address!)).ip : undefined;
  const ip6 = input.addressIPv6 ? parse(() => parseAddressCidr(input.addressIPv6!)).ip : undefined;
  if (!ip4 && !ip6) throw new PluginError('the endpoint has no address: the network must use an IPAM driver that assigns one');
  const givenMac = input.macAddress ? normalizeMac(input.macAddress) : undefined;
  if (input.macAddress && !givenMac) throw new PluginError(`invalid MAC address "${input.macAddress}"`);
  return { ...(ip4 ? { ip4 } : {}), ...(ip6 ? { ip6 } : {}), ...(givenMac ? { givenMac } : {}) };
}

/**
 * Each family the network has, the endpoint has, inside its subnet; no other. Returns the
 * address the endpoint's MAC comes from: the IPv4 one, else the IPv6 one (see mac.ts).
 */
export function endpointMacSource(
  network: { subnet: string; subnet6?: string | undefined },
  ip4: string | undefined,
  ip6: string | undefined,
): { subnet: Subnet; ip: string } {
  const subnet4 = network.subnet ? parseSubnet(network.subnet) : undefined;
  const subnet6 = network.subnet6 ? parseSubnet(network.subnet6) : undefined;
  for (const [family, subnet, ip] of [
    [4, subnet4, ip4],
    [6, subnet6, ip6],
  ] as const) {
    if (subnet && !ip) throw new PluginError(`the endpoint has no IPv${family} address in the network's subnet ${subnet.cidr}`);
    if (ip && !subnet) throw new PluginError(`the network has no IPv${family} subnet for address ${ip}`);
    if (ip && subnet && !contains(subnet, ip)) throw new PluginError(`address ${ip} is not inside the network's subnet ${subnet.cidr}`);
  }
  return ip4 ? { subnet: subnet4!, ip: ip4 } : { subnet: subnet6!, ip: ip6! };
}

/** The one pool of a family in CreateNetwork, with its gateway (the first host address unless given). */
function onePool(list: IpData[], family: 4 | 6): ParsedPool | undefined {
  const [data, ...more] = list;
  if (!data) return undefined;
  if (more.length > 0) throw new PluginError(`tsoverlay supports one IPv${family} subnet per network`);
  const subnet = parse(() => parseSubnet(data.pool));
  if (subnet.family !== family) throw new PluginError(`subnet ${subnet.cidr} was given as an IPv${family} subnet`);
  const gateway = data.gateway ? parse(() => parseAddressCidr(data.gateway!)).ip : firstHost(subnet);
  if (!contains(subnet, gateway)) throw new PluginError(`gateway ${gateway} is not inside ${subnet.cidr}`);
  return { data, subnet, gateway };
}

/** Runs a parser of user input; what it throws goes back to Docker as a 400. */
function parse<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new PluginError(errorMessage(err));
  }
}
