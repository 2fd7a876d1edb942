import type { Logger } from '../log';
import { PluginError } from '../util/errors';
import { FIRST_VNI, MAX_VNI, overlayMtu, type NetworkOptions } from './options';
import { nowIso, type RecordStore, type Versioned } from './record-store';
import {
  endpointRecordSchema,
  keys,
  networkIdRecordSchema,
  networkRecordSchema,
  vniRecordSchema,
  type NetworkIdRecord,
  type NetworkRecord,
} from './records';

/** What the driver knows of this host when it writes cluster records. */
export interface HostIdentity {
  name: string;
  /** Underlay address other hosts send VXLAN traffic to. */
  vtep: string;
  /** MTU of the underlay interface; the overlay gets 50 bytes less (70 on an IPv6 underlay). */
  underlayMtu: number;
}

/**
 * This host's side of the IPAM (src/driver/ipam), for when Docker's release calls are lost: Docker
 * retries a call whose connection broke with an empty body (see protocol/inflight.ts), and when
 * the plugin died before reading it, the release never happens. Releasing twice is harmless.
 */
export interface AddressReleaser {
  releasePool(poolId: string): Promise<void>;
}

/** The VNI holder of a network allocated by swarm managers (AllocateNetwork). */
const swarmHolder = (networkId: string) => `swarm-${networkId}`;
const isSwarmHolder = (holder: string) => holder.startsWith('swarm-');

/**
 * Cluster-wide network and VNI records (the role of libnetwork's overlay `ovmanager`): which
 * Docker network ids map to which `networks/<key>` record, which VNI each network holds, and
 * the network records' life from the first host's CreateNetwork to the last host's
 * DeleteNetwork (or the swarm managers' FreeNetwork). No kernel state here.
 */
export class NetworkRecords {
  constructor(
    private readonly records: RecordStore,
    private readonly host: HostIdentity,
    private readonly logger: Logger,
    private readonly ipam?: AddressReleaser,
  ) {}

  mapping(networkId: string): Promise<Versioned<NetworkIdRecord> | undefined> {
    return this.records.get(networkIdRecordSchema, keys.networkId(networkId));
  }

  /** Every Docker network id known to the store with its mapping (all hosts'). */
  async mappings(): Promise<{ networkId: string; mapping: NetworkIdRecord }[]> {
    const out: { networkId: string; mapping: NetworkIdRecord }[] = [];
    for (const m of await this.records.list(networkIdRecordSchema, keys.networkIds())) {
      const networkId = keys.networkIdOf(m.key);
      if (networkId !== undefined) out.push({ networkId, mapping: m.value });
    }
    return out;
  }

  async find(networkId: string): Promise<Versioned<NetworkRecord> | undefined> {
    const mapping = await this.mapping(networkId);
    if (!mapping) return undefined;
    return this.records.get(networkRecordSchema, keys.network(mapping.value.networkKey));
  }

  async require(networkId: string): Promise<Versioned<NetworkRecord>> {
    const network = await this.find(networkId);
    if (!network) throw new PluginError(`unknown network ${networkId}`, 404);
    return network;
  }

  /**
   * CreateNetwork's records: the cluster network (made by the first host, joined by the others),
   * then this host's mapping of its Docker network id to it.
   */
  async create(input: {
    networkId: string;
    networkKey: string;
    subnet: string;
    gateway: string;
    /** The IPv6 subnet and gateway; `subnet` and `gateway` are empty on an IPv6-only network. */
    v6?: { subnet: string; gateway: string };
    options: NetworkOptions;
    /** The tsoverlay IPAM pool(s) this host requested for the network, if any. */
    pool?: string;
    pool6?: string;
  }): Promise<NetworkRecord> {
    const { networkId, networkKey } = input;
    const known = await this.mapping(networkId);
    if (known && known.value.networkKey !== networkKey) {
      throw new PluginError(`network ${networkId} already exists with different settings`, 409);
    }
    const network = await this.joinOrCreateNetworkRecord(networkKey, networkId, input.subnet, input.gateway, input.v6, input.options);
    await this.refuseSecondLocalNetwork(network, networkId);
    await this.records.put(keys.networkId(networkId), {
      networkKey,
      host: this.host.name,
      ...(input.options.remote ? { remote: input.options.remote } : {}),
      ...(input.pool ? { pool: input.pool } : {}),
      ...(input.pool6 ? { pool6: input.pool6 } : {}),
      created: nowIso(),
    } satisfies NetworkIdRecord);
    return network;
  }

