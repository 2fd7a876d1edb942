import type { Logger } from '../log';
import { PluginError } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { RecordStore, nowIso } from './record-store';
import { addressRecordSchema, decodeRecord, keys, poolRecordSchema, type AddressRecord } from './records';
import { contains, hostRange, intToIp, ipToInt, overlaps, parseAddressCidr, parseSubnet, subnetKey, type Subnet } from './subnet';

export const LOCAL_ADDRESS_SPACE = 'tsoverlay-local';
export const GLOBAL_ADDRESS_SPACE = 'tsoverlay-global';
export const GATEWAY_REQUEST = 'com.docker.network.gateway';
export const ENDPOINT_NAME_OPTION = 'com.docker.network.endpoint.name';
/**
 * Set by the daemon (never by Docker) on each RequestAddress it runs: an id of the request, kept
 * in the address record, so that running the same request again after a crash (see
 * protocol/inflight.ts) returns the address the first run allocated instead of a second one.
 */
export const REQUEST_ID_OPTION = 'tsoverlay.request-id';
/** Where pools come from when `docker network create` gives no `--subnet`. */
export const DEFAULT_POOL_RANGE = '10.210.0.0/16';
export const DEFAULT_POOL_PREFIX = 24;
/**
 * Swarm: the managers' allocator asks in the global address space and decides every address
 * of a swarm network; each engine then asks again, in the local space, for exactly those
 * addresses. Pools asked in the global space are "swarm" pools (their addresses belong to the
 * pseudo host SWARM_HOLDER, whichever manager leads); a local-space request for a subnet that
 * is a swarm pool gets a "node" view that accepts the manager's choices without a second
 * allocation. Pool ids carry the kind as a prefix.
 */
export const SWARM_HOLDER = '@swarm';
const SWARM_POOL_PREFIX = 'swarm:';
const NODE_VIEW_PREFIX = 'node:';
export type PoolKind = 'cluster' | 'swarm' | 'node';

export interface PoolRequest {
  addressSpace: string;
  pool?: string;
  subPool?: string;
  v6: boolean;
}

export interface AddressRequest {
  poolId: string;
  address?: string;
  options: Record<string, string>;
  requestId?: string;
}

/**
 * Cluster-wide IPAM kept in the store. Uniqueness comes from create-if-absent on one key
 * per address (`ipam/addresses/<subnet>/<ip>`): two hosts racing for the same address
 * both try to create the key and exactly one succeeds, the loser moves on.
 * Pool ids are derived from the subnet so that every host names the same pool alike.
 */
export class IpamService {
  private readonly subnetLocks = new KeyedMutex();

  constructor(
    private readonly records: RecordStore,
    private readonly hostName: string,
    private readonly logger: Logger,
  ) {}

  async requestPool(req: PoolRequest): Promise<{ poolId: string; pool: string }> {
    if (req.v6) throw new PluginError('tsoverlay does not support IPv6 pools yet; create the network without --ipv6');
    if (req.addressSpace !== LOCAL_ADDRESS_SPACE && req.addressSpace !== GLOBAL_ADDRESS_SPACE) {
      throw new PluginError(`unknown address space "${req.addressSpace}" (tsoverlay has ${LOCAL_ADDRESS_SPACE} and ${GLOBAL_ADDRESS_SPACE})`);
    }
    if (req.subPool && !req.pool) throw new PluginError('an --ip-range needs a --subnet');
    const subnet = req.pool ? this.parsePool(req.pool) : await this.pickDefaultPool();
    if (req.subPool) {
      const sub = this.parsePool(req.subPool);
      if (!contains(subnet, intToIp(sub.network)) || sub.prefixLength < subnet.prefixLength) {
        throw new PluginError(`--ip-range ${sub.cidr} is not inside --subnet ${subnet.cidr}`);
      }
    }
    const baseId = this.poolIdFor(subnet, req.subPool ? parseSubnet(req.subPool) : undefined);
    const swarm = req.addressSpace === GLOBAL_ADDRESS_SPACE;
    let poolId = swarm ? `${SWARM_POOL_PREFIX}${baseId}` : baseId;
    const owner = swarm ? SWARM_HOLDER : this.hostName;
    await this.subnetLocks.run(subnet.cidr, async () => {
      const existing = await this.records.get(poolRecordSchema, keys.pool(subnetKey(subnet)));
      if (!swarm && existing?.value.addressSpace === GLOBAL_ADDRESS_SPACE) {
        poolId = `${NODE_VIEW_PREFIX}${baseId}`;
        return;
      }
      if (existing && existing.value.addressSpace !== req.addressSpace) {
        throw new PluginError(`subnet ${subnet.cidr} is already used by a ${swarm ? 'non-swarm' : 'swarm'} network`, 409);
      }
      await this.refuseOverlaps(subnet, req.addressSpace);
      await this.records.update(poolRecordSchema, keys.pool(subnetKey(subnet)), (current) => {
        if (current?.holders.includes(owner)) return undefined;
        return current
          ? { ...current, holders: [...current.holders, owner] }
          : { pool: subnet.cidr, addressSpace: req.addressSpace, holders: [owner], created: nowIso() };
      });
    });
    this.logger.info('pool requested', { poolId, pool: subnet.cidr });
    return { poolId, pool: subnet.cidr };
  }

