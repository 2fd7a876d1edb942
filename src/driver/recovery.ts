import { vethNames } from '../dataplane/dataplane';
import type { OrphanReport } from '../dataplane/types';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import type { KeyedRwLock } from '../util/keyed-rwlock';
import type { HostEndpointIndex } from './endpoint-index';
import type { LocalOverlays, OverlayDataplane } from './local-overlays';
import type { HostIdentity, NetworkRecords } from './network-records';
import type { RecordStore, Versioned } from './record-store';
import { endpointRecordSchema, keys, networkRecordSchema, poolRecordSchema, type EndpointRecord } from './records';
import { parseAddressCidr, parseSubnet, subnetKey } from './subnet';

export interface RecoveryDeps {
  records: RecordStore;
  networks: NetworkRecords;
  overlays: LocalOverlays;
  dataplane: Pick<OverlayDataplane, 'bridgePorts' | 'removeOrphans'>;
  host: HostIdentity;
  /** This host's endpoint records by key (once complete; until then recovery scans and completes it). */
  index: HostEndpointIndex;
  /** The driver's per-network locks: recovery of a network runs alone on it, as a network request would. */
  locks: Pick<KeyedRwLock, 'exclusive'>;
  logger: Logger;
  /** DeleteEndpoint, for endpoints whose own DeleteEndpoint was lost. */
  deleteEndpoint(networkId: string, endpointId: string): Promise<void>;
}

/**
 * What a restart or a crash left half-done, put right from the store and the kernel: after a
 * plugin restart (overlays that outlived the process), at start-up after a crash (before this
 * host registers), and when Docker releases an address an endpoint of a lost DeleteEndpoint
 * still holds.
 */
export class Recovery {
  /** Revision of the last endpoint withdrawn by recoverAfterCrash (see HostRecord.settled). */
  settledRevision?: number;
  /** The same per network key (see HostRecord.settledIn). */
  readonly settledIn: Record<string, number> = {};
  /** This host's endpoints as the start-up sweep left them, for resumeAfterRestart. */
  private sweptEndpoints?: Versioned<EndpointRecord>[];

  constructor(private readonly deps: RecoveryDeps) {}

  /**
   * After a plugin restart: overlays that outlived the process get their peers again, and
   * endpoints this host still advertises as joined without an overlay (the host rebooted or
   * died) are withdrawn, so that no host keeps entries pointing at containers that are gone.
   * Only this host's overlays and endpoints are touched: the mappings of other hosts' Docker
   * networks (one per host and network in a cluster) cost nothing here.
   */
  async resumeAfterRestart(): Promise<void> {
    const { records, networks, overlays, host, logger } = this.deps;
    const mine = this.sweptEndpoints ?? (await this.localEndpoints());
    this.sweptEndpoints = undefined;
    const local = (await networks.mappings()).filter(({ networkId }) => overlays.find(networkId) !== undefined);
    // Whatever drifted while no plugin was running is put right before peers are programmed;
    // a few networks at a time, as each reads its network's endpoints.
    await inTurns(local, RESUME_CONCURRENCY, async ({ networkId, mapping }) => {
      const network = await records.get(networkRecordSchema, keys.network(mapping.networkKey));
      if (network) await overlays.resume(overlays.specFor(networkId, network.value, mapping.remote), network.value);
    });
    for (const ep of mine) {
      if (ep.value.joined && overlays.find(ep.value.networkId) === undefined) {
        await records.compareAndSet(ep, { ...ep.value, joined: false });
        logger.info('withdrew stale endpoint', { networkId: ep.value.networkId, endpointId: ep.value.id });
      } else if (ep.value.locator !== host.vtep) {
        // Informational (peers read the VTEP from hosts/), kept current for `inspect`.
        await records.compareAndSet(ep, { ...ep.value, locator: host.vtep });
      }
    }
  }

