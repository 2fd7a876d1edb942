/**
 * IPAM's addresses: who holds one (one key per address, `ipam/addresses/<subnet>/<ip>`) and
 * whether a request for a held address is its holder asking again. Where the next free one is:
 * ipam-allocator.ts.
 */

import type { RecordStore } from './record-store';
import { endpointRecordSchema, keys, networkRecordSchema, type AddressRecord, type EndpointRecord } from './records';
import type { DockerReplay } from './ipam-replay';
import type { PoolKind } from './ipam-pools';
import { subnetKey, type Subnet } from './subnet';

/** A request for an address, as far as telling its holder apart is concerned. */
export interface AddressAsk {
  ip: string;
  record: AddressRecord;
  isGateway: boolean;
  kind: PoolKind;
  name?: string;
  requestId?: string;
  replay?: DockerReplay;
}

/**
 * Why a request for an address held by `holder` is the holder asking again (undefined: it is
 * not). Never the host alone: two containers on one host are two holders.
 */
export function sameHolder(holder: AddressRecord, ask: AddressAsk): string | undefined {
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

/** Who holds an address, for the error a second claimant gets. */
export async function describeHolder(records: RecordStore, holder: AddressRecord, subnet: Subnet, ip: string): Promise<string> {
  if (holder.kind === 'gateway') return `it is the network's gateway`;
  if (holder.kind === 'reserved') return 'it is reserved';
  let endpoint: EndpointRecord | undefined;
  try {
    endpoint = (await endpointsUsing(records, subnet, ip, holder.host, false))[0];
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
export async function endpointsUsing(
  records: RecordStore,
  subnet: Subnet,
  ip: string,
  host: string,
  joinedOnly: boolean,
): Promise<EndpointRecord[]> {
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
