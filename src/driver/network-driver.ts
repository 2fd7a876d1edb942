import { isDeepStrictEqual } from 'node:util';

import type { AttachedEndpoint, EndpointAttachment, OrphanReport, OverlayInfo, OverlaySpec, Peer } from '../dataplane/types';
import type { Logger } from '../log';
import { PluginError, errorMessage } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE } from './ipam';
import { macFromIp, normalizeMac } from './mac';
import { FIRST_VNI, MAX_VNI, overlayMtu, parseNetworkOptions, type NetworkOptions } from './options';
import { RecordStore, nowIso, type Versioned } from './record-store';
import {
  addressRecordSchema,
  encodeRecord,
  endpointRecordSchema,
  keys,
  networkIdRecordSchema,
  networkRecordSchema,
  poolRecordSchema,
  vniRecordSchema,
  type EndpointRecord,
  type NetworkIdRecord,
  type NetworkRecord,
} from './records';
import { contains, intToIp, parseAddressCidr, parseSubnet, subnetKey } from './subnet';

/** The part of the dataplane the driver uses; the kernel implementation lives in src/dataplane. */
export interface OverlayDataplane {
  ensureOverlay(spec: OverlaySpec): Promise<OverlayInfo>;
  /** ensureOverlay that says whether anything had to be rebuilt (periodic drift repair). */
  repairOverlay(spec: OverlaySpec): Promise<boolean>;
  removeOverlay(networkId: string): Promise<void>;
  findOverlay(networkId: string): OverlayInfo | undefined;
  attachEndpoint(attachment: EndpointAttachment): Promise<AttachedEndpoint>;
  detachEndpoint(networkId: string, endpointId: string): Promise<void>;
  applyPeers(networkId: string, add: Peer[], remove: Peer[]): Promise<unknown>;
  /** Endpoint port names (`ve…`) in the network's namespace. */
  bridgePorts(networkId: string): Promise<string[]>;
  /** Start-up sweep: removes our kernel objects that nothing in `keep` accounts for. */
  removeOrphans(keep: { endpointIds: Iterable<string>; networkIds: Iterable<string> }): Promise<OrphanReport>;
}

/**
 * This host's side of the IPAM (src/driver/ipam), for when Docker's release calls are lost: Docker
 * retries a call whose connection broke with an empty body (see protocol/inflight.ts), and when
 * the plugin died before reading it, the release never happens. Releasing twice is harmless.
 */
export interface AddressReleaser {
  releasePool(poolId: string): Promise<void>;
}

/** Tells the peer distribution which networks have local containers (src/driver/peer-sync). */
export interface PeerSyncHooks {
  networkActive(networkId: string, network: NetworkRecord): Promise<void>;
  networkInactive(networkId: string): Promise<void>;
  /** The overlay's devices were rebuilt (kernel drift): re-program its peers now. */
  resync?(networkId: string, reason: string): Promise<void>;
}

export interface HostIdentity {
  name: string;
  /** Underlay address other hosts send VXLAN traffic to. */
  vtep: string;
  /** MTU of the underlay interface; the overlay gets 50 bytes less. */
  underlayMtu: number;
}

export interface IPv4Data {
  addressSpace: string;
  pool: string;
  gateway?: string;
}

export interface CreateNetworkInput {
  networkId: string;
  genericOptions: Record<string, string>;
  ipv4: IPv4Data[];
  ipv6: IPv4Data[];
}

export interface CreateEndpointInput {
  networkId: string;
  endpointId: string;
  address?: string;
  addressIPv6?: string;
  macAddress?: string;
}

/**
 * Network and endpoint life cycle (libnetwork's remote driver calls), in terms of store
 * records and dataplane projections. Every call is idempotent because Docker retries.
 */
export class NetworkDriver {
  private readonly networkLocks = new KeyedMutex();
  /** Spec of every overlay this host has up, for the periodic repair (works without the store). */
  private readonly overlaySpecs = new Map<string, OverlaySpec>();
  /**
   * Veth pairs made by CreateEndpoint for a Join to come, with the epoch of the overlay
   * namespace their bridge end went into (a namespace rebuilt since then took that end with it).
   */
  private readonly preparedPorts = new Map<string, { epoch: number; attached: AttachedEndpoint }>();

  constructor(
    private readonly records: RecordStore,
    private readonly dataplane: OverlayDataplane,
    private readonly host: HostIdentity,
    private readonly logger: Logger,
    private readonly peerSync?: PeerSyncHooks,
    private readonly ipam?: AddressReleaser,
  ) {}

