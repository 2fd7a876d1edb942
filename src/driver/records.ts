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
  subnet: z.string(),
  gateway: z.string(),
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
  created: z.string(),
});
export type NetworkIdRecord = z.infer<typeof networkIdRecordSchema>;

export const endpointRecordSchema = z.object({
  id: z.string(),
  networkId: z.string(),
  ip: z.string(),
  mac: z.string(),
  /** Underlay address of the VTEP of the host running the container. */
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

export const vniRecordSchema = z.object({
  networkKey: z.string(),
  created: z.string(),
});
export type VniRecord = z.infer<typeof vniRecordSchema>;

/** Store key layout, relative to the store prefix. One place so that `inspect` and docs agree. */
export const keys = {
  network: (networkKey: string) => `networks/${networkKey}`,
  networks: () => 'networks/',
  networkId: (networkId: string) => `netids/${networkId}`,
  networkIds: () => 'netids/',
  endpoint: (networkKey: string, endpointId: string) => `endpoints/${networkKey}/${endpointId}`,
  endpoints: (networkKey: string) => `endpoints/${networkKey}/`,
  allEndpoints: () => 'endpoints/',
  host: (host: string) => `hosts/${host}`,
  hosts: () => 'hosts/',
  pool: (poolKey: string) => `ipam/pools/${poolKey}`,
  pools: () => 'ipam/pools/',
  address: (poolKey: string, ip: string) => `ipam/addresses/${poolKey}/${ip}`,
  addresses: (poolKey: string) => `ipam/addresses/${poolKey}/`,
  vni: (vni: number) => `vni/${vni}`,
  vnis: () => 'vni/',
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
