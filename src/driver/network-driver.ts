import { AsyncLocalStorage } from 'node:async_hooks';
import type { Logger } from '../log';
import { StoreUnavailableError, type Store } from '../store/store';
import { Backoff, DEFAULT_TIMEOUT_MS, Deadline, storeWithDeadline } from '../store/util';
import { PluginError, errorMessage } from '../util/errors';
import { KeyedMutex, type TurnDeadline } from '../util/keyed-mutex';
import { GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE } from './ipam';
import type { EspSupport } from '../dataplane/xfrm';
import { type EncryptionHooks, LocalOverlays, type OverlayDataplane, type PeerSyncHooks } from './local-overlays';
import { macFor, normalizeMac, releaseMac } from './mac';
import { NetworkRecords, type AddressReleaser, type HostIdentity } from './network-records';
import { checkUnderlayFamily, parseNetworkOptions, type NetworkOptions } from './options';
import { RecordStore, nowIso, type Versioned } from './record-store';
import { Recovery } from './recovery';
import { addressRecordSchema, endpointRecordSchema, keys, type EndpointRecord, type NetworkRecord } from './records';
import { contains, firstHost, parseAddressCidr, parseSubnet, subnetKey, type Subnet } from './subnet';

export type { AddressReleaser, HostIdentity } from './network-records';
export type { OverlayDataplane, PeerSyncHooks } from './local-overlays';

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

export interface NetworkDriverOptions {
  /** One request's time in all: its wait for the network's lock and every store call it makes (--store-timeout). */
  requestTimeoutMs?: number;
}

/** The request a store call is made for, while Docker still waits for its answer. */
interface RequestTurn {
  deadline: Deadline;
  open: boolean;
}

/**
 * The driver's requests reach the store through NetworkRecords, LocalOverlays and Recovery as
 * well as directly; the request's deadline travels with its async context rather than through
 * every signature. Work a request leaves behind (timers, peer programming) inherits that
 * context, so the deadline binds only while the request is open.
 */
const currentRequest = new AsyncLocalStorage<RequestTurn>();

/** `store` with every call made for an open request raced against that request's deadline. */
function requestBoundStore(store: Store): Store {
  const now = (): Store => {
    const turn = currentRequest.getStore();
    return turn?.open ? storeWithDeadline(store, turn.deadline) : store;
  };
  return {
    get description() {
      return store.description;
    },
    get distributed() {
      return store.distributed;
    },
    get: (key) => now().get(key),
    list: (prefix) => now().list(prefix),
    put: (key, value, options) => now().put(key, value, options),
    create: (key, value, options) => now().create(key, value, options),
    compareAndSet: (key, value, revision, options) => now().compareAndSet(key, value, revision, options),
    delete: (key) => now().delete(key),
    compareAndDelete: (key, revision) => now().compareAndDelete(key, revision),
    deletePrefix: (prefix) => now().deletePrefix(prefix),
    watch: (prefix, listener) => store.watch(prefix, listener),
    grantLease: (ttl) => now().grantLease(ttl),
    close: () => store.close(),
  };
}

export interface CreateEndpointInput {
  networkId: string;
  endpointId: string;
  address?: string;
  addressIPv6?: string;
  macAddress?: string;
}

/**
 * Network and endpoint life cycle (libnetwork's remote driver calls, the role of its overlay
 * driver's joinleave.go): checks each request, then hands the cluster records to
 * NetworkRecords and the kernel to LocalOverlays. Every call is idempotent because Docker
 * retries; calls on one network run one at a time.
 */
export class NetworkDriver {
  private readonly locks = new KeyedMutex();
  readonly networks: NetworkRecords;
  readonly overlays: LocalOverlays;
  readonly recovery: Recovery;
  /** The store as requests see it: bounded by the deadline of the request a call is made for. */
  private readonly records: RecordStore;
  /** The store without request deadlines: clean-up that outlives a failed request. */
  private readonly unbounded: RecordStore;
  private readonly requestTimeoutMs: number;

  constructor(
    records: RecordStore,
    dataplane: OverlayDataplane,
    private readonly host: HostIdentity,
    private readonly logger: Logger,
    peerSync?: PeerSyncHooks,
    ipam?: AddressReleaser,
    private readonly encryption?: EncryptionHooks & { capability(): Promise<EspSupport> },
    options: NetworkDriverOptions = {},
  ) {
    this.unbounded = records;
    records = new RecordStore(requestBoundStore(records.store));
    this.records = records;
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.networks = new NetworkRecords(records, host, logger, ipam);
    this.overlays = new LocalOverlays(dataplane, records, host, this.locks, logger, peerSync, encryption);
    this.recovery = new Recovery({
      records,
      networks: this.networks,
      overlays: this.overlays,
      dataplane,
      host,
      locks: this.locks,
      logger,
      deleteEndpoint: (networkId, endpointId) => this.deleteEndpoint(networkId, endpointId),
    });
  }

