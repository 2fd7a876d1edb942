import type { Logger } from '../log';
import { Backoff, DEFAULT_TIMEOUT_MS, Deadline, storeWithDeadline, type UncertainCreate } from '../store/util';
import { PluginError, errorMessage } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { RecordStore, nowIso } from './record-store';
import {
  addressRecordSchema,
  decodeRecord,
  endpointRecordSchema,
  keys,
  networkRecordSchema,
  poolRecordSchema,
  type AddressRecord,
  type EndpointRecord,
} from './records';
import { contains, hostRange, intToIp, ipToInt, overlaps, parseAddressCidr, parseSubnet, subnetKey, type Subnet } from './subnet';

export const LOCAL_ADDRESS_SPACE = 'tsoverlay-local';
export const GLOBAL_ADDRESS_SPACE = 'tsoverlay-global';
export const GATEWAY_REQUEST = 'com.docker.network.gateway';
export const ENDPOINT_NAME_OPTION = 'com.docker.network.endpoint.name';
/**
 * The option under which the daemon's request gate carries its own request id to the route.
 * IPAM never reads it (the id comes only through `AddressRequest.requestId`), and the gate drops
 * one a caller put there: otherwise a caller could claim another request's address.
 */
export const REQUEST_ID_OPTION = 'tsoverlay.request-id';
/**
 * How long, beyond the request timeout, after Docker re-requests a pool this host already holds
 * (and after each request of the replay that follows) its explicit requests for this host's
 * addresses count as Docker's start-up replay. See `dockerReplayFor`.
 */
export const DOCKER_REPLAY_SLACK_MS = 5_000;
/** How long a failed request's uncertain allocation is chased before it is left to the logs. */
const RECLAIM_GIVE_UP_MS = 10 * 60_000;
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

export interface IpamOptions {
  /** Every request answers within this (`--store-timeout`), however long it queued for its subnet. */
  requestTimeoutMs?: number;
}

/** Docker's start-up replay of one subnet: until when it may last, and the addresses it re-confirmed. */
interface DockerReplay {
  until: number;
  confirmed: Set<string>;
}

/** What one request works with: the store and the subnet locks, both bounded by its deadline. */
interface RequestScope {
  records: RecordStore;
  lock<T>(subnet: string, work: () => Promise<T>): Promise<T>;
}

/**
 * Cluster-wide IPAM kept in the store. Uniqueness comes from create-if-absent on one key
 * per address (`ipam/addresses/<subnet>/<ip>`): two hosts racing for the same address
 * both try to create the key and exactly one succeeds, the loser moves on.
 * Pool ids are derived from the subnet so that every host names the same pool alike.
 *
 * An address is held by one request: asking again for a held address succeeds only for what
 * identifies that request (its request id, the container it was made for, or Docker's start-up
 * replay, see `dockerReplayFor`), never because the same host asks.
 */
export class IpamService {
  private readonly subnetLocks = new KeyedMutex();
  private readonly requestTimeoutMs: number;
  /** Subnets whose pool Docker just asked for again although this host held it. */
  private readonly dockerReplay = new Map<string, DockerReplay>();