  /**
   * This host's endpoint records: through its index, or, the first time (a cluster written before
   * the index), read from the networks it can have endpoints on (see localNetworkKeys), of which
   * only the records naming this host are decoded, and then indexed. Start-up only: it drops
   * index entries whose record is gone.
   */
  private async localEndpoints(): Promise<Versioned<EndpointRecord>[]> {
    const indexed = await this.deps.index.endpoints({ dropDangling: true });
    if (indexed) return indexed;
    const mine = await this.scanLocalEndpoints();
    await this.deps.index.indexed(mine);
    return mine;
  }

  private async scanLocalEndpoints(): Promise<Versioned<EndpointRecord>[]> {
    const { records, host } = this.deps;
    const name = JSON.stringify(host.name);
    const mine: Versioned<EndpointRecord>[] = [];
    // A few networks at a time: the store works on one read while this process decodes another.
    await inTurns([...(await this.localNetworkKeys())], RESUME_CONCURRENCY, async (networkKey) => {
      for (const ep of await records.listMatching(endpointRecordSchema, keys.endpoints(networkKey), (raw) => raw.includes(name))) {
        if (ep.value.host === host.name) mine.push(ep);
      }
    });
    return mine;
  }

  /**
   * The networks this host can have endpoints on: the ones it mapped (CreateNetwork here writes
   * the mapping of this host's Docker network id), the ones with an overlay here, and those whose
   * mapping another host may have rewritten since (a swarm network's id is the same on every
   * node; swarm networks, like networks on Docker's IPAM, have no tsoverlay pool). Not the other
   * hosts' own networks, which in a cluster are most of `netids/`.
   */
  private async localNetworkKeys(): Promise<Set<string>> {
    const { networks, overlays, host } = this.deps;
    const out = new Set<string>();
    for (const { networkId, mapping } of await networks.mappings()) {
      if (mapping.host === host.name || (!mapping.pool && !mapping.pool6) || overlays.find(networkId) !== undefined) out.add(mapping.networkKey);
    }
    return out;
  }

  /**
   * Start-up, before this host registers (so that no peer is ever shown state a crash left
   * behind): any step of a Join, Leave or DeleteEndpoint may have been cut short. Endpoints the
   * store calls joined whose port is gone (the container died meanwhile, the host rebooted) are
   * withdrawn; then every kernel object of ours that no endpoint record of this host accounts
   * for is removed, and so are the namespaces of networks with no joined local endpoint.
   */
  async recoverAfterCrash(): Promise<OrphanReport> {
    const { records, dataplane, logger } = this.deps;
    await this.finishLostNetworkDeletions();
    const mine = await this.localEndpoints();
    // resumeAfterRestart, which follows, starts from these rather than reading them again.
    this.sweptEndpoints = mine;
    const byNetwork = new Map<string, Versioned<EndpointRecord>[]>();
    for (const ep of mine) byNetwork.set(ep.value.networkId, [...(byNetwork.get(ep.value.networkId) ?? []), ep]);
    const keepNetworks: string[] = [];
    for (const [networkId, endpoints] of byNetwork) {
      let ports: Set<string>;
      try {
        ports = new Set(await dataplane.bridgePorts(networkId));
      } catch (err) {
        logger.warn('cannot list the ports of an overlay', { networkId, error: errorMessage(err) });
        continue;
      }
      let joined = 0;
      for (const ep of endpoints) {
        if (!ep.value.joined) continue;
        if (ports.has(bridgePortOf(ep.value.id))) {
          joined++;
          continue;
        }
        const withdrawn = { ...ep.value, joined: false };
        const revision = await records.compareAndSet(ep, withdrawn);
        if (revision !== undefined) {
          mine[mine.indexOf(ep)] = { key: ep.key, value: withdrawn, revision };
          this.settledRevision = Math.max(this.settledRevision ?? 0, revision);
          const networkKey = keys.parseEndpoint(ep.key)?.networkKey;
          if (networkKey !== undefined) this.settledIn[networkKey] = Math.max(this.settledIn[networkKey] ?? 0, revision);
        }
        logger.info('withdrew endpoint whose port is gone', { networkId, endpointId: ep.value.id });
      }
      if (joined > 0) keepNetworks.push(networkId);
    }
    const report = await dataplane.removeOrphans({ endpointIds: mine.map((e) => e.value.id), networkIds: keepNetworks });
    if (report.hostVeths.length + report.ports.length + report.namespaces.length > 0) {
      logger.warn('removed what a previous run left behind', { ...report });
    }
    return report;
  }

