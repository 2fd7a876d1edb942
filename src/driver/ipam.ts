import type { Logger } from '../log';
import { DEFAULT_REQUEST_TIMEOUT_MS } from './request-deadline';
import { PluginError } from '../util/errors';
import { RecordStore, nowIso } from './record-store';
import { addressRecordSchema, keys, poolRecordSchema, type AddressRecord } from './records';
import { describeHolder, endpointsUsing, sameHolder, type AddressAsk } from './ipam-addresses';
import { PoolAllocator } from './ipam-allocator';
import {
  GLOBAL_ADDRESS_SPACE,
  LOCAL_ADDRESS_SPACE,
  NODE_VIEW_PREFIX,
  SWARM_HOLDER,
  SWARM_POOL_PREFIX,
  checkAddress,
  parsePool,
  parsePoolId,
  pickDefaultPool,
  poolIdFor,
  refuseOverlaps,
} from './ipam-pools';
import { DockerReplays } from './ipam-replay';
import { RequestScopes } from './ipam-scope';
import { firstHost, parseSubnet, subnetKey, type Subnet } from './subnet';

export {
  DEFAULT_POOL_PREFIX,
  DEFAULT_POOL_RANGE,
  GLOBAL_ADDRESS_SPACE,
  LOCAL_ADDRESS_SPACE,
  SWARM_HOLDER,
  type PoolKind,
} from './ipam-pools';
export { DOCKER_REPLAY_SLACK_MS } from './ipam-replay';

export const GATEWAY_REQUEST = 'com.docker.network.gateway';
export const ENDPOINT_NAME_OPTION = 'com.docker.network.endpoint.name';
/**
 * The option under which the daemon's request gate carries its own request id to the route.
 * IPAM never reads it (the id comes only through `AddressRequest.requestId`), and the gate drops
 * one a caller put there: otherwise a caller could claim another request's address.
 */
export const REQUEST_ID_OPTION = 'tsoverlay.request-id';

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

export interface IpamOptions {
  /** Every request answers within this (`--request-timeout`), however long it queued for its subnet. */
  requestTimeoutMs?: number;
}

/**
 * Cluster-wide IPAM kept in the store. Uniqueness comes from create-if-absent on one key
 * per address (`ipam/addresses/<subnet>/<ip>`): two hosts racing for the same address
 * both try to create the key and exactly one succeeds, the loser moves on.
 * Pool ids are derived from the subnet so that every host names the same pool alike.
 *
 * An address is held by one request: asking again for a held address succeeds only for what
 * identifies that request (its request id, the container it was made for, or Docker's start-up
 * replay, see `ipam-replay.ts`), never because the same host asks.
 */
export class IpamService {
  private readonly scopes: RequestScopes;
  /** Subnets whose pool Docker just asked for again although this host held it. */
  private readonly dockerReplay: DockerReplays;
  private readonly allocator: PoolAllocator;
  /** Pools (by subnet key) this host holds, as seen in their record since it last let go of one. */
  private readonly heldPools = new Set<string>();

  constructor(
    records: RecordStore,
    private readonly hostName: string,
    private readonly logger: Logger,
    options: IpamOptions = {},
  ) {
    const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.scopes = new RequestScopes(records, requestTimeoutMs, logger);
    this.dockerReplay = new DockerReplays(requestTimeoutMs);
    this.allocator = new PoolAllocator(hostName, logger);
  }