  createNetwork(input: CreateNetworkInput): Promise<void> {
    return this.request(() => this.createNetworkNow(input));
  }

  private async createNetworkNow(input: CreateNetworkInput): Promise<void> {
    const options = parse(() => parseNetworkOptions(input.genericOptions));
    parse(() => checkUnderlayFamily(options, this.host.vtep));
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
    if (this.records.store.distributed && !ours(first) && !options.allowDefaultIpam) {
      throw new PluginError(
        'with a distributed store every host must allocate from the same cluster-wide IPAM: ' +
          'create the network with --ipam-driver tsoverlay (or -o allow-default-ipam=true to accept per-host address allocation)',
      );
    }
    const subnet = first.subnet;
    const networkKey = options.vni !== undefined ? `vni-${options.vni}` : subnetKey(subnet);
    if (options.remote && options.remote === this.host.vtep) {
      throw new PluginError(`-o remote=${options.remote} is this host's own address: name the other host of the p2p link`);
    }
    if (options.encrypted) {
      // At once, before any record is written: never a network that would carry traffic in clear.
      if (!this.encryption) throw new PluginError('-o encrypted: encryption is not enabled in this tsoverlay daemon');
      const support = await this.encryption.capability();
      if (!support.ok) throw new PluginError(`-o encrypted: this host's kernel cannot encrypt VXLAN (missing: ${support.missing.join('; ')})`);
    }

    await this.locked('CreateNetwork', input.networkId, async () => {
      const network = await this.networks.create({
        networkId: input.networkId,
        networkKey,
        subnet: v4?.subnet.cidr ?? '',
        gateway: v4?.gateway ?? '',
        ...(v6 ? { v6: { subnet: v6.subnet.cidr, gateway: v6.gateway } } : {}),
        options,
        ...(v4?.data.addressSpace === LOCAL_ADDRESS_SPACE ? { pool: v4.subnet.cidr } : {}),
        ...(v6?.data.addressSpace === LOCAL_ADDRESS_SPACE ? { pool6: v6.subnet.cidr } : {}),
      });
      this.logger.info('network created', {
        networkId: input.networkId,
        networkKey,
        vni: network.vni,
        subnet: network.subnet,
        ...(network.subnet6 ? { subnet6: network.subnet6 } : {}),
      });
    });
  }

  async deleteNetwork(networkId: string): Promise<void> {
    await this.locked('DeleteNetwork', networkId, async () => {
      const mapping = await this.networks.mapping(networkId);
      if (this.overlays.find(networkId)) await this.overlays.release(networkId);
      if (!mapping) return;
      if (await this.networks.isSwarmNetwork(networkId, mapping.value.networkKey)) {
        // Swarm: every node has the same network id, and the network lives until the managers
        // free it (FreeNetwork). A node dropping its copy (its last task or attachment left)
        // only withdraws its own endpoints.
        await this.networks.removeHostEndpoints(networkId, mapping.value.networkKey);
        this.logger.info('swarm network left by this host', { networkId, networkKey: mapping.value.networkKey });
        return;
      }
      await this.networks.forget(networkId, mapping.value);
    });
  }

  /** Swarm managers: see NetworkRecords.allocateSwarm. */
  async allocateNetwork(networkId: string, rawOptions: Record<string, string>): Promise<Record<string, string>> {
    const options: NetworkOptions = parse(() => parseNetworkOptions(rawOptions));
    parse(() => checkUnderlayFamily(options, this.host.vtep));
    return this.request(() => this.networks.allocateSwarm(networkId, options, rawOptions));
  }

  async freeNetwork(networkId: string): Promise<void> {
    await this.locked('FreeNetwork', networkId, () => this.networks.freeSwarm(networkId));
  }

