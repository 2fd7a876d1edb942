import { z } from 'zod';

/**
 * The JSON records kept in the store (readable with `etcdctl get` or `consul kv get`). Every read goes through these schemas:
 * another host, an older version or a human with `etcdctl put` may have written the value.
 */

const modeSchema = z.enum(['static', 'miss', 'p2p', 'multicast']);

export const networkRecordSchema = z.object({
  key: z.string(),
  name: z.string().optional(),
  /** Docker network ids that map to this network (one per host in standalone mode, one in swarm). */
  ids: z.array(z.string()),
  vni: z.number().int(),
  /** The IPv4 subnet and gateway: empty on an IPv6-only network (`--ipv4=false`). */
  subnet: z.string(),
  gateway: z.string(),
  /** The IPv6 subnet and gateway (dual-stack and IPv6-only networks). */
  subnet6: z.string().optional(),
  gateway6: z.string().optional(),
  mtu: z.number().int(),
  mode: modeSchema,
  options: z.record(z.string()),
  created: z.string(),
});
export type NetworkRecord = z.infer<typeof networkRecordSchema>;

/** Which store network a Docker network id maps to, and the data Join needs on this host. */
export const networkIdRecordSchema = z.object({
  networkKey: z.string(),
  /** Host that created this Docker network id (in swarm every host shares one id). */
  host: z.string(),
  /** p2p: this host's `-o remote=` (each of the two hosts names the other one). */
  remote: z.string().optional(),
  /** The subnet of tsoverlay's IPAM pool this host requested for the network (absent with Docker's IPAM or in swarm). */
  pool: z.string().optional(),
  /** The IPv6 pool, beside `pool` (dual-stack) or alone (IPv6-only). */
  pool6: z.string().optional(),
  created: z.string(),
});
export type NetworkIdRecord = z.infer<typeof networkIdRecordSchema>;

export const endpointRecordSchema = z.object({
  id: z.string(),
  networkId: z.string(),
  /** The container's IPv4 address: empty on an IPv6-only network. */
  ip: z.string(),
  /** The container's IPv6 address (dual-stack and IPv6-only networks). */
  ip6: z.string().optional(),
  mac: z.string(),
  /**
   * Underlay address of the VTEP of the host running the container, as it was when the record
   * was written. Informational only (`inspect` shows it; older versions wrote it): peers take
   * the VTEP from the live `hosts/<host>` record, which follows a host whose address changed.
   */
  locator: z.string(),
  host: z.string(),
  name: z.string().optional(),
  /** Peers program only joined endpoints: a created-but-not-joined endpoint has no veth yet. */
  joined: z.boolean(),
  created: z.string(),
});
export type EndpointRecord = z.infer<typeof endpointRecordSchema>;

export const hostRecordSchema = z.object({
  name: z.string(),
  vtep: z.string(),
  /** Stable identity of the machine (kept under the state directory); absent in records of older versions. */
  instance: z.string().optional(),
  /**
   * Store revision of the last endpoint this host withdrew at start-up (crash recovery): peers
   * program its endpoints only once their view of `endpoints/` has reached it, so a host that
   * comes back never has its dead containers advertised, whatever order the watches deliver in.
   */
  settled: z.number().int().nonnegative().optional(),
  /**
   * The same per network key (the revision of the last withdrawal in that network): a peer
   * follows only the networks it has containers on, and waits only for those.
   */
  settledIn: z.record(z.number().int().nonnegative()).optional(),
  started: z.string(),
});
export type HostRecord = z.infer<typeof hostRecordSchema>;

export const poolRecordSchema = z.object({
  pool: z.string(),
  addressSpace: z.string(),
  /** Hosts holding the pool: it is released when the last one lets go. */
  holders: z.array(z.string()),
  created: z.string(),
});
export type PoolRecord = z.infer<typeof poolRecordSchema>;

export const addressRecordSchema = z.object({
  host: z.string(),
  kind: z.enum(['gateway', 'endpoint', 'reserved']),
  name: z.string().optional(),
  /** The plugin's id of the request that allocated it: a replay of that request gets the same address. */
  request: z.string().optional(),
  created: z.string(),
});
export type AddressRecord = z.infer<typeof addressRecordSchema>;

/** A MAC allocated for a container with no IPv4 address in a large IPv6 subnet (see mac.ts). */
export const macRecordSchema = z.object({
  ip: z.string(),
  host: z.string(),
  created: z.string(),
});
export type MacRecord = z.infer<typeof macRecordSchema>;

/** A pool block claimed by a host for its allocations (a hint against contention, see ipam-blocks.ts). */
export const blockRecordSchema = z.object({
  host: z.string(),
  created: z.string(),
});
export type BlockRecord = z.infer<typeof blockRecordSchema>;

export const vniRecordSchema = z.object({
  networkKey: z.string(),
  created: z.string(),
});
export type VniRecord = z.infer<typeof vniRecordSchema>;

