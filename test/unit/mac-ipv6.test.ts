/**
 * MACs of containers with no IPv4 address (IPv6-only networks): derived from the address's low
 * 32 bits in subnets of /96 or longer, allocated with create-if-absent in shorter ones. Both
 * must stay unique in the network across hosts; the allocation runs over the real embedded store.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { macCandidate, macFor, macFromIPv6, macFromIp, releaseMac } from '../../src/driver/mac';
import { RecordStore } from '../../src/driver/record-store';
import { keys } from '../../src/driver/records';
import { addressAt, parseSubnet, subnetKey } from '../../src/driver/subnet';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';

const dirs: string[] = [];
const stores: Store[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function records(): Promise<{ store: Store; records: RecordStore }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-mac6-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(store);
  return { store, records: new RecordStore(store) };
}

test('IPv6 /96 and longer: 06:42 and the low 32 bits, one MAC per address, never an IPv4-rule MAC', async () => {
  assert.equal(macFromIPv6('fd00:20::a:b'), '06:42:00:0a:00:0b');
  assert.equal(macFromIPv6('fd00:20::ffff:fffe'), '06:42:ff:ff:ff:fe');
  const { records: r } = await records();
  const subnet = parseSubnet('fd00:96::/96');
  const macs = new Set<string>();
  for (const offset of [1n, 2n, 255n, 256n, 65_536n, 0xfffffffen, 0xffffffffn]) {
    const mac = await macFor(r, { subnet, ip: addressAt(subnet, offset), host: 'h' });
    assert.match(mac, /^06:42:/);
    assert.notEqual(mac, macFromIp('10.0.0.1'));
    macs.add(mac);
  }
  assert.equal(macs.size, 7);
  const v4 = parseSubnet('10.20.0.0/24');
  assert.equal(await macFor(r, { subnet: v4, ip: '10.20.0.5', host: 'h' }), '02:42:0a:14:00:05', 'IPv4 keeps its rule');
});

test('IPv6 shorter than /96: MACs allocated cluster-wide, unique under a race of two hosts, stable per address', async () => {
  const { store, records: r } = await records();
  const subnet = parseSubnet('fd00:64::/64');
  const ips = Array.from({ length: 60 }, (_, i) => addressAt(subnet, BigInt(i + 2) << 40n));
  const macs = await Promise.all(ips.map((ip, i) => macFor(r, { subnet, ip, host: i % 2 ? 'host-a' : 'host-b' })));
  assert.equal(new Set(macs).size, 60);
  for (const mac of macs) assert.match(mac, /^06:42:/);
  const held = await store.list(keys.macs(subnetKey(subnet)));
  assert.equal(held.length, 60, 'one record per allocated MAC');
  // The same address asks again (a replayed CreateEndpoint, or its next container): the same MAC.
  assert.equal(await macFor(r, { subnet, ip: ips[7]!, host: 'host-a' }), macs[7]);
  // A candidate held for another address is skipped, never shared.
  const taken = macCandidate(ips[0]!, 0);
  const other = addressAt(subnet, 999n);
  await r.put(keys.mac(subnetKey(subnet), macCandidate(other, 0)), { ip: ips[1]!, host: 'host-a', created: 'x' });
  const mac = await macFor(r, { subnet, ip: other, host: 'host-b' });
  assert.notEqual(mac, macCandidate(other, 0));
  assert.equal(mac, macCandidate(other, 1));
  // Released with its endpoint; another address's release leaves it alone.
  await releaseMac(r, subnet, ips[1]!, taken);
  assert.ok(await store.get(keys.mac(subnetKey(subnet), taken)), 'a MAC is released only by its own address');
  await releaseMac(r, subnet, ips[0]!, taken);
  assert.equal(await store.get(keys.mac(subnetKey(subnet), taken)), undefined);
});
