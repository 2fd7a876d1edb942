import type { Logger } from '../log';
import { StoreUnavailableError } from '../store/store';
import { Backoff } from '../store/util';
import { PluginError, errorMessage } from '../util/errors';
import { KeyedRwLock } from '../util/keyed-rwlock';
import { sleepUnref } from '../util/retry';
import { LOCAL_ADDRESS_SPACE } from './ipam';
import type { EspSupport } from '../dataplane/xfrm';
import { HostEndpointIndex } from './endpoint-index';
import { type EncryptionHooks, LocalOverlays, type OverlayDataplane, type PeerSyncHooks } from './local-overlays';
import { macFor, releaseMac } from './mac';
import { NetworkRecords, type AddressReleaser, type HostIdentity } from './network-records';
import { RecordStore, nowIso, type Versioned } from './record-store';
import { Recovery } from './recovery';
import { addressRecordSchema, endpointRecordSchema, keys, type EndpointRecord, type NetworkRecord } from './records';
import {
  checkCreateNetwork,
  checkEndpointInput,
  checkNetworkOptions,
  endpointMacSource,
  type CreateEndpointInput,
  type CreateNetworkInput,
} from './request-checks';
import { DEFAULT_REQUEST_TIMEOUT_MS, RequestDeadlines, requestBoundStore } from './request-deadline';
import { parseSubnet, subnetKey, type Subnet } from './subnet';

export type { AddressReleaser, HostIdentity } from './network-records';
export type { OverlayDataplane, PeerSyncHooks } from './local-overlays';

export interface NetworkDriverOptions {
  /** One request's time in all: its wait for the network's lock and every store call it makes (--request-timeout). */
  requestTimeoutMs?: number;
}

/**
 * Network and endpoint life cycle (libnetwork's remote driver calls, the role of its overlay
 * driver's joinleave.go): checks each request (request-checks.ts), runs it under its deadline
 * (request-deadline.ts), then hands the cluster records to NetworkRecords and the kernel to
 * LocalOverlays. Every call is idempotent because Docker retries; requests on one network's
 * endpoints run side by side, a request on the network itself runs alone.
 */
