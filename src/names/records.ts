import { z } from 'zod';

/**
 * `names/<networkKey>/<endpointId>`: the DNS names of one endpoint, published by the host that
 * runs the container (the only host whose Docker engine knows them).
 *
 * A record of its own rather than a `names` field on `endpoints/<networkKey>/<endpointId>`:
 * the endpoint record is rewritten by the request path (CreateEndpoint, Join, Leave) with plain
 * puts, which would race with (and undo) a field written beside them from Docker events, and
 * every host's peer distribution watches it, so a rename would wake every host's peer
 * programming for nothing. What a name resolves to still comes from the endpoint record
 * (its address and `joined`), so a name is served exactly while the container is a peer:
 * a stopped container disappears from DNS the moment its peers entries do, even before its
 * names record is removed.
 */
export const namesRecordSchema = z.object({
  endpointId: z.string(),
  /** Docker network id on the publishing host. */
  networkId: z.string(),
  /** The network's name on the publishing host (`<name>.<network>` resolves too). */
  networkName: z.string().optional(),
  host: z.string(),
  containerId: z.string(),
  /** The container's name, without Docker's leading slash. */
  container: z.string(),
  /** Every name the container answers to on this network: its name, aliases, compose service names. */
  names: z.array(z.string()),
  updated: z.string(),
});
export type NamesRecord = z.infer<typeof namesRecordSchema>;

export const namesKeys = {
  all: () => 'names/',
  network: (networkKey: string) => `names/${networkKey}/`,
  endpoint: (networkKey: string, endpointId: string) => `names/${networkKey}/${endpointId}`,
};

/** `names/<networkKey>/<endpointId>` → its two parts, or undefined for another key. */
export function parseNamesKey(key: string): { networkKey: string; endpointId: string } | undefined {
  const m = /^names\/([^/]+)\/([^/]+)$/.exec(key);
  return m ? { networkKey: m[1]!, endpointId: m[2]! } : undefined;
}

/** A name as DNS compares it: lower case, no trailing dot; undefined if it cannot be a DNS name. */
export function dnsName(name: string): string | undefined {
  const n = name.toLowerCase().replace(/\.$/, '');
  if (n.length === 0 || n.length > 253) return undefined;
  if (!n.split('.').every((label) => label.length > 0 && label.length <= 63 && /^[a-z0-9_-]+$/.test(label))) return undefined;
  return n;
}