  /**
   * The host lets go of the pool. The pool record and any addresses left in it go
   * only when no host holds it any more: other hosts may still run containers in it.
   */
  async releasePool(poolId: string): Promise<void> {
    const { subnet, kind } = this.parsePoolId(poolId);
    if (kind === 'node') return; // the swarm managers release the pool itself
    const owner = kind === 'swarm' ? SWARM_HOLDER : this.hostName;
    const sKey = subnetKey(subnet);
    await this.subnetLocks.run(subnet.cidr, async () => {
      const after = await this.records.update(poolRecordSchema, keys.pool(sKey), (current) => {
        if (!current) return undefined;
        if (!current.holders.includes(owner)) return undefined;
        const holders = current.holders.filter((h) => h !== owner);
        return holders.length === 0 ? null : { ...current, holders };
      });
      if (after === undefined) {
        const stillThere = await this.records.get(poolRecordSchema, keys.pool(sKey));
        if (!stillThere) await this.records.store.deletePrefix(keys.addresses(sKey));
      } else {
        await this.releaseHostAddresses(sKey, owner);
      }
    });
    this.logger.info('pool released', { poolId });
  }

  async requestAddress(req: AddressRequest): Promise<{ address: string }> {
    const { subnet, range, kind } = this.parsePoolId(req.poolId);
    const sKey = subnetKey(subnet);
    const pool = await this.records.get(poolRecordSchema, keys.pool(sKey));
    if (!pool) throw new PluginError(`unknown pool "${req.poolId}": request the pool first`, 404);
    const isGateway = req.options.RequestAddressType === GATEWAY_REQUEST;
    const name = req.options[ENDPOINT_NAME_OPTION];
    const requestId = req.options[REQUEST_ID_OPTION];
    const withPrefix = (ip: string) => ({ address: `${ip}/${subnet.prefixLength}` });
    if (kind === 'node' && (req.address || isGateway)) {
      // A swarm manager allocated this address (or it is the gateway): this engine just uses it.
      return withPrefix(req.address ? this.checkAddress(subnet, req.address) : intToIp(hostRange(subnet).first));
    }
    const owner = kind === 'cluster' ? this.hostName : SWARM_HOLDER;
    const record: AddressRecord = {
      host: owner,
      kind: isGateway ? 'gateway' : 'endpoint',
      ...(name ? { name } : {}),
      ...(requestId ? { request: requestId } : {}),
      created: nowIso(),
    };

    if (req.address || isGateway) {
      const ip = req.address ? this.checkAddress(subnet, req.address) : intToIp(hostRange(subnet).first);
      const key = keys.address(sKey, ip);
      if (await this.records.create(key, record)) {
        this.logger.debug('address allocated', { pool: req.poolId, ip, requested: true, gateway: isGateway });
        return withPrefix(ip);
      }
      const holder = await this.records.get(addressRecordSchema, key);
      // The gateway is shared by every host of the network; an endpoint address may be
      // asked again by Docker's replay at daemon start: both are the same holder asking twice.
      if (holder && (holder.value.kind === 'gateway' ? isGateway : holder.value.host === owner && !isGateway)) {
        this.logger.debug('address requested again by its holder', { pool: req.poolId, ip });
        return withPrefix(ip);
      }
      if (!holder) return this.requestAddress(req);
      throw new PluginError(`address ${ip} is already in use in ${subnet.cidr} (by ${holder.value.name ?? 'a container'} on ${holder.value.host})`, 409);
    }

    return this.subnetLocks.run(subnet.cidr, async () => {
      for (let attempt = 0; attempt < 64; attempt++) {
        const entries = await this.records.store.list(keys.addresses(sKey));
        const again = this.heldFor(entries, sKey, range, { name, requestId });
        if (again) {
          // The same request run again after a crash, or Docker asking again for the same container
          // (the release never arrived): the same address, not a second one.
          this.logger.info('address requested again', { pool: req.poolId, ip: again, ...(name ? { name } : {}), replay: Boolean(requestId) });
          return withPrefix(again);
        }
        const taken = new Set(entries.map((e) => e.key.slice(keys.addresses(sKey).length)));
        const ip = this.firstFree(range, taken);
        if (!ip) throw new PluginError(`no free address left in ${range.cidr}`, 409);
        if (await this.records.create(keys.address(sKey, ip), record)) {
          this.logger.debug('address allocated', { pool: req.poolId, ip });
          return withPrefix(ip);
        }
      }
      throw new PluginError(`could not allocate an address in ${range.cidr}: too much contention, try again`, 503);
    });
  }