  async requestPool(req: PoolRequest): Promise<{ poolId: string; pool: string }> {
    if (req.addressSpace !== LOCAL_ADDRESS_SPACE && req.addressSpace !== GLOBAL_ADDRESS_SPACE) {
      throw new PluginError(`unknown address space "${req.addressSpace}" (tsoverlay has ${LOCAL_ADDRESS_SPACE} and ${GLOBAL_ADDRESS_SPACE})`);
    }
    if (req.subPool && !req.pool) throw new PluginError('an --ip-range needs a --subnet');
    return this.scopes.run('RequestPool', async ({ records, lock }) => {
      const family = req.v6 ? 6 : 4;
      const subnet = req.pool ? parsePool(req.pool) : await pickDefaultPool(records, family);
      if (subnet.family !== family) {
        throw new PluginError(`--subnet ${subnet.cidr} is given as an IPv${family} pool: Docker asks for IPv${subnet.family} subnets separately`);
      }
      if (req.subPool) {
        const sub = parsePool(req.subPool);
        const inside = sub.family === subnet.family && sub.network >= subnet.network && sub.network + sub.size <= subnet.network + subnet.size;
        if (!inside) {
          throw new PluginError(`--ip-range ${sub.cidr} is not inside --subnet ${subnet.cidr}`);
        }
      }
      const baseId = poolIdFor(subnet, req.subPool ? parseSubnet(req.subPool) : undefined);
      const swarm = req.addressSpace === GLOBAL_ADDRESS_SPACE;
      let poolId = swarm ? `${SWARM_POOL_PREFIX}${baseId}` : baseId;
      const owner = swarm ? SWARM_HOLDER : this.hostName;
      let alreadyHeld = false;
      await lock(subnet.cidr, async () => {
        const existing = await records.get(poolRecordSchema, keys.pool(subnetKey(subnet)));
        if (!swarm && existing?.value.addressSpace === GLOBAL_ADDRESS_SPACE) {
          poolId = `${NODE_VIEW_PREFIX}${baseId}`;
          return;
        }
        if (existing && existing.value.addressSpace !== req.addressSpace) {
          throw new PluginError(`subnet ${subnet.cidr} is already used by a ${swarm ? 'non-swarm' : 'swarm'} network`, 409);
        }
        await refuseOverlaps(records, subnet, req.addressSpace);
        await records.update(poolRecordSchema, keys.pool(subnetKey(subnet)), (current) => {
          alreadyHeld = current?.holders.includes(owner) ?? false;
          if (alreadyHeld) return undefined;
          return current
            ? { ...current, holders: [...current.holders, owner] }
            : { pool: subnet.cidr, addressSpace: req.addressSpace, holders: [owner], created: nowIso() };
        });
      });
      if (alreadyHeld && !swarm) this.dockerReplay.begin(subnet.cidr);
      this.logger.info('pool requested', { poolId, pool: subnet.cidr, ...(alreadyHeld ? { alreadyHeld } : {}) });
      return { poolId, pool: subnet.cidr };
    });
  }

  /**
   * The host lets go of the pool. The pool record and any addresses left in it go
   * only when no host holds it any more: other hosts may still run containers in it.
   */
  async releasePool(poolId: string): Promise<void> {
    const { subnet, kind } = parsePoolId(poolId);
    if (kind === 'node') return; // the swarm managers release the pool itself
    this.dockerReplay.end();
    const owner = kind === 'swarm' ? SWARM_HOLDER : this.hostName;
    const sKey = subnetKey(subnet);
    await this.scopes.run('ReleasePool', ({ records, lock }) =>
      lock(subnet.cidr, async () => {
        const after = await records.update(poolRecordSchema, keys.pool(sKey), (current) => {
          if (!current) return undefined;
          if (!current.holders.includes(owner)) return undefined;
          const holders = current.holders.filter((h) => h !== owner);
          return holders.length === 0 ? null : { ...current, holders };
        });
        this.allocator.forget(sKey);
        this.heldPools.delete(sKey);
        if (after === undefined) {
          const stillThere = await records.get(poolRecordSchema, keys.pool(sKey));
          if (!stillThere) {
            await records.store.deletePrefix(keys.addresses(sKey));
            await records.store.deletePrefix(keys.macs(sKey));
            await records.store.deletePrefix(keys.blocks(sKey));
          }
        } else {
          await this.releaseHostAddresses(records, sKey, owner);
          await this.allocator.releaseBlocks(records, sKey, owner);
        }
      }),
    );
    this.logger.info('pool released', { poolId });
  }