export class NetworkDriver {
  private readonly locks = new KeyedRwLock();
  readonly networks: NetworkRecords;
  readonly overlays: LocalOverlays;
  readonly recovery: Recovery;
  private readonly index: HostEndpointIndex;
  /** The store as requests see it: bounded by the deadline of the request a call is made for. */
  private readonly records: RecordStore;
  /** The store without request deadlines: clean-up that outlives a failed request. */
  private readonly unbounded: RecordStore;
  private readonly requests: RequestDeadlines;

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
    this.requests = new RequestDeadlines(this.locks, options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS, records.store);
    this.networks = new NetworkRecords(records, host, logger, ipam);
    this.overlays = new LocalOverlays(dataplane, records, host, logger, peerSync, encryption);
    this.index = new HostEndpointIndex(records, host.name, logger);
    this.recovery = new Recovery({
      records,
      index: this.index,
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
    return this.requests.run(() => this.createNetworkNow(input));
  }

  private async createNetworkNow(input: CreateNetworkInput): Promise<void> {
    const { options, v4, v6, networkKey } = checkCreateNetwork(input, this.host.vtep, this.records.store.distributed);
    if (options.encrypted) {
      // At once, before any record is written: never a network that would carry traffic in clear.
      if (!this.encryption) throw new PluginError('-o encrypted: encryption is not enabled in this tsoverlay daemon');
      const support = await this.encryption.capability();
      if (!support.ok) throw new PluginError(`-o encrypted: this host's kernel cannot encrypt VXLAN (missing: ${support.missing.join('; ')})`);
    }

    await this.requests.locked('CreateNetwork', input.networkId, async () => {
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
    await this.requests.locked('DeleteNetwork', networkId, async () => {
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
    const options = checkNetworkOptions(rawOptions, this.host.vtep);
    return this.requests.run(() => this.networks.allocateSwarm(networkId, options, rawOptions));
  }

  async freeNetwork(networkId: string): Promise<void> {
    await this.requests.locked('FreeNetwork', networkId, () => this.networks.freeSwarm(networkId));
  }

  async createEndpoint(input: CreateEndpointInput): Promise<{ macAddress?: string }> {
    const { ip4, ip6, givenMac } = checkEndpointInput(input);
    const { networkId, endpointId } = input;

    return this.requests.endpointLocked('CreateEndpoint', networkId, endpointId, async () => {
      const network = await this.networks.require(networkId);
      const { subnet: macSubnet, ip: macIp } = endpointMacSource(network.value, ip4, ip6);
      const key = keys.endpoint(network.value.key, endpointId);
      const existing = await this.records.get(endpointRecordSchema, key);
      if (existing && (existing.value.ip !== (ip4 ?? '') || existing.value.ip6 !== ip6 || existing.value.host !== this.host.name)) {
        throw new PluginError(`endpoint ${endpointId} already exists with address ${existing.value.ip || existing.value.ip6}`, 409);
      }
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
        // The index entry goes with the record: both writes share the store's round trip.
        const writing = this.records.put(key, record);
        // Its failure is held as a value: it is looked at only after the record's write.
        const indexing = this.index.add(network.value.key, endpointId).then(
          () => undefined,
          (err: unknown) => ({ err }),
        );
        const preparing = this.overlays.prepare({ networkId, endpointId, mac, mtu: network.value.mtu });
        try {
          await writing;
        } catch (err) {
          await indexing; // an entry without its record is dropped at start-up
          await preparing;
          await this.overlays.unprepare(networkId, endpointId);
          if (err instanceof StoreUnavailableError) this.forgetUnacknowledged(key, record);
          throw err;
        }
        const indexFailure = await indexing;
        if (indexFailure) {
          // Never an endpoint of this host the index does not know: a restart would not find it.
          await preparing;
          await this.overlays.unprepare(networkId, endpointId);
          await this.unbounded.delete(key).catch((e: unknown) =>
            this.logger.warn('endpoint record left unindexed (never joined; delete it by hand if it stays)', { networkId, endpointId, error: errorMessage(e) }),
          );
          throw indexFailure.err;
        }
        await preparing;
      } else {
        // A replay: the first attempt may have written the record and not its entry.
        await this.index.add(network.value.key, endpointId);
      }
      this.logger.info('endpoint created', { networkId, endpointId, ...(ip4 ? { ip: ip4 } : {}), ...(ip6 ? { ip6 } : {}), mac, portReady: this.overlays.isPrepared(endpointId) });
      // Docker fails the call with "driver modified interface" if we echo a field it set.
      return givenMac ? {} : { macAddress: mac };
    });
  }

  async deleteEndpoint(networkId: string, endpointId: string): Promise<void> {
    await this.requests.endpointLocked('DeleteEndpoint', networkId, endpointId, async () => {
      const network = await this.networks.find(networkId);
      await this.overlays.detach(networkId, endpointId);
      if (!network) return;
      const key = keys.endpoint(network.value.key, endpointId);
      const endpoint = await this.records.get(endpointRecordSchema, key);
      await this.records.delete(key);
      if (!endpoint || endpoint.value.host === this.host.name) {
        await this.index.remove(network.value.key, endpointId).catch((err: unknown) =>
          this.logger.warn('endpoint index entry left behind (dropped at the next start)', { endpointId, error: errorMessage(err) }),
        );
      }
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
    return this.requests.run(() => this.endpointInfoNow(networkId, endpointId));
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
    return this.requests.endpointLocked('Join', networkId, endpointId, async () => {
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
    await this.requests.endpointLocked('Leave', networkId, endpointId, async () => {
      const network = await this.networks.require(networkId);
      const endpoint = await this.records.get(endpointRecordSchema, keys.endpoint(network.value.key, endpointId));
      if (endpoint?.value.joined) await this.records.put(endpoint.key, { ...endpoint.value, joined: false });
      await this.overlays.releaseIfUnused(networkId, network.value);
      this.logger.info('endpoint left', { networkId, endpointId });
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
        await sleepUnref(looks === 0 ? backoff.next() : this.requests.timeoutMs);
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