  async createEndpoint(input: CreateEndpointInput): Promise<{ macAddress?: string }> {
    const ip4 = input.address ? parse(() => parseAddressCidr(input.address!)).ip : undefined;
    const ip6 = input.addressIPv6 ? parse(() => parseAddressCidr(input.addressIPv6!)).ip : undefined;
    if (!ip4 && !ip6) throw new PluginError('the endpoint has no address: the network must use an IPAM driver that assigns one');
    const givenMac = input.macAddress ? normalizeMac(input.macAddress) : undefined;
    if (input.macAddress && !givenMac) throw new PluginError(`invalid MAC address "${input.macAddress}"`);
    const { networkId, endpointId } = input;

    return this.locked('CreateEndpoint', networkId, async () => {
      const network = await this.networks.require(networkId);
      const subnet4 = network.value.subnet ? parseSubnet(network.value.subnet) : undefined;
      const subnet6 = network.value.subnet6 ? parseSubnet(network.value.subnet6) : undefined;
      // Each family the network has, the endpoint has, inside its subnet; no other.
      for (const [family, subnet, ip] of [
        [4, subnet4, ip4],
        [6, subnet6, ip6],
      ] as const) {
        if (subnet && !ip) throw new PluginError(`the endpoint has no IPv${family} address in the network's subnet ${subnet.cidr}`);
        if (ip && !subnet) throw new PluginError(`the network has no IPv${family} subnet for address ${ip}`);
        if (ip && subnet && !contains(subnet, ip)) throw new PluginError(`address ${ip} is not inside the network's subnet ${subnet.cidr}`);
      }
      const key = keys.endpoint(network.value.key, endpointId);
      const existing = await this.records.get(endpointRecordSchema, key);
      if (existing && (existing.value.ip !== (ip4 ?? '') || existing.value.ip6 !== ip6 || existing.value.host !== this.host.name)) {
        throw new PluginError(`endpoint ${endpointId} already exists with address ${existing.value.ip || existing.value.ip6}`, 409);
      }
      // The MAC comes from the IPv4 address; without one, from the IPv6 address (see mac.ts).
      const [macSubnet, macIp] = ip4 ? [subnet4!, ip4] : [subnet6!, ip6!];
      // A replayed CreateEndpoint keeps the MAC it was given (an IPv6-only one may be allocated).
      const mac = existing?.value.mac ?? givenMac ?? (await macFor(this.records, { subnet: macSubnet, ip: macIp, host: this.host.name }));
      if (!existing) {
        const name = await this.endpointName(macSubnet, macIp);
        const record: EndpointRecord = {
          id: endpointId,
          networkId,
          ip: ip4 ?? '',
          ...(ip6 ? { ip6 } : {}),
          mac,
          locator: this.host.vtep,
          host: this.host.name,
          ...(name ? { name } : {}),
          joined: false,
          created: nowIso(),
        };
        // Docker sends Join right after CreateEndpoint: the kernel work of the veth pair runs
        // while the record is being made durable, instead of after it in Join. The write is
        // issued first (its disk wait is the longer one; the netlink calls block this thread).
        const writing = this.records.put(key, record);
        const preparing = this.overlays.prepare({ networkId, endpointId, mac, mtu: network.value.mtu });
        try {
          await writing;
        } catch (err) {
          await preparing;
          await this.overlays.unprepare(networkId, endpointId);
          if (err instanceof StoreUnavailableError) this.forgetUnacknowledged(key, record);
          throw err;
        }
        await preparing;
      }
      this.logger.info('endpoint created', { networkId, endpointId, ...(ip4 ? { ip: ip4 } : {}), ...(ip6 ? { ip6 } : {}), mac, portReady: this.overlays.isPrepared(endpointId) });
      // Docker fails the call with "driver modified interface" if we echo a field it set.
      return givenMac ? {} : { macAddress: mac };
    });
  }

  async deleteEndpoint(networkId: string, endpointId: string): Promise<void> {
    await this.locked('DeleteEndpoint', networkId, async () => {
      const network = await this.networks.find(networkId);
      await this.overlays.detach(networkId, endpointId);
      if (!network) return;
      const key = keys.endpoint(network.value.key, endpointId);
      const endpoint = await this.records.get(endpointRecordSchema, key);
      await this.records.delete(key);
      if (endpoint && endpoint.value.host === this.host.name && !endpoint.value.ip && endpoint.value.ip6 && network.value.subnet6) {
        await releaseMac(this.records, parseSubnet(network.value.subnet6), endpoint.value.ip6, endpoint.value.mac).catch((err: unknown) =>
          this.logger.warn('allocated MAC not released (the next container with this address takes it over)', { endpointId, error: errorMessage(err) }),
        );
      }
      await this.overlays.releaseIfUnused(networkId, network.value);
      this.logger.info('endpoint deleted', { networkId, endpointId });
    });
  }

  endpointInfo(networkId: string, endpointId: string): Promise<Record<string, string>> {
    return this.request(() => this.endpointInfoNow(networkId, endpointId));
  }

  private async endpointInfoNow(networkId: string, endpointId: string): Promise<Record<string, string>> {
    const network = await this.networks.require(networkId);
    const endpoint = await this.requireEndpoint(network.value, endpointId);
    const overlay = this.overlays.find(networkId);
    return {
      ...(endpoint.value.ip ? { ip: endpoint.value.ip } : {}),
      ...(endpoint.value.ip6 ? { ip6: endpoint.value.ip6 } : {}),
      mac: endpoint.value.mac,
      vni: String(network.value.vni),
      ...(overlay ? { netns: overlay.netnsPath } : {}),
    };
  }