  async createNetwork(input: CreateNetworkInput): Promise<void> {
    const options = this.parseOptions(input.genericOptions);
    if (input.ipv6.length > 0) throw new PluginError('tsoverlay does not support IPv6 yet; create the network without --ipv6');
    const [v4, ...more] = input.ipv4;
    if (!v4) throw new PluginError('the network has no IPv4 subnet; pass --subnet');
    if (more.length > 0) throw new PluginError('tsoverlay supports one IPv4 subnet per network');
    const subnet = this.parse(() => parseSubnet(v4.pool));
    const ours = v4.addressSpace === LOCAL_ADDRESS_SPACE || v4.addressSpace === GLOBAL_ADDRESS_SPACE;
    if (this.records.store.distributed && !ours && !options.allowDefaultIpam) {
      throw new PluginError(
        'with a distributed store every host must allocate from the same cluster-wide IPAM: ' +
          'create the network with --ipam-driver tsoverlay (or -o allow-default-ipam=true to accept per-host address allocation)',
      );
    }
    const gateway = v4.gateway ? this.parse(() => parseAddressCidr(v4.gateway!)).ip : intToIp(subnet.network + 1);
    if (!contains(subnet, gateway)) throw new PluginError(`gateway ${gateway} is not inside ${subnet.cidr}`);
    const networkKey = options.vni !== undefined ? `vni-${options.vni}` : subnetKey(subnet);
    if (options.remote && options.remote === this.host.vtep) {
      throw new PluginError(`-o remote=${options.remote} is this host's own address: name the other host of the p2p link`);
    }

    await this.networkLocks.run(input.networkId, async () => {
      const known = await this.records.get(networkIdRecordSchema, keys.networkId(input.networkId));
      if (known && known.value.networkKey !== networkKey) {
        throw new PluginError(`network ${input.networkId} already exists with different settings`, 409);
      }
      const network = await this.joinOrCreateNetworkRecord(networkKey, input.networkId, subnet.cidr, gateway, options);
      await this.refuseSecondLocalNetwork(network, input.networkId);
      await this.records.put(keys.networkId(input.networkId), {
        networkKey,
        host: this.host.name,
        ...(options.remote ? { remote: options.remote } : {}),
        ...(v4.addressSpace === LOCAL_ADDRESS_SPACE ? { pool: subnet.cidr } : {}),
        created: nowIso(),
      });
      this.logger.info('network created', { networkId: input.networkId, networkKey, vni: network.vni, subnet: network.subnet });
    });
  }

  async deleteNetwork(networkId: string): Promise<void> {
    await this.networkLocks.run(networkId, async () => {
      const mapping = await this.records.get(networkIdRecordSchema, keys.networkId(networkId));
      if (this.dataplane.findOverlay(networkId)) {
        await this.peerSync?.networkInactive(networkId);
        this.overlaySpecs.delete(networkId);
        await this.dataplane.removeOverlay(networkId);
      }
      if (!mapping) return;
      if (await this.isSwarmNetwork(networkId, mapping.value.networkKey)) {
        // Swarm: every node has the same network id, and the network lives until the managers
        // free it (FreeNetwork). A node dropping its copy (its last task or attachment left)
        // only withdraws its own endpoints.
        await this.removeHostEndpoints(networkId, mapping.value.networkKey);
        this.logger.info('swarm network left by this host', { networkId, networkKey: mapping.value.networkKey });
        return;
      }
      await this.forgetNetwork(networkId, mapping.value);
    });
  }

  /** The store side of DeleteNetwork (the overlay is already gone). Idempotent. */
  private async forgetNetwork(networkId: string, mapping: NetworkIdRecord): Promise<void> {
    // The mapping goes last: a crash half-way leaves it, so Docker's retry finds the network
    // again and finishes (otherwise the network record and its VNI would stay for ever).
    const networkKey = mapping.networkKey;
    let lastHost = false;
    await this.records.update(networkRecordSchema, keys.network(networkKey), (current) => {
      lastHost = !current || current.ids.every((id) => id === networkId);
      if (!current) return undefined;
      return lastHost ? null : current.ids.includes(networkId) ? { ...current, ids: current.ids.filter((id) => id !== networkId) } : undefined;
    });
    if (lastHost) {
      for (const entry of await this.records.list(vniRecordSchema, keys.vnis())) {
        if (entry.value.networkKey === networkKey) await this.records.store.compareAndDelete(entry.key, entry.revision);
      }
      await this.records.store.deletePrefix(keys.endpoints(networkKey));
    }
    // Docker releases the pool just before (20.10) or after DeleteNetwork; if that release
    // was lost, the pool would stay held by this host for ever. Releasing twice is harmless.
    if (mapping.pool && this.ipam && !(await this.otherLocalNetworkOnPool(networkId, mapping.pool))) {
      await this.ipam.releasePool(mapping.pool);
    }
    await this.records.delete(keys.networkId(networkId));
    this.logger.info('network deleted', { networkId, networkKey, lastHost });
  }

