import type { Logger } from '../log';
import { PluginError } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { RecordStore, nowIso } from './record-store';
import { addressRecordSchema, keys, poolRecordSchema, type AddressRecord } from './records';
import { contains, hostRange, intToIp, ipToInt, overlaps, parseAddressCidr, parseSubnet, subnetKey, type Subnet } from './subnet';

export const LOCAL_ADDRESS_SPACE = 'tsoverlay-local';
export const GLOBAL_ADDRESS_SPACE = 'tsoverlay-global';
export const GATEWAY_REQUEST = 'com.docker.network.gateway';
export const ENDPOINT_NAME_OPTION = 'com.docker.network.endpoint.name';
/** Where pools come from when `docker network create` gives no `--subnet`. */
export const DEFAULT_POOL_RANGE = '10.210.0.0/16';
export const DEFAULT_POOL_PREFIX = 24;

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
    const poolId = this.poolIdFor(subnet, req.subPool ? parseSubnet(req.subPool) : undefined);
    await this.subnetLocks.run(subnet.cidr, async () => {
      await this.refuseOverlaps(subnet, req.addressSpace);
      await this.records.update(poolRecordSchema, keys.pool(subnetKey(subnet)), (current) => {
        if (current?.holders.includes(this.hostName)) return undefined;
        return current
          ? { ...current, holders: [...current.holders, this.hostName] }
          : { pool: subnet.cidr, addressSpace: req.addressSpace, holders: [this.hostName], created: nowIso() };
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
    const { subnet } = this.parsePoolId(poolId);
    const sKey = subnetKey(subnet);
    await this.subnetLocks.run(subnet.cidr, async () => {
      const after = await this.records.update(poolRecordSchema, keys.pool(sKey), (current) => {
        if (!current) return undefined;
        if (!current.holders.includes(this.hostName)) return undefined;
        const holders = current.holders.filter((h) => h !== this.hostName);
        return holders.length === 0 ? null : { ...current, holders };
      });
      if (after === undefined) {
        const stillThere = await this.records.get(poolRecordSchema, keys.pool(sKey));
        if (!stillThere) await this.records.store.deletePrefix(keys.addresses(sKey));
      } else {
        await this.releaseHostAddresses(sKey);
      }
    });
    this.logger.info('pool released', { poolId });
  }

  async requestAddress(req: AddressRequest): Promise<{ address: string }> {
    const { subnet, range } = this.parsePoolId(req.poolId);
    const sKey = subnetKey(subnet);
    const pool = await this.records.get(poolRecordSchema, keys.pool(sKey));
    if (!pool) throw new PluginError(`unknown pool "${req.poolId}": request the pool first`, 404);
    const isGateway = req.options.RequestAddressType === GATEWAY_REQUEST;
    const name = req.options[ENDPOINT_NAME_OPTION];
    const record: AddressRecord = {
      host: this.hostName,
      kind: isGateway ? 'gateway' : 'endpoint',
      ...(name ? { name } : {}),
      created: nowIso(),
    };
    const withPrefix = (ip: string) => ({ address: `${ip}/${subnet.prefixLength}` });

    if (req.address || isGateway) {
      const ip = req.address ? this.checkAddress(subnet, req.address) : intToIp(hostRange(subnet).first);
      const key = keys.address(sKey, ip);
      if (await this.records.create(key, record)) return withPrefix(ip);
      const holder = await this.records.get(addressRecordSchema, key);
      // The gateway is shared by every host of the network; an endpoint address may be
      // asked again by Docker's replay at daemon start: both are the same holder asking twice.
      if (holder && (holder.value.kind === 'gateway' ? isGateway : holder.value.host === this.hostName && !isGateway)) {
        return withPrefix(ip);
      }
      if (!holder) return this.requestAddress(req);
      throw new PluginError(`address ${ip} is already in use in ${subnet.cidr} (by ${holder.value.name ?? 'a container'} on ${holder.value.host})`, 409);
    }

    return this.subnetLocks.run(subnet.cidr, async () => {
      for (let attempt = 0; attempt < 64; attempt++) {
        const taken = new Set(
          (await this.records.store.list(keys.addresses(sKey))).map((e) => e.key.slice(keys.addresses(sKey).length)),
        );
        const ip = this.firstFree(range, taken);
        if (!ip) throw new PluginError(`no free address left in ${range.cidr}`, 409);
        if (await this.records.create(keys.address(sKey, ip), record)) return withPrefix(ip);
      }
      throw new PluginError(`could not allocate an address in ${range.cidr}: too much contention, try again`, 503);
    });
  }

  async releaseAddress(poolId: string, address: string): Promise<void> {
    const { subnet } = this.parsePoolId(poolId);
    const ip = this.checkAddress(subnet, address);
    const key = keys.address(subnetKey(subnet), ip);
    const holder = await this.records.get(addressRecordSchema, key);
    // The shared gateway stays until the pool itself goes; another host's address is not ours to free.
    if (!holder || holder.value.kind === 'gateway' || holder.value.host !== this.hostName) return;
    await this.records.store.compareAndDelete(key, holder.revision);
  }

  poolIdFor(subnet: Subnet, subPool?: Subnet): string {
    return subPool && subPool.cidr !== subnet.cidr ? `${subnet.cidr}@${subPool.cidr}` : subnet.cidr;
  }

  parsePoolId(poolId: string): { subnet: Subnet; range: Subnet } {
    const [pool, sub, ...rest] = poolId.split('@');
    if (!pool || rest.length > 0) throw new PluginError(`invalid pool id "${poolId}"`);
    try {
      const subnet = parseSubnet(pool);
      return { subnet, range: sub ? parseSubnet(sub) : subnet };
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

  private async releaseHostAddresses(sKey: string): Promise<void> {
    for (const a of await this.records.list(addressRecordSchema, keys.addresses(sKey))) {
      if (a.value.host === this.hostName && a.value.kind === 'endpoint') {
        await this.records.store.compareAndDelete(a.key, a.revision);
      }
    }
  }
}
