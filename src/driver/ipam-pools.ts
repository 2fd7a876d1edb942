/**
 * IPAM's pools: address spaces, pool ids (derived from the subnet, so every host names the
 * same pool alike), the default pool range, and checking what Docker asks for against them.
 */

import { PluginError } from '../util/errors';
import type { RecordStore } from './record-store';
import { keys, poolRecordSchema } from './records';
import { bigToIp, familyOf, hostRange, ipToBig, overlaps, parseAddressCidr, parseSubnet, type Family, type Subnet } from './subnet';

export const LOCAL_ADDRESS_SPACE = 'tsoverlay-local';
export const GLOBAL_ADDRESS_SPACE = 'tsoverlay-global';
/** Where pools come from when `docker network create` gives no `--subnet`. */
export const DEFAULT_POOL_RANGE = '10.210.0.0/16';
export const DEFAULT_POOL_PREFIX = 24;
/** IPv6 pools for `--ipv6` without an IPv6 `--subnet`: /64s of one unique-local /48. */
export const DEFAULT_POOL6_RANGE = 'fd74:736f:7665::/48';
export const DEFAULT_POOL6_PREFIX = 64;
/**
 * Swarm: the managers' allocator asks in the global address space and decides every address
 * of a swarm network; each engine then asks again, in the local space, for exactly those
 * addresses. Pools asked in the global space are "swarm" pools (their addresses belong to the
 * pseudo host SWARM_HOLDER, whichever manager leads); a local-space request for a subnet that
 * is a swarm pool gets a "node" view that accepts the manager's choices without a second
 * allocation. Pool ids carry the kind as a prefix.
 */
export const SWARM_HOLDER = '@swarm';
export const SWARM_POOL_PREFIX = 'swarm:';
export const NODE_VIEW_PREFIX = 'node:';
export type PoolKind = 'cluster' | 'swarm' | 'node';

export function poolIdFor(subnet: Subnet, subPool?: Subnet): string {
  return subPool && subPool.cidr !== subnet.cidr ? `${subnet.cidr}@${subPool.cidr}` : subnet.cidr;
}

export function parsePoolId(poolId: string): { subnet: Subnet; range: Subnet; kind: PoolKind } {
  const kind: PoolKind = poolId.startsWith(SWARM_POOL_PREFIX) ? 'swarm' : poolId.startsWith(NODE_VIEW_PREFIX) ? 'node' : 'cluster';
  const bare = kind === 'swarm' ? poolId.slice(SWARM_POOL_PREFIX.length) : kind === 'node' ? poolId.slice(NODE_VIEW_PREFIX.length) : poolId;
  const [pool, sub, ...rest] = bare.split('@');
  if (!pool || rest.length > 0) throw new PluginError(`invalid pool id "${poolId}"`);
  try {
    const subnet = parseSubnet(pool);
    return { subnet, range: sub ? parseSubnet(sub) : subnet, kind };
  } catch {
    throw new PluginError(`invalid pool id "${poolId}"`);
  }
}

export function parsePool(text: string): Subnet {
  try {
    return parseSubnet(text);
  } catch (err) {
    throw new PluginError((err as Error).message);
  }
}

/** A requested address as a bare IP (IPv6 in RFC 5952 form), refused unless it is a usable host address of `subnet`. */
export function checkAddress(subnet: Subnet, text: string): string {
  let ip: string;
  try {
    ip = parseAddressCidr(text).ip;
  } catch (err) {
    throw new PluginError((err as Error).message);
  }
  if (familyOf(ip) !== subnet.family) throw new PluginError(`address ${ip} is not an IPv${subnet.family} address of ${subnet.cidr}`);
  const n = ipToBig(ip);
  const { first, last } = hostRange(subnet);
  if (n < first || n > last) throw new PluginError(`address ${ip} is not a usable host address of ${subnet.cidr}`);
  return ip;
}

export async function refuseOverlaps(records: RecordStore, subnet: Subnet, addressSpace: string): Promise<void> {
  for (const pool of await records.list(poolRecordSchema, keys.pools())) {
    if (pool.value.addressSpace !== addressSpace || pool.value.pool === subnet.cidr) continue;
    if (overlaps(parseSubnet(pool.value.pool), subnet)) {
      throw new PluginError(`subnet ${subnet.cidr} overlaps pool ${pool.value.pool} already in use`, 409);
    }
  }
}

export async function pickDefaultPool(records: RecordStore, family: Family = 4): Promise<Subnet> {
  const [rangeText, prefix] = family === 4 ? [DEFAULT_POOL_RANGE, DEFAULT_POOL_PREFIX] : [DEFAULT_POOL6_RANGE, DEFAULT_POOL6_PREFIX];
  const range = parseSubnet(rangeText);
  const used = (await records.list(poolRecordSchema, keys.pools())).flatMap((p) => {
    try {
      return [parseSubnet(p.value.pool)];
    } catch {
      return []; // a pool of a range this version refuses: it overlaps none of ours
    }
  });
  const step = 1n << BigInt((family === 4 ? 32 : 128) - prefix);
  for (let n = range.network; n < range.network + range.size; n += step) {
    const candidate = parseSubnet(`${bigToIp(n, family)}/${prefix}`);
    if (!used.some((u) => overlaps(u, candidate))) return candidate;
  }
  throw new PluginError(`no free /${prefix} left in ${rangeText}; pass --subnet`, 409);
}