  /**
   * Swarm managers allocate the VNI before any worker sees the network; the options returned
   * here replace the generic options workers get in CreateNetwork, so the VNI travels with them.
   * Idempotent: a repeated AllocateNetwork (manager restart, new leader) gets the same VNI.
   */
  async allocateSwarm(networkId: string, options: NetworkOptions, rawOptions: Record<string, string>): Promise<Record<string, string>> {
    const holder = swarmHolder(networkId);
    if (options.vni !== undefined) {
      // Claimed for this swarm network, so that every node knows the network as a swarm one.
      await this.claimVni(options.vni, holder);
      return { ...rawOptions };
    }
    const { vni, held } = await this.allocateVni(holder);
    this.logger.info('network allocated', { networkId, vni, again: held });
    return { ...rawOptions, vni: String(vni) };
  }

  /** Swarm managers: the network is gone from the swarm; its cluster-wide records go too. */
  async freeSwarm(networkId: string): Promise<void> {
    await this.releaseVnis(swarmHolder(networkId));
    const mapping = await this.mapping(networkId);
    if (!mapping) return;
    await this.forget(networkId, mapping.value);
    this.logger.info('network freed', { networkId, networkKey: mapping.value.networkKey });
  }

  /** A network allocated by swarm managers: its VNI is held for `swarm-<network id>`. */
  async isSwarmNetwork(networkId: string, networkKey: string): Promise<boolean> {
    const network = await this.records.get(networkRecordSchema, keys.network(networkKey));
    if (!network) return false;
    const vni = await this.records.get(vniRecordSchema, keys.vni(network.value.vni));
    return vni?.value.networkKey === swarmHolder(networkId);
  }

  /** Swarm: a node dropping its copy of the network withdraws only its own endpoints. */
  async removeHostEndpoints(networkId: string, networkKey: string): Promise<void> {
    for (const ep of await this.records.list(endpointRecordSchema, keys.endpoints(networkKey))) {
      if (ep.value.host === this.host.name && ep.value.networkId === networkId) await this.records.compareAndDelete(ep);
    }
  }