  async releaseAddress(poolId: string, address: string): Promise<void> {
    const { subnet, kind } = this.parsePoolId(poolId);
    if (kind === 'node') return; // the swarm managers release what they allocated
    const ip = this.checkAddress(subnet, address);
    const key = keys.address(subnetKey(subnet), ip);
    const holder = await this.records.get(addressRecordSchema, key);
    // The shared gateway stays until the pool itself goes; another host's address is not ours to free.
    const owner = kind === 'swarm' ? SWARM_HOLDER : this.hostName;
    if (!holder || holder.value.kind === 'gateway' || holder.value.host !== owner) return;
    const released = await this.records.store.compareAndDelete(key, holder.revision);
    this.logger.debug('address released', { pool: poolId, ip, released });
  }

  poolIdFor(subnet: Subnet, subPool?: Subnet): string {
    return subPool && subPool.cidr !== subnet.cidr ? `${subnet.cidr}@${subPool.cidr}` : subnet.cidr;
  }

  parsePoolId(poolId: string): { subnet: Subnet; range: Subnet; kind: PoolKind } {
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

  private parsePool(text: string): Subnet {
    try {
      return parseSubnet(text);
    } catch (err) {
      throw new PluginError((err as Error).message);
    }
  }

  private checkAddress(subnet: Subnet, text: string): string {
    let ip: string;
    try {
      ip = parseAddressCidr(text).ip;
    } catch (err) {
      throw new PluginError((err as Error).message);
    }
    const n = ipToInt(ip);
    const { first, last } = hostRange(subnet);
    if (n < first || n > last) throw new PluginError(`address ${ip} is not a usable host address of ${subnet.cidr}`);
    return ip;
  }

  /** An endpoint address of `range` this host already holds for the same request id or container name. */
  private heldFor(
    entries: { key: string; value: string }[],
    sKey: string,
    range: Subnet,
    by: { name?: string; requestId?: string },
  ): string | undefined {
    if (!by.name && !by.requestId) return undefined;
    for (const e of entries) {
      let record: AddressRecord;
      try {
        record = decodeRecord(addressRecordSchema, e.value, e.key);
      } catch {
        continue;
      }
      if (record.host !== this.hostName || record.kind !== 'endpoint') continue;
      const same = (by.requestId !== undefined && record.request === by.requestId) || (by.name !== undefined && record.name === by.name);
      if (!same) continue;
      const ip = e.key.slice(keys.addresses(sKey).length);
      try {
        if (contains(range, ip)) return ip;
      } catch {
        // a key that is no address (edited by hand): not ours to hand out
      }
    }
    return undefined;
  }

  private firstFree(range: Subnet, taken: Set<string>): string | undefined {
    const { first, last } = hostRange(range);
    for (let n = first; n <= last; n++) {
      const ip = intToIp(n);
      if (!taken.has(ip)) return ip;
    }
    return undefined;
  }

  private async refuseOverlaps(subnet: Subnet, addressSpace: string): Promise<void> {
    for (const pool of await this.records.list(poolRecordSchema, keys.pools())) {
      if (pool.value.addressSpace !== addressSpace || pool.value.pool === subnet.cidr) continue;
      if (overlaps(parseSubnet(pool.value.pool), subnet)) {
        throw new PluginError(`subnet ${subnet.cidr} overlaps pool ${pool.value.pool} already in use`, 409);
      }
    }
  }

  private async pickDefaultPool(): Promise<Subnet> {
    const range = parseSubnet(DEFAULT_POOL_RANGE);
    const used = (await this.records.list(poolRecordSchema, keys.pools())).map((p) => parseSubnet(p.value.pool));
    const step = 2 ** (32 - DEFAULT_POOL_PREFIX);
    for (let n = range.network; n < range.network + range.size; n += step) {
      const candidate = parseSubnet(`${intToIp(n)}/${DEFAULT_POOL_PREFIX}`);
      if (!used.some((u) => overlaps(u, candidate))) return candidate;
    }
    throw new PluginError(`no free /${DEFAULT_POOL_PREFIX} left in ${DEFAULT_POOL_RANGE}; pass --subnet`, 409);
  }

  private async releaseHostAddresses(sKey: string, owner: string = this.hostName): Promise<void> {
    for (const a of await this.records.list(addressRecordSchema, keys.addresses(sKey))) {
      if (a.value.host === owner && a.value.kind === 'endpoint') {
        await this.records.store.compareAndDelete(a.key, a.revision);
      }
    }
  }
}
