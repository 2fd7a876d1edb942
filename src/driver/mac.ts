import { createHash } from 'node:crypto';
import type { RecordStore } from './record-store';
import { nowIso } from './record-store';
import { keys, macRecordSchema } from './records';
import { ipToBig, ipToInt, subnetKey, type Subnet } from './subnet';

/**
 * The container MAC is derived from its IPv4 address, as Docker's overlay does:
 * 02:42 (locally administered, Docker's prefix) followed by the four address bytes,
 * so every host can compute a remote container's MAC from its IP alone.
 */
export function macFromIp(ip: string): string {
  const n = ipToInt(ip);
  return macOf(0x02, 0x42, n);
}

/**
 * Containers with no IPv4 address (IPv6-only networks) get `06:42` and 32 bits that are unique
 * in their network, so that they never meet a MAC of the IPv4 rule (02:42) nor one Docker's
 * bridge makes:
 * - subnets of /96 or longer: the low 32 bits of the address. Every address of such a subnet
 *   differs from the others in those bits alone, so the MAC is unique wherever IPAM's address is.
 * - shorter subnets: an allocated MAC, claimed with create-if-absent on
 *   `ipam/macs/<subnet>/<mac>` (the record names the address). Candidates come from a hash of
 *   the address and an attempt counter, so hosts racing for one MAC settle as they do for
 *   addresses; a record already naming the same address is that address's MAC, whichever host
 *   wrote it (IPAM gives an address to one container at a time).
 */
export const IPV6_MAC_PREFIX = [0x06, 0x42] as const;
/** Prefix length from which the address itself gives the MAC. */
export const IPV6_DERIVED_MAC_MIN_PREFIX = 96;
const MAC_ATTEMPTS = 16;

export function macFromIPv6(ip: string): string {
  return macOf(IPV6_MAC_PREFIX[0], IPV6_MAC_PREFIX[1], Number(ipToBig(ip) & 0xffffffffn));
}

/** The `attempt`-th MAC candidate for an IPv6 address of a subnet shorter than /96. */
export function macCandidate(ip: string, attempt: number): string {
  const digest = createHash('sha256').update(`${ip}#${attempt}`).digest();
  return macOf(IPV6_MAC_PREFIX[0], IPV6_MAC_PREFIX[1], digest.readUInt32BE(0));
}

/** The MAC of a new endpoint whose address is `ip` in the network's primary `subnet`. */
export async function macFor(records: RecordStore, at: { subnet: Subnet; ip: string; host: string; endpointId?: string }): Promise<string> {
  const { subnet, ip } = at;
  if (subnet.family === 4) return macFromIp(ip);
  if (subnet.prefixLength >= IPV6_DERIVED_MAC_MIN_PREFIX) return macFromIPv6(ip);
  const sKey = subnetKey(subnet);
  for (let attempt = 0; attempt < MAC_ATTEMPTS; attempt++) {
    const mac = macCandidate(ip, attempt);
    const key = keys.mac(sKey, mac);
    if (await records.create(key, { ip, host: at.host, created: nowIso() })) return mac;
    const holder = await records.get(macRecordSchema, key);
    if (!holder || holder.value.ip === ip) {
      // Released in between, or this address's own MAC from an earlier endpoint: take it over.
      await records.put(key, { ip, host: at.host, created: nowIso() });
      return mac;
    }
  }
  throw new Error(`could not allocate a MAC for ${ip} in ${subnet.cidr} after ${MAC_ATTEMPTS} attempts`);
}

/** Frees an allocated MAC (shorter IPv6 subnets only) once the endpoint with `ip` is gone. */
export async function releaseMac(records: RecordStore, subnet: Subnet, ip: string, mac: string): Promise<void> {
  if (subnet.family === 4 || subnet.prefixLength >= IPV6_DERIVED_MAC_MIN_PREFIX) return;
  const key = keys.mac(subnetKey(subnet), mac);
  const holder = await records.get(macRecordSchema, key);
  if (holder?.value.ip === ip) await records.compareAndDelete(holder);
}

function macOf(b0: number, b1: number, low32: number): string {
  const bytes = [b0, b1, low32 >>> 24, (low32 >>> 16) & 255, (low32 >>> 8) & 255, low32 & 255];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Lower-case colon form, or undefined when the text is not a unicast MAC. */
export function normalizeMac(text: string): string | undefined {
  const mac = text.trim().toLowerCase().replace(/-/g, ':');
  if (!MAC_PATTERN.test(mac)) return undefined;
  if (parseInt(mac.slice(0, 2), 16) & 1) return undefined;
  if (mac === '00:00:00:00:00:00') return undefined;
  return mac;
}
