import type { Logger } from '../log';
import { GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, REQUEST_ID_OPTION, type IpamService } from '../driver/ipam';
import type { NetworkDriver } from '../driver/network-driver';
import type { Recovery } from '../driver/recovery';
import { route, type Route } from './server';
import * as s from './schemas';

export type Scope = 'local' | 'global';

export interface RouteDeps {
  network: NetworkDriver;
  ipam: IpamService;
  /** For ReleaseAddress: endpoints whose DeleteEndpoint was lost. */
  recovery: Recovery;
  scope: Scope;
  logger: Logger;
}

/**
 * libnetwork's remote API, method by method: translate Docker's request shapes into driver
 * calls and the driver's answers into Docker's response shapes. No logic of its own.
 */
export function pluginRoutes({ network, ipam, recovery, scope, logger }: RouteDeps): Record<string, Route> {
  const ok = async () => ({});
  return {
    'Plugin.Activate': route(s.emptyRequest, async () => ({ Implements: ['NetworkDriver', 'IpamDriver'] })),

    // GwAllocChecker stays false: br0 in every overlay namespace carries the gateway address, so
    // Docker (28 and later ask only drivers that advertise it) must keep reserving it.
    'NetworkDriver.GetCapabilities': route(s.emptyRequest, async () => ({
      Scope: scope,
      ConnectivityScope: scope,
      GwAllocChecker: false,
    })),
    'NetworkDriver.CreateNetwork': route(s.createNetworkRequest, async (r) => {
      await network.createNetwork({
        networkId: r.NetworkID,
        genericOptions: r.Options['com.docker.network.generic'],
        ipv4: r.IPv4Data.map((d) => ({ addressSpace: d.AddressSpace, pool: d.Pool, gateway: d.Gateway ?? undefined })),
        ipv6: r.IPv6Data.map((d) => ({ addressSpace: d.AddressSpace, pool: d.Pool, gateway: d.Gateway ?? undefined })),
      });
      return {};
    }),
    'NetworkDriver.DeleteNetwork': route(s.networkRequest, async (r) => {
      await network.deleteNetwork(r.NetworkID);
      return {};
    }),
    'NetworkDriver.AllocateNetwork': route(s.allocateNetworkRequest, async (r) => ({
      Options: await network.allocateNetwork(r.NetworkID, r.Options),
    })),
    'NetworkDriver.FreeNetwork': route(s.networkRequest, async (r) => {
      await network.freeNetwork(r.NetworkID);
      return {};
    }),
    'NetworkDriver.CreateEndpoint': route(s.createEndpointRequest, async (r) => {
      const { macAddress } = await network.createEndpoint({
        networkId: r.NetworkID,
        endpointId: r.EndpointID,
        address: r.Interface.Address,
        addressIPv6: r.Interface.AddressIPv6,
        macAddress: r.Interface.MacAddress,
      });
      return macAddress ? { Interface: { MacAddress: macAddress } } : {};
    }),
    'NetworkDriver.EndpointOperInfo': route(s.endpointRequest, async (r) => ({
      Value: await network.endpointInfo(r.NetworkID, r.EndpointID),
    })),
    'NetworkDriver.DeleteEndpoint': route(s.endpointRequest, async (r) => {
      await network.deleteEndpoint(r.NetworkID, r.EndpointID);
      return {};
    }),
    'NetworkDriver.Join': route(s.joinRequest, async (r) => {
      const { srcName } = await network.join(r.NetworkID, r.EndpointID);
      // No gateway: Docker then gives the container eth1 on docker_gwbridge for outside access.
      return { InterfaceName: { SrcName: srcName, DstPrefix: 'eth' }, DisableGatewayService: false };
    }),
    'NetworkDriver.Leave': route(s.endpointRequest, async (r) => {
      await network.leave(r.NetworkID, r.EndpointID);
      return {};
    }),
    'NetworkDriver.DiscoverNew': route(s.discoveryRequest, async (r) => {
      logger.info('discovery: new', { type: r.DiscoveryType, ...discoverySummary(r.DiscoveryData) });
      return {};
    }),
    'NetworkDriver.DiscoverDelete': route(s.discoveryRequest, async (r) => {
      logger.info('discovery: delete', { type: r.DiscoveryType, ...discoverySummary(r.DiscoveryData) });
      return {};
    }),
    // Join names no gateway, so Docker 29 (which calls these only for the endpoint that is a
    // sandbox's gateway) never sends them; older engines may, and outside access is
    // docker_gwbridge's business either way: nothing to program, for any endpoint.
    'NetworkDriver.ProgramExternalConnectivity': route(s.programConnectivityRequest, ok),
    'NetworkDriver.RevokeExternalConnectivity': route(s.endpointRequest, ok),
    'NetworkDriver.GwAllocCheck': route(s.gwAllocCheckRequest, async () => ({ SkipIPv4: false, SkipIPv6: false })),

    'IpamDriver.GetCapabilities': route(s.emptyRequest, async () => ({ RequiresMACAddress: false, RequiresRequestReplay: true })),
    'IpamDriver.GetDefaultAddressSpaces': route(s.emptyRequest, async () => ({
      LocalDefaultAddressSpace: LOCAL_ADDRESS_SPACE,
      GlobalDefaultAddressSpace: GLOBAL_ADDRESS_SPACE,
    })),
    'IpamDriver.RequestPool': route(s.requestPoolRequest, async (r) => {
      const { poolId, pool } = await ipam.requestPool({
        addressSpace: r.AddressSpace,
        pool: r.Pool || undefined,
        subPool: r.SubPool || undefined,
        v6: r.V6,
      });
      return { PoolID: poolId, Pool: pool, Data: {} };
    }),
    'IpamDriver.ReleasePool': route(s.poolIdRequest, async (r) => {
      await ipam.releasePool(r.PoolID);
      return {};
    }),
    'IpamDriver.RequestAddress': route(s.requestAddressRequest, async (r, context) => {
      // The request id is the gate's (journaled with the body: a replay after a crash gets the
      // same id back, and so the same address); one a caller put in Options is dropped.
      const { [REQUEST_ID_OPTION]: _callers, ...options } = r.Options;
      const { address } = await ipam.requestAddress({
        poolId: r.PoolID,
        address: r.Address || undefined,
        options,
        ...(context ? { requestId: context.requestId } : {}),
      });
      return { Address: address, Data: {} };
    }),
    'IpamDriver.ReleaseAddress': route(s.releaseAddressRequest, async (r) => {
      // First: an endpoint still holding the address lost its DeleteEndpoint (see Recovery).
      await recovery.deleteEndpointsLostWithAddress(r.PoolID, r.Address);
      await ipam.releaseAddress(r.PoolID, r.Address);
      return {};
    }),
  };
}

/**
 * The fields of DiscoveryData worth logging, checked and bounded. Never the raw value: it is
 * arbitrary JSON (a deeply nested one makes the JSON logger overflow its stack; a huge one
 * floods the log).
 */
function discoverySummary(data: unknown): Record<string, string | boolean> {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return {};
  const out: Record<string, string | boolean> = {};
  for (const field of ['Address', 'BindAddress'] as const) {
    const v: unknown = (data as Record<string, unknown>)[field];
    if (typeof v === 'string') out[field] = v.slice(0, 64);
  }
  const self: unknown = (data as Record<string, unknown>).Self;
  if (typeof self === 'boolean') out.Self = self;
  return out;
}