const NETWORKS = 'networks/';
const NETWORK_IDS = 'netids/';
const ENDPOINTS = 'endpoints/';
const HOSTS = 'hosts/';
const POOLS = 'ipam/pools/';
const ADDRESSES = 'ipam/addresses/';
const MACS = 'ipam/macs/';
const VNIS = 'vni/';
const BLOCKS = 'ipam/blocks/';
const HOST_ENDPOINTS = 'hostendpoints/';
const HOST_ENDPOINTS_INDEXED = 'hostendpoints-indexed/';

/** What follows `prefix` in `key`, if `key` is under it and names one record (no further `/`). */
function leaf(prefix: string, key: string): string | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const rest = key.slice(prefix.length);
  return rest.length > 0 && !rest.includes('/') ? rest : undefined;
}

/** `a/b` under `prefix` split in two, if `key` has that shape. */
function pair(prefix: string, key: string): [string, string] | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const parts = key.slice(prefix.length).split('/');
  return parts.length === 2 && parts[0] && parts[1] ? [parts[0], parts[1]] : undefined;
}

/**
 * Store key layout, relative to the store prefix: every key is built and parsed here, so that
 * the driver, `inspect` and the docs agree. The parsers answer undefined for a key of another shape.
 */
export const keys = {
  network: (networkKey: string) => `${NETWORKS}${networkKey}`,
  networks: () => NETWORKS,
  /** The network key of a `networks/<key>` key. */
  networkKeyOf: (key: string) => leaf(NETWORKS, key),
  networkId: (networkId: string) => `${NETWORK_IDS}${networkId}`,
  networkIds: () => NETWORK_IDS,
  /** The Docker network id of a `netids/<id>` key. */
  networkIdOf: (key: string) => leaf(NETWORK_IDS, key),
  endpoint: (networkKey: string, endpointId: string) => `${ENDPOINTS}${networkKey}/${endpointId}`,
  endpoints: (networkKey: string) => `${ENDPOINTS}${networkKey}/`,
  allEndpoints: () => ENDPOINTS,
  /** The network key and endpoint id of an `endpoints/<network key>/<endpoint id>` key. */
  parseEndpoint: (key: string): { networkKey: string; endpointId: string } | undefined => {
    const parts = pair(ENDPOINTS, key);
    return parts && { networkKey: parts[0], endpointId: parts[1] };
  },
  /** This host's index entry of an endpoint record (endpoint-index.ts). */
  hostEndpoint: (host: string, networkKey: string, endpointId: string) => `${HOST_ENDPOINTS}${host}/${networkKey}/${endpointId}`,
  hostEndpoints: (host: string) => `${HOST_ENDPOINTS}${host}/`,
  /** The network key and endpoint id of one of `host`'s index entries. */
  parseHostEndpoint: (host: string, key: string): { networkKey: string; endpointId: string } | undefined => {
    const parts = pair(`${HOST_ENDPOINTS}${host}/`, key);
    return parts && { networkKey: parts[0], endpointId: parts[1] };
  },
  /** Present once `host`'s index holds every endpoint record of that host. */
  hostEndpointsIndexed: (host: string) => `${HOST_ENDPOINTS_INDEXED}${host}`,
  host: (host: string) => `${HOSTS}${host}`,
  hosts: () => HOSTS,
  /** The host name of a `hosts/<name>` key. */
  hostOf: (key: string) => leaf(HOSTS, key),
  pool: (poolKey: string) => `${POOLS}${poolKey}`,
  pools: () => POOLS,
  address: (poolKey: string, ip: string) => `${ADDRESSES}${poolKey}/${ip}`,
  addresses: (poolKey: string) => `${ADDRESSES}${poolKey}/`,
  /** The IP of an `ipam/addresses/<pool key>/<ip>` key of that pool. */
  addressOf: (poolKey: string, key: string) => leaf(`${ADDRESSES}${poolKey}/`, key),
  mac: (poolKey: string, mac: string) => `${MACS}${poolKey}/${mac}`,
  macs: (poolKey: string) => `${MACS}${poolKey}/`,

  block: (poolKey: string, firstIp: string) => `${BLOCKS}${poolKey}/${firstIp}`,
  blocks: (poolKey: string) => `${BLOCKS}${poolKey}/`,
  /** The first IP of an `ipam/blocks/<pool key>/<ip>` key of that pool. */
  blockOf: (poolKey: string, key: string) => leaf(`${BLOCKS}${poolKey}/`, key),
  vni: (vni: number) => `${VNIS}${vni}`,
  vnis: () => VNIS,
  /** The VNI of a `vni/<n>` key. */
  vniOf: (key: string): number | undefined => {
    const text = leaf(VNIS, key);
    return text !== undefined && /^\d+$/.test(text) ? Number(text) : undefined;
  },
};

export function decodeRecord<T>(schema: z.ZodType<T>, value: string, key: string): T {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new Error(`store record ${key} is not JSON`);
  }
  const result = schema.safeParse(parsed);
  if (!result.success) throw new Error(`store record ${key} is malformed: ${result.error.issues[0]?.message ?? 'invalid'}`);
  return result.data;
}

export function encodeRecord<T>(record: T): string {
  return JSON.stringify(record);
}