  constructor(
    private readonly records: RecordStore,
    private readonly hostName: string,
    private readonly logger: Logger,
    options: IpamOptions = {},
  ) {
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  async requestPool(req: PoolRequest): Promise<{ poolId: string; pool: string }> {
    if (req.v6) throw new PluginError('tsoverlay does not support IPv6 pools yet; create the network without --ipv6');
    if (req.addressSpace !== LOCAL_ADDRESS_SPACE && req.addressSpace !== GLOBAL_ADDRESS_SPACE) {
      throw new PluginError(`unknown address space "${req.addressSpace}" (tsoverlay has ${LOCAL_ADDRESS_SPACE} and ${GLOBAL_ADDRESS_SPACE})`);
    }
    if (req.subPool && !req.pool) throw new PluginError('an --ip-range needs a --subnet');
    return this.withRequest('RequestPool', async ({ records, lock }) => {
      const subnet = req.pool ? this.parsePool(req.pool) : await this.pickDefaultPool(records);
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
        await this.refuseOverlaps(records, subnet, req.addressSpace);
        await records.update(poolRecordSchema, keys.pool(subnetKey(subnet)), (current) => {
          alreadyHeld = current?.holders.includes(owner) ?? false;
          if (alreadyHeld) return undefined;
          return current
            ? { ...current, holders: [...current.holders, owner] }
            : { pool: subnet.cidr, addressSpace: req.addressSpace, holders: [owner], created: nowIso() };
        });
      });
      if (alreadyHeld && !swarm) this.dockerReplay.set(subnet.cidr, { until: performance.now() + this.replayWindowMs(), confirmed: new Set() });
      this.logger.info('pool requested', { poolId, pool: subnet.cidr, ...(alreadyHeld ? { alreadyHeld } : {}) });
      return { poolId, pool: subnet.cidr };
    });
  }

  /**
   * The host lets go of the pool. The pool record and any addresses left in it go
   * only when no host holds it any more: other hosts may still run containers in it.
   */
  async releasePool(poolId: string): Promise<void> {
    const { subnet, kind } = this.parsePoolId(poolId);
    if (kind === 'node') return; // the swarm managers release the pool itself
    this.dockerReplay.clear();
    const owner = kind === 'swarm' ? SWARM_HOLDER : this.hostName;
    const sKey = subnetKey(subnet);
    await this.withRequest('ReleasePool', ({ records, lock }) =>
      lock(subnet.cidr, async () => {
        const after = await records.update(poolRecordSchema, keys.pool(sKey), (current) => {
          if (!current) return undefined;
          if (!current.holders.includes(owner)) return undefined;
          const holders = current.holders.filter((h) => h !== owner);
          return holders.length === 0 ? null : { ...current, holders };
        });
        if (after === undefined) {
          const stillThere = await records.get(poolRecordSchema, keys.pool(sKey));
          if (!stillThere) await records.store.deletePrefix(keys.addresses(sKey));
        } else {
          await this.releaseHostAddresses(records, sKey, owner);
        }
      }),
    );
    this.logger.info('pool released', { poolId });
  }

  async requestAddress(req: AddressRequest): Promise<{ address: string }> {
    const { subnet, range, kind } = this.parsePoolId(req.poolId);
    const isGateway = req.options.RequestAddressType === GATEWAY_REQUEST;
    const withPrefix = (ip: string) => ({ address: `${ip}/${subnet.prefixLength}` });
    if (kind === 'node' && (req.address || isGateway)) {
      // A swarm manager allocated this address (or it is the gateway): this engine just uses it.
      return withPrefix(req.address ? this.checkAddress(subnet, req.address) : intToIp(hostRange(subnet).first));
    }
    // Docker's start-up replay asks for explicit addresses only: anything else means it is over.
    if (!req.address && !isGateway) this.dockerReplay.clear();
    const explicit = req.address || isGateway ? (req.address ? this.checkAddress(subnet, req.address) : intToIp(hostRange(subnet).first)) : undefined;
    // Taken when the request arrives: what follows in the replay comes right after it.
    const replay = explicit && !isGateway && kind === 'cluster' ? this.dockerReplayFor(subnet.cidr) : undefined;
    return this.withRequest('RequestAddress', async (scope) => {
      const sKey = subnetKey(subnet);
      const pool = await scope.records.get(poolRecordSchema, keys.pool(sKey));
      if (!pool) throw new PluginError(`unknown pool "${req.poolId}": request the pool first`, 404);
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
      return scope.lock(subnet.cidr, async () => {
        for (let attempt = 0; attempt < 64; attempt++) {
          const entries = await scope.records.store.list(keys.addresses(sKey));
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
          if (await scope.records.create(keys.address(sKey, ip), record)) {
            this.logger.debug('address allocated', { pool: req.poolId, ip });
            return withPrefix(ip);
          }
        }
        throw new PluginError(`could not allocate an address in ${range.cidr}: too much contention, try again`, 503);
      });
    });
  }

  async releaseAddress(poolId: string, address: string): Promise<void> {
    const { subnet, kind } = this.parsePoolId(poolId);
    if (kind === 'node') return; // the swarm managers release what they allocated
    this.dockerReplay.clear();
    const ip = this.checkAddress(subnet, address);
    const key = keys.address(subnetKey(subnet), ip);
    await this.withRequest('ReleaseAddress', async ({ records }) => {
      const holder = await records.get(addressRecordSchema, key);
      // The shared gateway stays until the pool itself goes; another host's address is not ours to free.
      const owner = kind === 'swarm' ? SWARM_HOLDER : this.hostName;
      if (!holder || holder.value.kind === 'gateway' || holder.value.host !== owner) return;
      if (kind === 'cluster') {
        // Docker deletes an endpoint (Leave, DeleteEndpoint) before it releases its address, so a
        // running container of this host still using the address means this release is not its
        // own: a container that never got the address (its run failed) or a stale retry. Freeing
        // it would let the next container, here or on another host, share the running one's address.
        const users = await this.endpointsUsing(records, subnet, ip, this.hostName, true);
        if (users.length > 0) {
          this.logger.warn('release of an address a running container holds: kept', { pool: poolId, ip, endpoint: users[0]!.id });
          return;
        }
      }
      const released = await records.store.compareAndDelete(key, holder.revision);
      this.logger.debug('address released', { pool: poolId, ip, released });
    });
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

  /**
   * Runs one request under one deadline (`requestTimeoutMs`) that bounds its waits for the subnet
   * lock and every store call it makes, so that it answers in time whatever queues in front of it.
   * If it fails after a create whose outcome it never learnt, that allocation is chased and undone
   * (see `reclaim`): Docker was told the request failed and will never use or release it.
   */
  private async withRequest<T>(method: string, work: (scope: RequestScope) => Promise<T>): Promise<T> {
    const deadline = new Deadline(this.requestTimeoutMs);
    const uncertain: UncertainCreate[] = [];
    const store = this.records.store;
    const records = new RecordStore(storeWithDeadline(store, deadline, (c) => uncertain.push(c)));
    const lock = <R>(subnet: string, fn: () => Promise<R>): Promise<R> =>
      this.subnetLocks.run(subnet, fn, {
        remaining: () => deadline.remaining(),
        onTimeout: () =>
          new PluginError(
            `${method} timed out waiting for its turn on ${subnet} after ${deadline.ms} ms: earlier requests are still waiting for the store (${store.description}); try again`,
            503,
          ),
      });
    try {
      return await work({ records, lock });
    } catch (err) {
      if (uncertain.length > 0) this.reclaim(uncertain, method);
      throw err;
    }
  }

  /**
   * Undoes allocations a failed request may still have made: the store can apply a create it did
   * not answer in time (etcd stopped, then resumed). A record is removed only while it is exactly
   * what that request wrote (nobody took it over since). It is looked for once the store answers
   * again and once more a request timeout later, for a write applied after the first look.
   * Only endpoint addresses: a shared gateway record may already serve another host, and a
   * pool record written late is what a retried RequestPool on this host finds and relies on
   * (it holds no address, and the retry makes it Docker's again).
   */
  private reclaim(creates: UncertainCreate[], method: string): void {
    const pending = creates.filter(isEndpointAddress);
    if (pending.length === 0) return;
    const started = performance.now();
    void (async () => {
      const backoff = new Backoff(200, 5000);
      let looks = 0;
      while (looks < 2 && performance.now() - started < RECLAIM_GIVE_UP_MS) {
        await pauseUnref(looks === 0 ? backoff.next() : this.requestTimeoutMs);
        try {
          for (const c of pending) {
            const entry = await this.records.store.get(c.key);
            if (entry?.value === c.value && (await this.records.store.compareAndDelete(c.key, entry.revision))) {
              this.logger.warn('removed what a failed request allocated after it had given up', { method, key: c.key });
            }
          }
          looks++;
        } catch (err) {
          this.logger.debug('store still unavailable to undo a failed request', { method, error: errorMessage(err) });
        }
      }
      if (looks < 2) this.logger.warn('gave up undoing what a failed request may have allocated', { method, keys: pending.map((c) => c.key) });
    })();
  }

  /** An explicit address (or the gateway): create it, or accept it held by this same request. */
  private async claimExplicit(
    records: RecordStore,
    ask: {
      subnet: Subnet;
      sKey: string;
      ip: string;
      record: AddressRecord;
      isGateway: boolean;
      kind: PoolKind;
      name?: string;
      requestId?: string;
      replay?: DockerReplay;
    },
  ): Promise<string> {
    const { subnet, ip, isGateway } = ask;
    const key = keys.address(ask.sKey, ip);
    for (let attempt = 0; attempt < 8; attempt++) {
      if (await records.create(key, ask.record)) {
        this.logger.debug('address allocated', { pool: subnet.cidr, ip, requested: true, gateway: isGateway });
        return ip;
      }
      const holder = await records.get(addressRecordSchema, key);
      if (!holder) continue; // released in between: try to create it again
      const why = this.sameHolder(holder.value, ask);
      if (why) {
        this.logger.debug('address requested again by its holder', { pool: subnet.cidr, ip, why });
        return ip;
      }
      throw new PluginError(`address ${ip} is already in use in ${subnet.cidr}: ${await this.describeHolder(records, holder.value, subnet, ip)}`, 409);
    }
    throw new PluginError(`address ${ip} in ${subnet.cidr} kept changing hands; try again`, 503);
  }

  /**
   * Why a request for an address held by `holder` is the holder asking again (undefined: it is
   * not). Never the host alone: two containers on one host are two holders.
   */
  private sameHolder(
    holder: AddressRecord,
    ask: { ip: string; record: AddressRecord; isGateway: boolean; kind: PoolKind; name?: string; requestId?: string; replay?: DockerReplay },
  ): string | undefined {
    // The gateway is one address shared by every host of the network.
    if (holder.kind === 'gateway') return ask.isGateway ? 'gateway' : undefined;
    if (ask.isGateway || holder.kind !== 'endpoint' || holder.host !== ask.record.host) return undefined;
    // Swarm addresses are decided by the managers' allocator alone, which keeps its own account
    // of which task has which address and asks again for all of them when a manager takes over.
    if (ask.kind === 'swarm') return 'swarm allocator';
    if (ask.requestId !== undefined && holder.request === ask.requestId) return 'same request';
    if (ask.name !== undefined && holder.name === ask.name) return 'same container';
    // Docker replays each of its endpoints once: a second request for the same address in the
    // same replay is a container asking for it, not the replay.
    if (ask.replay && !ask.replay.confirmed.has(ask.ip)) {
      ask.replay.confirmed.add(ask.ip);
      return "Docker's start-up replay";
    }
    return undefined;
  }

  /**
   * Docker's replay at its start (RequiresRequestReplay) asks again, for every endpoint it kept,
   * for the address it has, as an explicit address, with no container name, endpoint id or any
   * other option (moby's `reservePools`; 20.10 and 28 alike): on the wire it is the same request
   * as a second container asking for a held `--ip`. What tells them apart is the order and the
   * count. Docker replays a network's pool first (asking for a pool this host already holds,
   * which nothing else does but a duplicate `network create` that then fails), then its
   * gateway, then each of its endpoints' addresses once, back to back, before it serves its API.
   * So an explicit request for an address this host holds is taken as that replay only while
   * such a replay is under way (it ends at the first request that is no part of one, or when
   * none follows in time), and only once per address: a container asking after the replay
   * re-confirmed the address is refused even if it comes in time. A replay refused would be
   * harmless anyway (Docker only logs it; the store keeps the address for its container):
   * accepting a second container would not be.
   */
  private dockerReplayFor(subnet: string): DockerReplay | undefined {
    const replay = this.dockerReplay.get(subnet);
    if (replay === undefined) return undefined;
    const now = performance.now();
    if (now > replay.until) {
      this.dockerReplay.delete(subnet);
      return undefined;
    }
    replay.until = now + this.replayWindowMs();
    return replay;
  }

  /** Docker sends the replay's requests one after the other: each may take a request timeout. */
  private replayWindowMs(): number {
    return this.requestTimeoutMs + DOCKER_REPLAY_SLACK_MS;
  }

  /** Who holds an address, for the error a second claimant gets. */
  private async describeHolder(records: RecordStore, holder: AddressRecord, subnet: Subnet, ip: string): Promise<string> {
    if (holder.kind === 'gateway') return `it is the network's gateway`;
    if (holder.kind === 'reserved') return 'it is reserved';
    let endpoint: EndpointRecord | undefined;
    try {
      endpoint = (await this.endpointsUsing(records, subnet, ip, holder.host, false))[0];
    } catch {
      // the store failed while describing: the conflict itself is certain, say it without the endpoint
    }
    const who = holder.name ?? endpoint?.name;
    return [
      `held by ${who ? `container ${who}` : 'another container'}`,
      endpoint ? `(endpoint ${endpoint.id.slice(0, 12)})` : '',
      `on host ${holder.host}`,
      holder.request ? `(request ${holder.request.slice(0, 8)}, ${holder.created})` : `(since ${holder.created})`,
    ]
      .filter(Boolean)
      .join(' ');
  }

  /** The endpoint records of `host` on `subnet` with address `ip` (joined ones only, if asked). */
  private async endpointsUsing(records: RecordStore, subnet: Subnet, ip: string, host: string, joinedOnly: boolean): Promise<EndpointRecord[]> {
    // Only the networks on this subnet: a host may run thousands of endpoints on other networks.
    const networkKeys = new Set([subnetKey(subnet)]);
    for (const n of await records.list(networkRecordSchema, keys.networks())) {
      if (n.value.subnet === subnet.cidr) networkKeys.add(n.value.key);
    }
    const found: EndpointRecord[] = [];
    for (const networkKey of networkKeys) {
      for (const ep of await records.list(endpointRecordSchema, keys.endpoints(networkKey))) {
        if (ep.value.host === host && ep.value.ip === ip && (!joinedOnly || ep.value.joined)) found.push(ep.value);
      }
    }
    return found;
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
    by: { name?: string | undefined; requestId?: string | undefined },
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

  private async refuseOverlaps(records: RecordStore, subnet: Subnet, addressSpace: string): Promise<void> {
    for (const pool of await records.list(poolRecordSchema, keys.pools())) {
      if (pool.value.addressSpace !== addressSpace || pool.value.pool === subnet.cidr) continue;
      if (overlaps(parseSubnet(pool.value.pool), subnet)) {
        throw new PluginError(`subnet ${subnet.cidr} overlaps pool ${pool.value.pool} already in use`, 409);
      }
    }
  }

  private async pickDefaultPool(records: RecordStore): Promise<Subnet> {
    const range = parseSubnet(DEFAULT_POOL_RANGE);
    const used = (await records.list(poolRecordSchema, keys.pools())).map((p) => parseSubnet(p.value.pool));
    const step = 2 ** (32 - DEFAULT_POOL_PREFIX);
    for (let n = range.network; n < range.network + range.size; n += step) {
      const candidate = parseSubnet(`${intToIp(n)}/${DEFAULT_POOL_PREFIX}`);
      if (!used.some((u) => overlaps(u, candidate))) return candidate;
    }
    throw new PluginError(`no free /${DEFAULT_POOL_PREFIX} left in ${DEFAULT_POOL_RANGE}; pass --subnet`, 409);
  }

  private async releaseHostAddresses(records: RecordStore, sKey: string, owner: string = this.hostName): Promise<void> {
    for (const a of await records.list(addressRecordSchema, keys.addresses(sKey))) {
      if (a.value.host === owner && a.value.kind === 'endpoint') {
        await records.store.compareAndDelete(a.key, a.revision);
      }
    }
  }
}

function isEndpointAddress(c: UncertainCreate): boolean {
  if (!c.key.startsWith(keys.addresses('').slice(0, -1))) return false; // under ipam/addresses/
  try {
    return decodeRecord(addressRecordSchema, c.value, c.key).kind === 'endpoint';
  } catch {
    return false;
  }
}

function pauseUnref(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