  /**
   * Docker is releasing an address (call before the IPAM frees it, so that no new endpoint can
   * hold it yet): an endpoint of this host that still has it and is not joined is one whose
   * DeleteEndpoint was lost (Docker calls ReleaseAddress right after it), or one Docker is rolling
   * back; it is deleted now, with its veth.
   */
  async deleteEndpointsLostWithAddress(poolId: string, address: string): Promise<void> {
    const { records, networks, host, logger } = this.deps;
    if (/^(swarm|node):/.test(poolId)) return;
    let subnet: string;
    let ip: string;
    try {
      subnet = parseSubnet(poolId.split('@')[0]!).cidr;
      ip = parseAddressCidr(address).ip;
    } catch {
      return;
    }
    // This host's records by its index (entries of a CreateEndpoint still writing stay); before
    // the index is complete, a scan that decodes only records naming both this host and the address.
    const name = JSON.stringify(host.name);
    const quotedIp = JSON.stringify(ip);
    const candidates =
      (await this.deps.index.endpoints({ dropDangling: false })) ??
      (await records.listMatching(endpointRecordSchema, keys.allEndpoints(), (raw) => raw.includes(quotedIp) && raw.includes(name)));
    for (const ep of candidates) {
      if (ep.value.host !== host.name || (ep.value.ip !== ip && ep.value.ip6 !== ip) || ep.value.joined) continue;
      const network = await networks.find(ep.value.networkId);
      if (network && network.value.subnet !== subnet && network.value.subnet6 !== subnet) continue;
      logger.warn('deleting an endpoint whose DeleteEndpoint never arrived', { networkId: ep.value.networkId, endpointId: ep.value.id, ip });
      if (network) await this.deps.deleteEndpoint(ep.value.networkId, ep.value.id);
      else await records.delete(ep.key);
    }
  }

  /**
   * A network whose pool this host no longer holds was being deleted (Docker releases the pool
   * first) and its DeleteNetwork was lost: finish it.
   */
  private async finishLostNetworkDeletions(): Promise<void> {
    const { records, networks, overlays, host, locks, logger } = this.deps;
    for (const { networkId, mapping } of await networks.mappings()) {
      if (mapping.host !== host.name || !mapping.pool) continue;
      let poolKey: string;
      try {
        poolKey = keys.pool(subnetKey(parseSubnet(mapping.pool)));
      } catch {
        continue; // not written by us
      }
      const pool = await records.get(poolRecordSchema, poolKey);
      if (pool?.value.holders.includes(host.name)) continue;
      logger.warn('finishing the deletion of a network whose DeleteNetwork was lost', { networkId, pool: mapping.pool });
      await locks.exclusive(networkId, async () => {
        if (overlays.find(networkId)) await overlays.release(networkId);
        await networks.forget(networkId, mapping);
      });
    }
  }
}

/** Networks read, or overlays resumed, at once after a restart. */
const RESUME_CONCURRENCY = 4;

/** `fn` over `items`, at most `concurrency` at a time; the first failure is thrown once all have settled. */
async function inTurns<T>(items: readonly T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const failures: unknown[] = [];
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const item = items[next++]!;
        await fn(item).catch((err: unknown) => failures.push(err));
      }
    }),
  );
  if (failures.length > 0) throw failures[0];
}

/** The name of an endpoint's bridge port, or '' for an id the dataplane would never have used. */
function bridgePortOf(endpointId: string): string {
  try {
    return vethNames(endpointId).bridgePortName;
  } catch {
    return '';
  }
}