  async join(networkId: string, endpointId: string): Promise<{ srcName: string }> {
    return this.locked('Join', networkId, async () => {
      const network = await this.networks.require(networkId);
      const endpoint = await this.requireEndpoint(network.value, endpointId);
      // p2p: the remote is per host (each names the other), kept with this host's network id.
      const mapping = await this.networks.mapping(networkId);
      const spec = this.overlays.specFor(networkId, network.value, mapping?.value.remote);
      const attachment = { networkId, endpointId, mac: endpoint.value.mac, mtu: network.value.mtu };
      const attached = await this.overlays.join(spec, network.value, attachment, async () => {
        if (!endpoint.value.joined) await this.records.put(endpoint.key, { ...endpoint.value, joined: true, locator: this.host.vtep });
      });
      this.logger.info('endpoint joined', { networkId, endpointId, srcName: attached.srcName });
      return { srcName: attached.srcName };
    });
  }

  async leave(networkId: string, endpointId: string): Promise<void> {
    await this.locked('Leave', networkId, async () => {
      const network = await this.networks.require(networkId);
      const endpoint = await this.records.get(endpointRecordSchema, keys.endpoint(network.value.key, endpointId));
      if (endpoint?.value.joined) await this.records.put(endpoint.key, { ...endpoint.value, joined: false });
      await this.overlays.releaseIfUnused(networkId, network.value);
      this.logger.info('endpoint left', { networkId, endpointId });
    });
  }

  /** Runs one of Docker's requests under one deadline (see requestBoundStore); nested calls share it. */
  private async request<T>(work: () => Promise<T>): Promise<T> {
    if (currentRequest.getStore()?.open) return work();
    const turn: RequestTurn = { deadline: new Deadline(this.requestTimeoutMs), open: true };
    try {
      return await currentRequest.run(turn, work);
    } finally {
      turn.open = false;
    }
  }

  /** A request that works on one network: its wait for the network's lock counts against its deadline. */
  private locked<T>(method: string, networkId: string, work: () => Promise<T>): Promise<T> {
    return this.request(() => {
      const turn = currentRequest.getStore();
      const deadline: TurnDeadline | undefined = turn && {
        remaining: () => turn.deadline.remaining(),
        onTimeout: () =>
          new PluginError(
            `${method} timed out waiting for its turn on network ${networkId.slice(0, 12)} after ${turn.deadline.ms} ms: ` +
              `earlier requests are still waiting for the store (${this.records.store.description}); try again`,
            503,
          ),
      };
      return this.locks.run(networkId, work, deadline);
    });
  }

  /**
   * CreateEndpoint failed after a write whose outcome it never learnt: the store may still apply
   * it. Docker was told the endpoint does not exist and will neither join nor delete it, so the
   * record is removed once the store answers, while it is still exactly the one written.
   */
  private forgetUnacknowledged(key: string, record: EndpointRecord): void {
    void (async () => {
      const backoff = new Backoff(200, 5000);
      const started = performance.now();
      // Looked for twice: once the store answers, and a request timeout later for a late apply.
      for (let looks = 0; looks < 2 && performance.now() - started < UNACKNOWLEDGED_GIVE_UP_MS; ) {
        await pauseUnref(looks === 0 ? backoff.next() : this.requestTimeoutMs);
        try {
          const entry = await this.unbounded.get(endpointRecordSchema, key);
          if (entry && entry.value.id === record.id && entry.value.created === record.created && !entry.value.joined) {
            if (await this.unbounded.store.compareAndDelete(key, entry.revision)) {
              this.logger.warn('removed the endpoint record a failed CreateEndpoint wrote after it had given up', { key });
            }
          }
          looks++;
        } catch (err) {
          this.logger.debug('store still unavailable to undo a failed CreateEndpoint', { key, error: errorMessage(err) });
        }
      }
    })();
  }

  private async requireEndpoint(network: NetworkRecord, endpointId: string): Promise<Versioned<EndpointRecord>> {
    const endpoint = await this.records.get(endpointRecordSchema, keys.endpoint(network.key, endpointId));
    if (!endpoint || endpoint.value.host !== this.host.name) throw new PluginError(`unknown endpoint ${endpointId}`, 404);
    return endpoint;
  }

  /** The container name Docker passed to IPAM's RequestAddress, kept for `inspect`; none if it cannot be read. */
  private async endpointName(subnet: Subnet, ip: string): Promise<string | undefined> {
    const key = keys.address(subnetKey(subnet), ip);
    try {
      return (await this.records.get(addressRecordSchema, key))?.value.name;
    } catch (err) {
      this.logger.debug('container name not recorded with the endpoint', { key, error: errorMessage(err) });
      return undefined;
    }
  }
}

/** How long a failed CreateEndpoint's unacknowledged record is chased before it is left to the logs. */
const UNACKNOWLEDGED_GIVE_UP_MS = 10 * 60_000;

function pauseUnref(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

interface ParsedPool {
  data: IpData;
  subnet: Subnet;
  gateway: string;
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
