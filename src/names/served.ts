/**
 * Which names a network serves, from its records: the rule the DNS view applies, as a pure
 * function for `tsoverlay inspect`. A names record counts while its endpoint is joined on a
 * host whose `hosts/` record exists (the rule peer programming uses).
 */
import type { EndpointRecord } from '../driver/records';
import type { NamesRecord } from './records';

export interface ServedNameReport {
  container: string;
  names: string[];
  ip: string;
  host: string;
}

export function servedNames(records: readonly NamesRecord[], endpoints: readonly EndpointRecord[], liveHosts: ReadonlySet<string>): ServedNameReport[] {
  const byId = new Map(endpoints.map((e) => [e.id, e]));
  const out: ServedNameReport[] = [];
  for (const r of records) {
    const ep = byId.get(r.endpointId);
    if (!ep || !ep.joined || !liveHosts.has(ep.host)) continue;
    out.push({ container: r.container, names: r.names, ip: ep.ip, host: ep.host });
  }
  return out.sort((a, b) => a.container.localeCompare(b.container));
}
