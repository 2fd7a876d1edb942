/**
 * IPv6 pools in tsoverlay's IPAM: the same records and guarantees as IPv4 (one create-if-absent
 * key per address), BigInt arithmetic from /48 to /120, RFC 5952 keys, and the refusals.
 * Two IpamService instances on one embedded store stand for two hosts of one cluster.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { GATEWAY_REQUEST, IpamService, LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { RecordStore } from '../../src/driver/record-store';
import { keys } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';
import { PluginError } from '../../src/util/errors';

const dirs: string[] = [];
const stores: Store[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function fixture(): Promise<{ store: Store; a: IpamService; b: IpamService }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-ipam6-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(store);
  const records = new RecordStore(store);
  return { store, a: new IpamService(records, 'host-a', silentLogger()), b: new IpamService(records, 'host-b', silentLogger()) };
}

const space = LOCAL_ADDRESS_SPACE;
const gw = { RequestAddressType: GATEWAY_REQUEST };

test('IPv6 /64: gateway, sequential addresses, explicit address in any spelling, release and reuse', async () => {
  const { store, a, b } = await fixture();
  const { poolId, pool } = await a.requestPool({ addressSpace: space, pool: 'fd00:20:0::/64', v6: true });
  assert.equal(pool, 'fd00:20::/64');
  assert.equal(poolId, 'fd00:20::/64');
  assert.deepEqual(await a.requestAddress({ poolId, options: gw }), { address: 'fd00:20::1/64' });
  assert.deepEqual(await a.requestAddress({ poolId, options: {} }), { address: 'fd00:20::2/64' });
  assert.deepEqual(await a.requestAddress({ poolId, options: {} }), { address: 'fd00:20::3/64' });
  assert.deepEqual(await a.requestAddress({ poolId, address: 'FD00:0020::0:00a0', options: {} }), { address: 'fd00:20::a0/64' });
  // Another spelling of a held address is the same key: refused, never a second holder.
  await b.requestPool({ addressSpace: space, pool: 'fd00:20::/64', v6: true });
  await assert.rejects(b.requestAddress({ poolId, address: 'fd00:20:0:0:0:0:0:a0', options: {} }), /fd00:20::a0 is already in use/);
  assert.ok(await store.get(`${keys.address('fd00:20::-64', 'fd00:20::a0')}`), 'the key holds the RFC 5952 form');
  await a.releaseAddress(poolId, 'fd00:20::2/64');
  assert.deepEqual(await a.requestAddress({ poolId, options: {} }), { address: 'fd00:20::2/64' }, 'freed, then reused');
  // Another host allocates from an address block of its own (ipam-blocks.ts), in the same keys.
  const fromB = (await b.requestAddress({ poolId, options: {} })).address;
  assert.match(fromB, /^fd00:20::[0-9a-f]+\/64$/);
  assert.ok(await store.get(keys.address('fd00:20::-64', fromB.split('/')[0]!)));
  // The gateway is shared by every host.
  assert.deepEqual(await b.requestAddress({ poolId, options: gw }), { address: 'fd00:20::1/64' });
});

test('IPv6 prefix edges: /48 reaches its last address; /120 runs out with a clear error', async () => {
  const { a } = await fixture();
  const wide = await a.requestPool({ addressSpace: space, pool: 'fd00:48::/48', v6: true });
  assert.deepEqual(await a.requestAddress({ poolId: wide.poolId, address: 'fd00:48:0:ffff:ffff:ffff:ffff:ffff', options: {} }), {
    address: 'fd00:48:0:ffff:ffff:ffff:ffff:ffff/48',
  });
  await assert.rejects(a.requestAddress({ poolId: wide.poolId, address: 'fd00:48::', options: {} }), /not a usable host address/);
  await assert.rejects(a.requestAddress({ poolId: wide.poolId, address: 'fd00:49::1', options: {} }), /not a usable host address/);
  await assert.rejects(a.requestAddress({ poolId: wide.poolId, address: '10.0.0.1', options: {} }), /not an IPv6 address/);

  const narrow = await a.requestPool({ addressSpace: space, pool: 'fd00:120::/120', v6: true });
  const got: string[] = [];
  for (let i = 0; i < 255; i++) got.push((await a.requestAddress({ poolId: narrow.poolId, options: {} })).address);
  assert.equal(got[0], 'fd00:120::1/120');
  assert.equal(got[254], 'fd00:120::ff/120', 'no broadcast in IPv6: the last address is usable');
  await assert.rejects(a.requestAddress({ poolId: narrow.poolId, options: {} }), /no free address left in fd00:120::\/120/);
});

test('IPv6 refusals are clear errors: link-local, multicast, too long or too short, ranges outside', async () => {
  const { a } = await fixture();
  const refused: [string, RegExp][] = [
    ['fe80::/64', /link-local \(fe80::\/10\)/],
    ['ff05::/64', /multicast \(ff00::\/8\)/],
    ['fd00::/121', /between \/48 and \/120/],
    ['fd00::/40', /between \/48 and \/120/],
    ['fd00::1::/64', /invalid IPv6 subnet/],
  ];
  for (const [pool, why] of refused) {
    const err = await a.requestPool({ addressSpace: space, pool, v6: true }).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof PluginError, `${pool}: ${String(err)}`);
    assert.match(err.message, why, pool);
  }
  await assert.rejects(a.requestPool({ addressSpace: space, pool: 'fd00:7::/64', subPool: 'fd00:8::/120', v6: true }), /is not inside/);
  await a.requestPool({ addressSpace: space, pool: 'fd00:9::/48', v6: true });
  await assert.rejects(a.requestPool({ addressSpace: space, pool: 'fd00:9:0:1::/64', v6: true }), /overlaps pool fd00:9::\/48/);
});

test('IPv6 --ip-range limits allocation; dual-stack pools of both families live side by side', async () => {
  const { a } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: 'fd00:50::/64', subPool: 'fd00:50::100/120', v6: true });
  assert.equal(poolId, 'fd00:50::/64@fd00:50::100/120');
  assert.equal((await a.requestAddress({ poolId, options: {} })).address, 'fd00:50::101/64');
  const v4 = await a.requestPool({ addressSpace: space, pool: '10.50.0.0/24', v6: false });
  assert.equal((await a.requestAddress({ poolId: v4.poolId, options: {} })).address, '10.50.0.1/24');
});

test('default IPv6 pools are /64s of one unique-local /48, without overlap', async () => {
  const { a } = await fixture();
  assert.equal((await a.requestPool({ addressSpace: space, v6: true })).pool, 'fd74:736f:7665::/64');
  assert.equal((await a.requestPool({ addressSpace: space, v6: true })).pool, 'fd74:736f:7665:1::/64');
  assert.equal((await a.requestPool({ addressSpace: space, v6: false })).pool, '10.210.0.0/24');
});

test('concurrent IPv6 allocation on two hosts never hands out the same address (/64 and a nearly full /120)', async () => {
  const { a, b } = await fixture();
  const wide = await a.requestPool({ addressSpace: space, pool: 'fd00:40::/64', v6: true });
  await b.requestPool({ addressSpace: space, pool: 'fd00:40::/64', v6: true });
  const results = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).requestAddress({ poolId: wide.poolId, options: {} })));
  assert.equal(new Set(results.map((r) => r.address)).size, 60);

  const narrow = await a.requestPool({ addressSpace: space, pool: 'fd00:41::/120', v6: true });
  await b.requestPool({ addressSpace: space, pool: 'fd00:41::/120', v6: true });
  // Explicit and dynamic requests race over the same few addresses.
  const settled = await Promise.allSettled(
    Array.from({ length: 80 }, (_, i) =>
      (i % 2 ? a : b).requestAddress({ poolId: narrow.poolId, ...(i % 5 === 0 ? { address: `fd00:41::${(i % 20) + 1}` } : {}), options: {} }),
    ),
  );
  const won = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value.address] : []));
  assert.equal(new Set(won).size, won.length, `duplicates among ${won.join(' ')}`);
  for (const s of settled) if (s.status === 'rejected') assert.match(String(s.reason), /already in use/);
});