  /** The store side of DeleteNetwork and FreeNetwork (the overlay is already gone). Idempotent. */
  async forget(networkId: string, mapping: NetworkIdRecord): Promise<void> {
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
      await this.releaseVnis(networkKey);
      await this.records.deletePrefix(keys.endpoints(networkKey));
    }
    // Docker releases the pool just before (20.10) or after DeleteNetwork; if that release
    // was lost, the pool would stay held by this host for ever. Releasing twice is harmless.
    for (const pool of [mapping.pool, mapping.pool6]) {
      if (pool && this.ipam && !(await this.otherLocalNetworkOnPool(networkId, pool))) await this.ipam.releasePool(pool);
    }
    await this.records.delete(keys.networkId(networkId));
    this.logger.info('network deleted', { networkId, networkKey, lastHost });
  }

  private async otherLocalNetworkOnPool(networkId: string, pool: string): Promise<boolean> {
    const mine = await this.records.list(networkIdRecordSchema, keys.networkIds());
    return mine.some((m) => m.key !== keys.networkId(networkId) && m.value.host === this.host.name && (m.value.pool === pool || m.value.pool6 === pool));
  }

  private async joinOrCreateNetworkRecord(
    networkKey: string,
    networkId: string,
    subnet: string,
    gateway: string,
    v6: { subnet: string; gateway: string } | undefined,
    options: NetworkOptions,
  ): Promise<NetworkRecord> {
    const key = keys.network(networkKey);
    const existing = await this.records.get(networkRecordSchema, key);
    if (!existing) {
      let vni: number;
      if (options.vni !== undefined) {
        vni = options.vni;
        await this.claimVni(vni, networkKey);
      } else {
        vni = (await this.allocateVni(networkKey)).vni;
      }
      const record: NetworkRecord = {
        key: networkKey,
        ids: [networkId],
        vni,
        subnet,
        gateway,
        ...(v6 ? { subnet6: v6.subnet, gateway6: v6.gateway } : {}),
        mtu: overlayMtu(this.host.underlayMtu, options.mtu, options.encrypted, this.host.vtep),
        mode: options.mode,
        options: storedOptions(options),
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
      checkCompatible(current, subnet, v6?.subnet, options);
      return current.ids.includes(networkId) ? undefined : { ...current, ids: [...current.ids, networkId] };
    });
    return joined!;
  }

  /** Two Docker networks on one host with the same subnet would share one overlay: refuse the second. */
  private async refuseSecondLocalNetwork(network: NetworkRecord, networkId: string): Promise<void> {
    for (const otherId of network.ids) {
      if (otherId === networkId) continue;
      const other = await this.mapping(otherId);
      if (other?.value.host === this.host.name) {
        await this.records.update(networkRecordSchema, keys.network(network.key), (current) =>
          current ? { ...current, ids: current.ids.filter((id) => id !== networkId) } : undefined,
        );
        throw new PluginError(`subnet ${network.subnet || network.subnet6} is already used by network ${otherId} on this host`, 409);
      }
    }
  }

  /**
   * The first free VNI, created for `holder` with create-if-absent. A VNI already held for
   * `holder` is returned as it is (`held`): allocated by a create that crashed, by a create
   * racing us on another host, or by an earlier AllocateNetwork.
   */
  private async allocateVni(holder: string): Promise<{ vni: number; held: boolean }> {
    for (let attempt = 0; attempt < 64; attempt++) {
      const entries = await this.records.list(vniRecordSchema, keys.vnis());
      const held = entries.map((e) => ({ vni: keys.vniOf(e.key), holder: e.value.networkKey })).find((e) => e.holder === holder && e.vni !== undefined);
      if (held) return { vni: held.vni!, held: true };
      const used = new Set((await this.records.keysUnder(keys.vnis())).map((key) => keys.vniOf(key)));
      let vni = FIRST_VNI;
      while (used.has(vni)) vni++;
      if (vni > MAX_VNI) throw new PluginError('no free VNI left', 409);
      if (await this.records.create(keys.vni(vni), { networkKey: holder, created: nowIso() })) return { vni, held: false };
    }
    throw new PluginError('could not allocate a VNI: too much contention, try again', 503);
  }

  /**
   * A VNI named with `-o vni=`, claimed for `holder`. A worker's CreateNetwork finds it held by
   * the swarm network the managers allocated, which is the same network.
   */
  private async claimVni(vni: number, holder: string): Promise<void> {
    if (await this.records.create(keys.vni(vni), { networkKey: holder, created: nowIso() })) return;
    const current = await this.records.get(vniRecordSchema, keys.vni(vni));
    if (!current || current.value.networkKey === holder) return;
    if (!isSwarmHolder(holder) && isSwarmHolder(current.value.networkKey)) return;
    throw new PluginError(`VNI ${vni} is already in use by another network`, 409);
  }

  /** Deletes every VNI record held by `holder`. */
  private async releaseVnis(holder: string): Promise<void> {
    for (const entry of await this.records.list(vniRecordSchema, keys.vnis())) {
      if (entry.value.networkKey === holder) await this.records.compareAndDelete(entry);
    }
  }
}

function checkCompatible(current: NetworkRecord, subnet: string, subnet6: string | undefined, options: NetworkOptions): void {
  if (current.subnet !== subnet) {
    throw new PluginError(`VNI ${current.vni} is already used by a network on ${current.subnet || 'no IPv4 subnet'}, not ${subnet || 'no IPv4 subnet'}`, 409);
  }
  // Every host's containers must have the same families, or some peers could not reach others.
  if (current.subnet6 !== subnet6) {
    const has = (s?: string) => (s ? `IPv6 subnet ${s}` : 'no IPv6 subnet');
    throw new PluginError(`network on ${subnet} already exists in the cluster with ${has(current.subnet6)}, not ${has(subnet6)}`, 409);
  }
  if (current.mode !== options.mode) {
    throw new PluginError(`network on ${subnet} already exists in the cluster with mode=${current.mode}`, 409);
  }
  if (current.mode === 'multicast' && current.options.group !== options.group) {
    throw new PluginError(`network on ${subnet} already exists in the cluster with group=${current.options.group}`, 409);
  }
  // Never one host encrypting and another sending the same network in clear.
  const encrypted = current.options.encrypted === 'true';
  if (encrypted !== (options.encrypted === true)) {
    throw new PluginError(
      `network on ${subnet} already exists in the cluster ${encrypted ? 'encrypted: create it with -o encrypted on every host' : 'without encryption: create it without -o encrypted'}`,
      409,
    );
  }
}

function storedOptions(options: NetworkOptions): Record<string, string> {
  const out: Record<string, string> = { mode: options.mode };
  if (options.vni !== undefined) out.vni = String(options.vni);
  if (options.remote) out.remote = options.remote;
  if (options.group) out.group = options.group;
  if (options.mtu !== undefined) out.mtu = String(options.mtu);
  if (options.encrypted) out.encrypted = 'true';
  return out;
}
