import { z } from 'zod';

/**
 * One schema per request of libnetwork's remote driver and IPAM APIs, checked at the edge.
 * Docker sends `null` for absent maps and lists, and newer engines add fields: absent and
 * null are accepted, unknown fields ignored, wrong types refused.
 * Ids end up in interface and file names, so they are restricted to what Docker generates.
 */

const networkId = z.string().regex(/^[A-Za-z0-9]{10,64}$/, 'must be 10-64 letters or digits (a Docker network id)');
const endpointId = z.string().regex(/^[A-Za-z0-9]{12,64}$/, 'must be 12-64 letters or digits (a Docker endpoint id)');
/** Addresses, CIDRs, MACs, pool ids: short by nature; bounded so that errors quoting them stay short. */
const optionalString = z.string().max(256).nullish().transform((v) => v ?? undefined);
const stringMap = z
  .record(z.union([z.string(), z.number(), z.boolean()]).transform(String))
  .nullish()
  .transform((v) => v ?? {});
const anyMap = z.record(z.unknown()).nullish().transform((v) => v ?? {});

const ipamData = z.object({
  AddressSpace: z.string().nullish().transform((v) => v ?? ''),
  Pool: z.string().max(256),
  Gateway: optionalString,
  AuxAddresses: z.record(z.string()).nullish(),
});
const ipamDataList = z.array(ipamData).nullish().transform((v) => v ?? []);

export const createNetworkRequest = z.object({
  NetworkID: networkId,
  Options: z
    .object({ 'com.docker.network.generic': stringMap })
    .passthrough()
    .nullish()
    .transform((v) => v ?? { 'com.docker.network.generic': {} }),
  IPv4Data: ipamDataList,
  IPv6Data: ipamDataList,
});

export const networkRequest = z.object({ NetworkID: networkId });

export const allocateNetworkRequest = z.object({
  NetworkID: networkId,
  Options: stringMap,
  IPv4Data: ipamDataList,
  IPv6Data: ipamDataList,
});

export const createEndpointRequest = z.object({
  NetworkID: networkId,
  EndpointID: endpointId,
  Interface: z
    .object({ Address: optionalString, AddressIPv6: optionalString, MacAddress: optionalString })
    .nullish()
    .transform((v) => v ?? {}),
  Options: anyMap,
});

export const endpointRequest = z.object({ NetworkID: networkId, EndpointID: endpointId });

export const joinRequest = z.object({
  NetworkID: networkId,
  EndpointID: endpointId,
  SandboxKey: z.string().max(4096).nullish(),
  Options: anyMap,
});

export const programConnectivityRequest = z.object({ NetworkID: networkId, EndpointID: endpointId, Options: anyMap });

export const discoveryRequest = z.object({
  DiscoveryType: z.number().int(),
  DiscoveryData: z.unknown().optional(),
});

export const gwAllocCheckRequest = z.object({ Options: anyMap });

export const requestPoolRequest = z.object({
  AddressSpace: z.string().max(256),
  Pool: optionalString,
  SubPool: optionalString,
  Options: stringMap,
  V6: z.boolean().nullish().transform((v) => v ?? false),
});

export const poolIdRequest = z.object({ PoolID: z.string().min(1).max(128) });

export const requestAddressRequest = z.object({
  PoolID: z.string().min(1).max(128),
  Address: optionalString,
  Options: stringMap,
});

export const releaseAddressRequest = z.object({ PoolID: z.string().min(1).max(128), Address: z.string().min(1).max(64) });

export const emptyRequest = z.unknown();
