import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { GATEWAY_REQUEST, IpamService, LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { RecordStore } from '../../src/driver/record-store';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';

const dirs: string[] = [];
const stores: Store[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function fixture(): Promise<{ store: Store; a: IpamService; b: IpamService }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-ipam-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(store);
  const records = new RecordStore(store);
  // Two IPAM instances on one store stand for two hosts sharing a cluster store.
  return { store, a: new IpamService(records, 'host-a', silentLogger()), b: new IpamService(records, 'host-b', silentLogger()) };
}

const space = LOCAL_ADDRESS_SPACE;

test('pool, gateway and sequential addresses; explicit address; release and reuse', async () => {
  const { a } = await fixture();
  const { poolId, pool } = await a.requestPool({ addressSpace: space, pool: '10.20.0.0/24', v6: false });
  assert.equal(pool, '10.20.0.0/24');
  assert.deepEqual(await a.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } }), { address: '10.20.0.1/24' });
  assert.deepEqual(await a.requestAddress({ poolId, options: {} }), { address: '10.20.0.2/24' });
  assert.deepEqual(await a.requestAddress({ poolId, options: {} }), { address: '10.20.0.3/24' });
  assert.deepEqual(await a.requestAddress({ poolId, address: '10.20.0.100', options: {} }), { address: '10.20.0.100/24' });
  await a.releaseAddress(poolId, '10.20.0.2/24');
  assert.deepEqual(await a.requestAddress({ poolId, options: {} }), { address: '10.20.0.2/24' });
});

test('replayed requests (daemon restart) succeed; another host cannot take a held address', async () => {
  const { a, b } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.30.0.0/24', v6: false });
  await a.requestPool({ addressSpace: space, pool: '10.30.0.0/24', v6: false });
  await a.requestAddress({ poolId, address: '10.30.0.9', options: {} });
  assert.deepEqual(await a.requestAddress({ poolId, address: '10.30.0.9', options: {} }), { address: '10.30.0.9/24' });
  await b.requestPool({ addressSpace: space, pool: '10.30.0.0/24', v6: false });
  await assert.rejects(b.requestAddress({ poolId, address: '10.30.0.9', options: {} }), /already in use/);
  // The gateway is shared by every host of the network.
  await a.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } });
  assert.deepEqual(await b.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } }), { address: '10.30.0.1/24' });
});

test('concurrent allocation on two hosts never hands out the same address', async () => {
  const { a, b } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.40.0.0/24', v6: false });
  await b.requestPool({ addressSpace: space, pool: '10.40.0.0/24', v6: false });
  const results = await Promise.all(
    Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).requestAddress({ poolId, options: {} })),
  );
  const addresses = results.map((r) => r.address);
  assert.equal(new Set(addresses).size, 60);
});

test('sub-pool (--ip-range) limits allocation; exhaustion is a clear error', async () => {
  const { a } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.50.0.0/24', subPool: '10.50.0.128/30', v6: false });
  assert.equal(poolId, '10.50.0.0/24@10.50.0.128/30');
  assert.equal((await a.requestAddress({ poolId, options: {} })).address, '10.50.0.129/24');
  assert.equal((await a.requestAddress({ poolId, options: {} })).address, '10.50.0.130/24');
  await assert.rejects(a.requestAddress({ poolId, options: {} }), /no free address left in 10\.50\.0\.128\/30/);
});

test('bad input: overlap, IPv6, unknown pool, foreign address, address space', async () => {
  const { a } = await fixture();
  await a.requestPool({ addressSpace: space, pool: '10.60.0.0/16', v6: false });
  await assert.rejects(a.requestPool({ addressSpace: space, pool: '10.60.5.0/24', v6: false }), /overlaps pool 10\.60\.0\.0\/16/);
  await assert.rejects(a.requestPool({ addressSpace: space, v6: true }), /IPv6/);
  await assert.rejects(a.requestPool({ addressSpace: 'nope', pool: '10.61.0.0/24', v6: false }), /unknown address space/);
  await assert.rejects(a.requestPool({ addressSpace: space, pool: '10.61.0.0/33', v6: false }), /invalid IPv4 subnet/);
  await assert.rejects(a.requestAddress({ poolId: '10.99.0.0/24', options: {} }), /unknown pool/);
  await assert.rejects(a.requestAddress({ poolId: 'garbage', options: {} }), /invalid pool id/);
  await assert.rejects(a.requestAddress({ poolId: '10.60.0.0/16', address: '10.70.0.1', options: {} }), /not a usable host address/);
});

test('default pools come from the default range without overlap', async () => {
  const { a } = await fixture();
  const first = await a.requestPool({ addressSpace: space, v6: false });
  const second = await a.requestPool({ addressSpace: space, v6: false });
  assert.equal(first.pool, '10.210.0.0/24');
  assert.equal(second.pool, '10.210.1.0/24');
});

test('releasing the pool on the last host removes pool and addresses; on one of two keeps them', async () => {
  const { store, a, b } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.80.0.0/24', v6: false });
  await b.requestPool({ addressSpace: space, pool: '10.80.0.0/24', v6: false });
  await a.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } });
  await a.requestAddress({ poolId, options: {} });
  await b.requestAddress({ poolId, options: {} });
  await a.releasePool(poolId);
  assert.ok(await store.get('ipam/pools/10.80.0.0-24'));
  assert.deepEqual((await store.list('ipam/addresses/10.80.0.0-24/')).map((e) => e.key.split('/').pop()), ['10.80.0.1', '10.80.0.3']);
  await b.releasePool(poolId);
  assert.equal(await store.get('ipam/pools/10.80.0.0-24'), undefined);
  assert.deepEqual(await store.list('ipam/addresses/10.80.0.0-24/'), []);
});