  async requestAddress(req: AddressRequest): Promise<{ address: string }> {
    const { subnet, range, kind } = parsePoolId(req.poolId);
    const isGateway = req.options.RequestAddressType === GATEWAY_REQUEST;
    const withPrefix = (ip: string) => ({ address: `${ip}/${subnet.prefixLength}` });
    if (kind === 'node' && (req.address || isGateway)) {
      // A swarm manager allocated this address (or it is the gateway): this engine just uses it.
      return withPrefix(req.address ? checkAddress(subnet, req.address) : firstHost(subnet));
    }
    // Docker's start-up replay asks for explicit addresses only: anything else means it is over.
    if (!req.address && !isGateway) this.dockerReplay.end();
    const explicit = req.address || isGateway ? (req.address ? checkAddress(subnet, req.address) : firstHost(subnet)) : undefined;
    // Taken when the request arrives: what follows in the replay comes right after it.
    const replay = explicit && !isGateway && kind === 'cluster' ? this.dockerReplay.current(subnet.cidr) : undefined;
    return this.scopes.run('RequestAddress', async (scope) => {
      const sKey = subnetKey(subnet);
      // A pool this host holds cannot go while it does (it is released when its last holder lets
      // go): once seen, it needs no read per request until this host releases it.
      if (!this.heldPools.has(sKey)) {
        const pool = await scope.records.get(poolRecordSchema, keys.pool(sKey));
        if (!pool) throw new PluginError(`unknown pool "${req.poolId}": request the pool first`, 404);
        // Not a swarm pool: its holder (the swarm) may let go of it from another host.
        if (kind === 'cluster' && pool.value.holders.includes(this.hostName)) this.heldPools.add(sKey);
      }
      const name = req.options[ENDPOINT_NAME_OPTION];
      const requestId = req.requestId;
      const owner = kind === 'cluster' ? this.hostName : SWARM_HOLDER;
      const record: AddressRecord = {
        host: owner,
        kind: isGateway ? 'gateway' : 'endpoint',
        ...(name ? { name } : {}),
        ...(requestId ? { request: requestId } : {}),
        created: nowIso(),
      };
      if (explicit) {
        return withPrefix(
          await this.claimExplicit(scope.records, {
            subnet,
            sKey,
            ip: explicit,
            record,
            isGateway,
            kind,
            ...(name ? { name } : {}),
            ...(requestId ? { requestId } : {}),
            ...(replay ? { replay } : {}),
          }),
        );
      }
      const { ip, again } = await this.allocator.allocate(scope.records, sKey, range, owner, record, { name, requestId });
      if (again) {
        // The same request run again after a crash, or Docker asking again for the same container
        // (the release never arrived): the same address, not a second one.
        this.logger.info('address requested again', { pool: req.poolId, ip, ...(name ? { name } : {}), replay: Boolean(requestId) });
      } else {
        this.logger.debug('address allocated', { pool: req.poolId, ip });
      }
      return withPrefix(ip);
    });
  }

  async releaseAddress(poolId: string, address: string): Promise<void> {
    const { subnet, kind } = parsePoolId(poolId);
    if (kind === 'node') return; // the swarm managers release what they allocated
    this.dockerReplay.end();
    const ip = checkAddress(subnet, address);
    const key = keys.address(subnetKey(subnet), ip);
    await this.scopes.run('ReleaseAddress', async ({ records }) => {
      const holder = await records.get(addressRecordSchema, key);
      // The shared gateway stays until the pool itself goes; another host's address is not ours to free.
      const owner = kind === 'swarm' ? SWARM_HOLDER : this.hostName;
      if (!holder || holder.value.kind === 'gateway' || holder.value.host !== owner) return;
      if (kind === 'cluster') {
        // Docker deletes an endpoint (Leave, DeleteEndpoint) before it releases its address, so a
        // running container of this host still using the address means this release is not its
        // own: a container that never got the address (its run failed) or a stale retry. Freeing
        // it would let the next container, here or on another host, share the running one's address.
        const users = await endpointsUsing(records, subnet, ip, this.hostName, true);
        if (users.length > 0) {
          this.logger.warn('release of an address a running container holds: kept', { pool: poolId, ip, endpoint: users[0]!.id });
          return;
        }
      }
      const released = await records.store.compareAndDelete(key, holder.revision);
      if (released) this.allocator.noteReleased(subnetKey(subnet), ip);
      this.logger.debug('address released', { pool: poolId, ip, released });
    });
  }

  /** An explicit address (or the gateway): create it, or accept it held by this same request. */
  private async claimExplicit(
    records: RecordStore,
    ask: AddressAsk & { subnet: Subnet; sKey: string },
  ): Promise<string> {
    const { subnet, ip, isGateway } = ask;
    const key = keys.address(ask.sKey, ip);
    for (let attempt = 0; attempt < 8; attempt++) {
      if (await records.create(key, ask.record)) {
        this.allocator.noteCreated(ask.sKey, ip, ask.record);
        this.logger.debug('address allocated', { pool: subnet.cidr, ip, requested: true, gateway: isGateway });
        return ip;
      }
      const holder = await records.get(addressRecordSchema, key);
      if (!holder) continue; // released in between: try to create it again
      const why = sameHolder(holder.value, ask);
      if (why) {
        this.logger.debug('address requested again by its holder', { pool: subnet.cidr, ip, why });
        return ip;
      }
      throw new PluginError(`address ${ip} is already in use in ${subnet.cidr}: ${await describeHolder(records, holder.value, subnet, ip)}`, 409);
    }
    throw new PluginError(`address ${ip} in ${subnet.cidr} kept changing hands; try again`, 503);
  }

  private async releaseHostAddresses(records: RecordStore, sKey: string, owner: string = this.hostName): Promise<void> {
    for (const a of await records.list(addressRecordSchema, keys.addresses(sKey))) {
      if (a.value.host === owner && a.value.kind === 'endpoint') {
        await records.store.compareAndDelete(a.key, a.revision);
      }
    }
  }
}
