/**
 * Which names a network serves, from its records: the rule the DNS view applies, as a pure
 * function for `tsoverlay inspect`. A names record counts while its endpoint is joined on a
 * live host. `inspect` reads the store only, so for it a host is live while its `hosts/` record
 * exists, as for the peers it lists; the daemon also keeps a host whose registration lapsed
 * while it answers underlay probes (peers and names alike: see NamesView and LiveHosts).
 */
import type { EndpointRecord } from '../driver/records';
import type { NamesRecord } from './records';

export interface ServedNameReport {
  container: string;
  names: string[];
  /** Empty on an IPv6-only network. */
  ip: string;
  ip6?: string;
  host: string;
}

export function servedNames(records: readonly NamesRecord[], endpoints: readonly EndpointRecord[], liveHosts: ReadonlySet<string>): ServedNameReport[] {
  const byId = new Map(endpoints.map((e) => [e.id, e]));
  const out: ServedNameReport[] = [];
  for (const r of records) {
    const ep = byId.get(r.endpointId);
    if (!ep || !ep.joined || !liveHosts.has(ep.host)) continue;
    out.push({ container: r.container, names: r.names, ip: ep.ip, ...(ep.ip6 ? { ip6: ep.ip6 } : {}), host: ep.host });
  }
  return out.sort((a, b) => a.container.localeCompare(b.container));
}