  private async otherLocalNetworkOnPool(networkId: string, pool: string): Promise<boolean> {
    const mine = await this.records.list(networkIdRecordSchema, keys.networkIds());
    return mine.some((m) => m.key !== keys.networkId(networkId) && m.value.host === this.host.name && m.value.pool === pool);
  }

  async createEndpoint(input: CreateEndpointInput): Promise<{ macAddress?: string }> {
    if (input.addressIPv6) throw new PluginError('tsoverlay does not support IPv6 endpoints yet');
    if (!input.address) throw new PluginError('the endpoint has no IPv4 address: the network must use an IPAM driver that assigns one');
    const { ip } = this.parse(() => parseAddressCidr(input.address!));
    const givenMac = input.macAddress ? normalizeMac(input.macAddress) : undefined;
    if (input.macAddress && !givenMac) throw new PluginError(`invalid MAC address "${input.macAddress}"`);
    const mac = givenMac ?? macFromIp(ip);

    return this.networkLocks.run(input.networkId, async () => {
      const network = await this.requireNetwork(input.networkId);
      const subnet = parseSubnet(network.value.subnet);
      if (!contains(subnet, ip)) throw new PluginError(`address ${ip} is not inside the network's subnet ${subnet.cidr}`);
      const key = keys.endpoint(network.value.key, input.endpointId);
      const existing = await this.records.get(endpointRecordSchema, key);
      if (existing && (existing.value.ip !== ip || existing.value.host !== this.host.name)) {
        throw new PluginError(`endpoint ${input.endpointId} already exists with address ${existing.value.ip}`, 409);
      }
      if (!existing) {
        const name = await this.endpointName(subnet.cidr, ip);
        const record: EndpointRecord = {
          id: input.endpointId,
          networkId: input.networkId,
          ip,
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
        const preparing = this.preparePort(input.networkId, network.value, input.endpointId, mac);
        try {
          await writing;
        } catch (err) {
          await preparing;
          await this.dropPreparedPort(input.networkId, input.endpointId);
          throw err;
        }
        await preparing;
      }
      this.logger.info('endpoint created', { networkId: input.networkId, endpointId: input.endpointId, ip, mac, portReady: this.preparedPorts.has(input.endpointId) });
      // Docker fails the call with "driver modified interface" if we echo a field it set.
      return givenMac ? {} : { macAddress: mac };
    });
  }

  async deleteEndpoint(networkId: string, endpointId: string): Promise<void> {
    await this.networkLocks.run(networkId, async () => {
      const network = await this.findNetwork(networkId);
      this.preparedPorts.delete(endpointId);
      await this.dataplane.detachEndpoint(networkId, endpointId);
      if (!network) return;
      await this.records.delete(keys.endpoint(network.value.key, endpointId));
      await this.removeOverlayIfUnused(networkId, network.value);
      this.logger.info('endpoint deleted', { networkId, endpointId });
    });
  }

  async endpointInfo(networkId: string, endpointId: string): Promise<Record<string, string>> {
    const network = await this.requireNetwork(networkId);
    const endpoint = await this.requireEndpoint(network.value, endpointId);
    const overlay = this.dataplane.findOverlay(networkId);
    return {
      ip: endpoint.value.ip,
      mac: endpoint.value.mac,
      vni: String(network.value.vni),
      ...(overlay ? { netns: overlay.netnsPath } : {}),
    };
  }

  async join(networkId: string, endpointId: string): Promise<{ srcName: string }> {
    return this.networkLocks.run(networkId, async () => {
      const network = await this.requireNetwork(networkId);
      const endpoint = await this.requireEndpoint(network.value, endpointId);
      const overlay = this.dataplane.findOverlay(networkId);
      const hadOverlay = overlay !== undefined;
      const prepared = this.preparedPorts.get(endpointId);
      this.preparedPorts.delete(endpointId);
      let attached: AttachedEndpoint | undefined;
      try {
        // p2p: the remote is per host (each names the other), kept with this host's network id.
        const mapping = await this.records.get(networkIdRecordSchema, keys.networkId(networkId));
        const spec = this.overlaySpec(networkId, network.value, mapping?.value.remote);
        const attachment = { networkId, endpointId, mac: endpoint.value.mac, mtu: network.value.mtu };
        // An overlay this process already built or checked for the same spec is not re-checked
        // (about ten netlink round trips per Join): drift is the periodic reconcile's job, and an
        // attach that fails on a damaged overlay repairs it and tries once more.
        const known = this.overlaySpecs.get(networkId);
        const verified = hadOverlay && known !== undefined && isDeepStrictEqual(known, spec);
        if (!verified) {
          await this.dataplane.ensureOverlay(spec);
          this.overlaySpecs.set(networkId, spec);
        }
        if (verified && prepared && prepared.epoch === overlay?.epoch) {
          // Made by CreateEndpoint in this very namespace. A port damaged since is the periodic
          // reconcile's to repair, as one damaged right after a Join would be.
          attached = prepared.attached;
        } else {
          attached = await this.attachOrRepair(attachment, spec, verified);
        }
        if (!endpoint.value.joined) {
          await this.records.put(endpoint.key, { ...endpoint.value, joined: true, locator: this.host.vtep });
        }
        await this.peerSync?.networkActive(networkId, network.value);
      } catch (err) {
        // Roll back so that Docker's retry starts from a clean slate and nothing is left half-made.
        this.logger.warn('join failed, rolling back', { networkId, endpointId, error: errorMessage(err) });
        await this.dataplane.detachEndpoint(networkId, endpointId).catch(() => undefined);
        if (!hadOverlay) {
          await this.peerSync?.networkInactive(networkId).catch(() => undefined);
          this.overlaySpecs.delete(networkId);
          await this.dataplane.removeOverlay(networkId).catch(() => undefined);
        }
        throw err;
      }
      this.logger.info('endpoint joined', { networkId, endpointId, srcName: attached.srcName });
      return { srcName: attached.srcName };
    });
  }

  async leave(networkId: string, endpointId: string): Promise<void> {
    await this.networkLocks.run(networkId, async () => {
      const network = await this.requireNetwork(networkId);
      const endpoint = await this.records.get(endpointRecordSchema, keys.endpoint(network.value.key, endpointId));
      if (endpoint?.value.joined) await this.records.put(endpoint.key, { ...endpoint.value, joined: false });
      await this.removeOverlayIfUnused(networkId, network.value);
      this.logger.info('endpoint left', { networkId, endpointId });
    });
  }

  /**
   * Swarm managers allocate the VNI before any worker sees the network; the options returned
   * here replace the generic options workers get in CreateNetwork, so the VNI travels with them.
   */
  async allocateNetwork(networkId: string, rawOptions: Record<string, string>): Promise<Record<string, string>> {
    const options = this.parseOptions(rawOptions);
    const swarmKey = `swarm-${networkId}`;
    if (options.vni !== undefined) {
      // Claimed for this swarm network, so that every node knows the network as a swarm one.
      if (!(await this.records.create(keys.vni(options.vni), { networkKey: swarmKey, created: nowIso() }))) {
        const holder = await this.records.get(vniRecordSchema, keys.vni(options.vni));
        if (holder && holder.value.networkKey !== swarmKey) throw new PluginError(`VNI ${options.vni} is already in use by another network`, 409);
      }
      return { ...rawOptions };
    }
    // Idempotent: a repeated AllocateNetwork (manager restart, new leader) gets the same VNI.
    const held = (await this.records.list(vniRecordSchema, keys.vnis())).find((e) => e.value.networkKey === swarmKey);
    const vni = held ? Number(held.key.slice(keys.vnis().length)) : await this.allocateVni(swarmKey);
    this.logger.info('network allocated', { networkId, vni, again: held !== undefined });
    return { ...rawOptions, vni: String(vni) };
  }

  /** Swarm managers: the network is gone from the swarm; its cluster-wide records go too. */
  async freeNetwork(networkId: string): Promise<void> {
    await this.networkLocks.run(networkId, async () => {
      for (const entry of await this.records.list(vniRecordSchema, keys.vnis())) {
        if (entry.value.networkKey === `swarm-${networkId}`) await this.records.store.compareAndDelete(entry.key, entry.revision);
      }
      const mapping = await this.records.get(networkIdRecordSchema, keys.networkId(networkId));
      if (!mapping) return;
      await this.records.delete(keys.networkId(networkId));
      let gone = false;
      await this.records.update(networkRecordSchema, keys.network(mapping.value.networkKey), (current) => {
        if (!current) return undefined;
        const ids = current.ids.filter((id) => id !== networkId);
        if (ids.length > 0) return { ...current, ids };
        gone = true;
        return null;
      });
      if (gone) await this.records.store.deletePrefix(keys.endpoints(mapping.value.networkKey));
      this.logger.info('network freed', { networkId, networkKey: mapping.value.networkKey });
    });
  }

  /** A network allocated by swarm managers: its VNI is held for `swarm-<network id>`. */
  private async isSwarmNetwork(networkId: string, networkKey: string): Promise<boolean> {
    const network = await this.records.get(networkRecordSchema, keys.network(networkKey));
    if (!network) return false;
    const vni = await this.records.get(vniRecordSchema, keys.vni(network.value.vni));
    return vni?.value.networkKey === `swarm-${networkId}`;
  }

  private async removeHostEndpoints(networkId: string, networkKey: string): Promise<void> {
    for (const ep of await this.records.list(endpointRecordSchema, keys.endpoints(networkKey))) {
      if (ep.value.host === this.host.name && ep.value.networkId === networkId) await this.records.store.compareAndDelete(ep.key, ep.revision);
    }
  }

  /**
   * After a plugin restart: overlays that outlived the process get their peers again, and
   * endpoints this host still advertises as joined without an overlay (the host rebooted or
   * died) are withdrawn, so that no host keeps entries pointing at containers that are gone.
   */
  async resumeAfterRestart(): Promise<void> {
    for (const mapping of await this.records.list(networkIdRecordSchema, keys.networkIds())) {
      const networkId = mapping.key.slice(keys.networkIds().length);
      const network = await this.records.get(networkRecordSchema, keys.network(mapping.value.networkKey));
      if (!network) continue;
      const hasOverlay = this.dataplane.findOverlay(networkId) !== undefined;
      if (hasOverlay) {
        // Whatever drifted while no plugin was running is put right before peers are programmed.
        const spec = this.overlaySpec(networkId, network.value, mapping.value.remote);
        await this.networkLocks.run(networkId, async () => {
          await this.dataplane.ensureOverlay(spec);
          this.overlaySpecs.set(networkId, spec);
        });
        await this.peerSync?.networkActive(networkId, network.value);
      }
      for (const ep of await this.records.list(endpointRecordSchema, keys.endpoints(network.value.key))) {
        if (ep.value.host !== this.host.name || ep.value.networkId !== networkId) continue;
        if (ep.value.joined && !hasOverlay) {
          await this.records.store.compareAndSet(ep.key, encodeRecord({ ...ep.value, joined: false }), ep.revision);
          this.logger.info('withdrew stale endpoint', { networkId, endpointId: ep.value.id });
        } else if (ep.value.locator !== this.host.vtep) {
          await this.records.store.compareAndSet(ep.key, encodeRecord({ ...ep.value, locator: this.host.vtep }), ep.revision);
        }
      }
    }
  }

  /**
   * Start-up, before this host registers (so that no peer is ever shown state a crash left
   * behind): any step of a Join, Leave or DeleteEndpoint may have been cut short. Endpoints the
   * store calls joined whose port is gone (the container died meanwhile, the host rebooted) are
   * withdrawn; then every kernel object of ours that no endpoint record of this host accounts
   * for is removed, and so are the namespaces of networks with no joined local endpoint.
   */
  async recoverAfterCrash(): Promise<OrphanReport> {
    // A network whose pool this host no longer holds was being deleted (Docker releases the pool
    // first) and its DeleteNetwork was lost: finish it.
    for (const m of await this.records.list(networkIdRecordSchema, keys.networkIds())) {
      if (m.value.host !== this.host.name || !m.value.pool) continue;
      let poolKey: string;
      try {
        poolKey = keys.pool(subnetKey(parseSubnet(m.value.pool)));
      } catch {
        continue; // not written by us
      }
      const pool = await this.records.get(poolRecordSchema, poolKey);
      if (pool?.value.holders.includes(this.host.name)) continue;
      const networkId = m.key.slice(keys.networkIds().length);
      this.logger.warn('finishing the deletion of a network whose DeleteNetwork was lost', { networkId, pool: m.value.pool });
      await this.networkLocks.run(networkId, async () => {
        if (this.dataplane.findOverlay(networkId)) await this.dataplane.removeOverlay(networkId);
        await this.forgetNetwork(networkId, m.value);
      });
    }
    const mine = (await this.records.list(endpointRecordSchema, keys.allEndpoints())).filter((e) => e.value.host === this.host.name);
    const byNetwork = new Map<string, Versioned<EndpointRecord>[]>();
    for (const ep of mine) byNetwork.set(ep.value.networkId, [...(byNetwork.get(ep.value.networkId) ?? []), ep]);
    const keepNetworks: string[] = [];
    for (const [networkId, endpoints] of byNetwork) {
      let ports: Set<string>;
      try {
        ports = new Set(await this.dataplane.bridgePorts(networkId));
      } catch (err) {
        this.logger.warn('cannot list the ports of an overlay', { networkId, error: errorMessage(err) });
        continue;
      }
      let joined = 0;
      for (const ep of endpoints) {
        if (!ep.value.joined) continue;
        if (ports.has(`ve${ep.value.id.slice(0, 11)}`)) {
          joined++;
          continue;
        }
        await this.records.store.compareAndSet(ep.key, encodeRecord({ ...ep.value, joined: false }), ep.revision);
        this.logger.info('withdrew endpoint whose port is gone', { networkId, endpointId: ep.value.id });
      }
      if (joined > 0) keepNetworks.push(networkId);
    }
    const report = await this.dataplane.removeOrphans({ endpointIds: mine.map((e) => e.value.id), networkIds: keepNetworks });
    if (report.hostVeths.length + report.ports.length + report.namespaces.length > 0) {
      this.logger.warn('removed what a previous run left behind', { ...report });
    }
    return report;
  }

  /**
   * Docker is releasing an address (call before the IPAM frees it, so that no new endpoint can
   * hold it yet): an endpoint of this host that still has it and is not joined is one whose
   * DeleteEndpoint was lost (Docker calls ReleaseAddress right after it), or one Docker is rolling
   * back; it is deleted now, with its veth.
   */
  async addressReleased(poolId: string, address: string): Promise<void> {
    if (/^(swarm|node):/.test(poolId)) return;
    let subnet: string;
    let ip: string;
    try {
      subnet = parseSubnet(poolId.split('@')[0]!).cidr;
      ip = parseAddressCidr(address).ip;
    } catch {
      return;
    }
    for (const ep of await this.records.list(endpointRecordSchema, keys.allEndpoints())) {
      if (ep.value.host !== this.host.name || ep.value.ip !== ip || ep.value.joined) continue;
      const network = await this.findNetwork(ep.value.networkId);
      if (network && network.value.subnet !== subnet) continue;
      this.logger.warn('deleting an endpoint whose DeleteEndpoint never arrived', { networkId: ep.value.networkId, endpointId: ep.value.id, ip });
      if (network) await this.deleteEndpoint(ep.value.networkId, ep.value.id);
      else await this.records.delete(ep.key);
    }
  }

  /**
   * Periodic repair of kernel drift: re-asserts every local overlay (br0, vxlan0, the ports'
   * master) from the spec of its last Join, so a device deleted by hand comes back; if anything
   * had to be rebuilt, its peers are re-programmed at once. Needs no store.
   */
  async repairOverlays(): Promise<string[]> {
    const repaired: string[] = [];
    for (const networkId of [...this.overlaySpecs.keys()]) {
      await this.networkLocks.run(networkId, async () => {
        const spec = this.overlaySpecs.get(networkId);
        if (!spec || !this.dataplane.findOverlay(networkId)) return; // removed meanwhile: nothing to repair
        if (!(await this.dataplane.repairOverlay(spec))) return;
        repaired.push(networkId);
        await this.peerSync?.resync?.(networkId, 'overlay repaired');
      });
    }
    return repaired;
  }

  overlaySpec(networkId: string, network: NetworkRecord, localRemote?: string): OverlaySpec {
    const options = parseNetworkOptions(network.options);
    const remote = localRemote ?? options.remote;
    const prefix = parseSubnet(network.subnet).prefixLength;
    return {
      networkId,
      vni: network.vni,
      mtu: network.mtu,
      gatewayCidr: `${network.gateway}/${prefix}`,
      vtep: this.host.vtep,
      mode: network.mode,
      ...(remote ? { remote } : {}),
      ...(options.group ? { group: options.group } : {}),
    };
  }

  async findNetwork(networkId: string): Promise<Versioned<NetworkRecord> | undefined> {
    const mapping = await this.records.get(networkIdRecordSchema, keys.networkId(networkId));
    if (!mapping) return undefined;
    return this.records.get(networkRecordSchema, keys.network(mapping.value.networkKey));
  }

  private async requireNetwork(networkId: string): Promise<Versioned<NetworkRecord>> {
    const network = await this.findNetwork(networkId);
    if (!network) throw new PluginError(`unknown network ${networkId}`, 404);
    return network;
  }

  private async requireEndpoint(network: NetworkRecord, endpointId: string): Promise<Versioned<EndpointRecord>> {
    const endpoint = await this.records.get(endpointRecordSchema, keys.endpoint(network.key, endpointId));
    if (!endpoint || endpoint.value.host !== this.host.name) throw new PluginError(`unknown endpoint ${endpointId}`, 404);
    return endpoint;
  }

  /** The endpoint's veth pair; on an overlay that was not re-checked (`verified`), a failure repairs the overlay and tries once more. */
  private async attachOrRepair(attachment: EndpointAttachment, spec: OverlaySpec, verified: boolean): Promise<AttachedEndpoint> {
    try {
      return await this.dataplane.attachEndpoint(attachment);
    } catch (err) {
      if (!verified) throw err;
      this.logger.warn('attach failed on a verified overlay; repairing it', { networkId: attachment.networkId, endpointId: attachment.endpointId, error: errorMessage(err) });
      await this.dataplane.ensureOverlay(spec);
      return this.dataplane.attachEndpoint(attachment);
    }
  }

  /**
   * The endpoint's veth pair, made now if its network's overlay is up and was built or checked
   * by this process (a cold network's Join builds the namespace first). Never fails: without a
   * prepared pair, Join makes it as usual.
   */
  private async preparePort(networkId: string, network: NetworkRecord, endpointId: string, mac: string): Promise<void> {
    const overlay = this.dataplane.findOverlay(networkId);
    if (!overlay || !this.overlaySpecs.has(networkId)) return;
    try {
      const attached = await this.dataplane.attachEndpoint({ networkId, endpointId, mac, mtu: network.mtu });
      this.preparedPorts.set(endpointId, { epoch: overlay.epoch, attached });
    } catch (err) {
      this.logger.debug('veth pair not prepared; Join will make it', { networkId, endpointId, error: errorMessage(err) });
    }
  }

  private async dropPreparedPort(networkId: string, endpointId: string): Promise<void> {
    if (!this.preparedPorts.delete(endpointId)) return;
    await this.dataplane.detachEndpoint(networkId, endpointId).catch((err: unknown) =>
      this.logger.warn('cannot remove the veth pair of an endpoint that was not created', { networkId, endpointId, error: errorMessage(err) }),
    );
  }

  private async removeOverlayIfUnused(networkId: string, network: NetworkRecord): Promise<void> {
    if (!this.dataplane.findOverlay(networkId)) return;
    const endpoints = await this.records.list(endpointRecordSchema, keys.endpoints(network.key));
    const stillJoined = endpoints.some((e) => e.value.host === this.host.name && e.value.networkId === networkId && e.value.joined);
    if (stillJoined) return;
    await this.peerSync?.networkInactive(networkId);
    this.overlaySpecs.delete(networkId);
    await this.dataplane.removeOverlay(networkId);
    this.logger.info('overlay removed: no local container left', { networkId });
  }

  private async joinOrCreateNetworkRecord(
    networkKey: string,
    networkId: string,
    subnet: string,
    gateway: string,
    options: NetworkOptions,
  ): Promise<NetworkRecord> {
    const key = keys.network(networkKey);
    const existing = await this.records.get(networkRecordSchema, key);
    if (!existing) {
      const vni = options.vni ?? (await this.allocateVni(networkKey));
      if (options.vni !== undefined) await this.claimVni(options.vni, networkKey);
      const record: NetworkRecord = {
        key: networkKey,
        ids: [networkId],
        vni,
        subnet,
        gateway,
        mtu: overlayMtu(this.host.underlayMtu, options.mtu),
        mode: options.mode,
        options: this.storedOptions(options),
        created: nowIso(),
      };
      if (await this.records.create(key, record)) return record;
      // Another host created it first: give our VNI back and adopt theirs (unless it is the same one).
      if (options.vni === undefined) {
        const winner = await this.records.get(networkRecordSchema, key);
        if (winner?.value.vni !== vni) await this.records.delete(keys.vni(vni));
      }
    }
    const joined = await this.records.update(networkRecordSchema, key, (current) => {
      if (!current) throw new PluginError('the network record vanished while it was being created; try again', 503);
      this.checkCompatible(current, subnet, options);
      return current.ids.includes(networkId) ? undefined : { ...current, ids: [...current.ids, networkId] };
    });
    return joined!;
  }

  private checkCompatible(current: NetworkRecord, subnet: string, options: NetworkOptions): void {
    if (current.subnet !== subnet) {
      throw new PluginError(`VNI ${current.vni} is already used by a network on ${current.subnet}, not ${subnet}`, 409);
    }
    if (current.mode !== options.mode) {
      throw new PluginError(`network on ${subnet} already exists in the cluster with mode=${current.mode}`, 409);
    }
    if (current.mode === 'multicast' && current.options.group !== options.group) {
      throw new PluginError(`network on ${subnet} already exists in the cluster with group=${current.options.group}`, 409);
    }
  }

  /** Two Docker networks on one host with the same subnet would share one overlay: refuse the second. */
  private async refuseSecondLocalNetwork(network: NetworkRecord, networkId: string): Promise<void> {
    for (const otherId of network.ids) {
      if (otherId === networkId) continue;
      const other = await this.records.get(networkIdRecordSchema, keys.networkId(otherId));
      if (other?.value.host === this.host.name) {
        await this.records.update(networkRecordSchema, keys.network(network.key), (current) =>
          current ? { ...current, ids: current.ids.filter((id) => id !== networkId) } : undefined,
        );
        throw new PluginError(`subnet ${network.subnet} is already used by network ${otherId} on this host`, 409);
      }
    }
  }

  private async allocateVni(networkKey: string): Promise<number> {
    for (let attempt = 0; attempt < 64; attempt++) {
      const entries = await this.records.list(vniRecordSchema, keys.vnis());
      // Only called while no network record exists for the key: a VNI already held for it was
      // allocated by a create that crashed (or is racing us on another host); take that one.
      const held = entries.find((e) => e.value.networkKey === networkKey);
      if (held) return Number(held.key.slice(keys.vnis().length));
      const used = new Set((await this.records.store.list(keys.vnis())).map((e) => Number(e.key.slice(keys.vnis().length))));
      let vni = FIRST_VNI;
      while (used.has(vni)) vni++;
      if (vni > MAX_VNI) throw new PluginError('no free VNI left', 409);
      if (await this.records.create(keys.vni(vni), { networkKey, created: nowIso() })) return vni;
    }
    throw new PluginError('could not allocate a VNI: too much contention, try again', 503);
  }

  private async claimVni(vni: number, networkKey: string): Promise<void> {
    if (await this.records.create(keys.vni(vni), { networkKey, created: nowIso() })) return;
    const holder = await this.records.get(vniRecordSchema, keys.vni(vni));
    if (holder && holder.value.networkKey !== networkKey && !holder.value.networkKey.startsWith('swarm-')) {
      throw new PluginError(`VNI ${vni} is already in use by another network`, 409);
    }
  }

  private storedOptions(options: NetworkOptions): Record<string, string> {
    const out: Record<string, string> = { mode: options.mode };
    if (options.vni !== undefined) out.vni = String(options.vni);
    if (options.remote) out.remote = options.remote;
    if (options.group) out.group = options.group;
    if (options.mtu !== undefined) out.mtu = String(options.mtu);
    return out;
  }

  /** The container name Docker passed to IPAM's RequestAddress, kept for `inspect`. */
  private async endpointName(subnetCidr: string, ip: string): Promise<string | undefined> {
    const key = keys.address(subnetKey(parseSubnet(subnetCidr)), ip);
    const entry = await this.records.get(addressRecordSchema, key).catch(() => undefined);
    return entry?.value.name;
  }

  private parseOptions(raw: Record<string, string>): NetworkOptions {
    return this.parse(() => parseNetworkOptions(raw));
  }

  private parse<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw new PluginError(errorMessage(err));
    }
  }
}
