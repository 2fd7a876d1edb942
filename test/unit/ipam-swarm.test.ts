/**
 * Swarm: the managers' allocator asks in the global address space and decides every address;
 * each engine then asks again in the local space for exactly those addresses (libnetwork gives
 * swarm-scoped networks the local data scope). The engines' requests must succeed without a
 * second allocation, and only the managers' releases free anything.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { GATEWAY_REQUEST, GLOBAL_ADDRESS_SPACE, IpamService, LOCAL_ADDRESS_SPACE, SWARM_HOLDER } from '../../src/driver/ipam';
import { RecordStore } from '../../src/driver/record-store';
import { addressRecordSchema, keys } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';

const dirs: string[] = [];
const stores: Store[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function fixture(): Promise<{ records: RecordStore; manager: IpamService; manager2: IpamService; worker: IpamService }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-ipam-swarm-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(store);
  const records = new RecordStore(store);
  const ipam = (host: string) => new IpamService(records, host, silentLogger());
  return { records, manager: ipam('m1'), manager2: ipam('m2'), worker: ipam('w1') };
}

test('engines reuse the addresses the swarm manager allocated, on the manager too', async () => {
  const { records, manager, worker } = await fixture();
  const swarm = await manager.requestPool({ addressSpace: GLOBAL_ADDRESS_SPACE, pool: '10.70.0.0/24', v6: false });
  assert.equal(swarm.pool, '10.70.0.0/24');
  assert.deepEqual(await manager.requestAddress({ poolId: swarm.poolId, options: { RequestAddressType: GATEWAY_REQUEST } }), { address: '10.70.0.1/24' });
  assert.deepEqual(await manager.requestAddress({ poolId: swarm.poolId, options: {} }), { address: '10.70.0.2/24' });
  assert.deepEqual(await manager.requestAddress({ poolId: swarm.poolId, options: {} }), { address: '10.70.0.3/24' });
  const held = await records.get(addressRecordSchema, keys.address('10.70.0.0-24', '10.70.0.3'));
  assert.equal(held?.value.host, SWARM_HOLDER);

  for (const engine of [manager, worker]) {
    const view = await engine.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.70.0.0/24', v6: false });
    assert.notEqual(view.poolId, swarm.poolId);
    assert.deepEqual(await engine.requestAddress({ poolId: view.poolId, address: '10.70.0.1', options: { RequestAddressType: GATEWAY_REQUEST } }), { address: '10.70.0.1/24' });
    assert.deepEqual(await engine.requestAddress({ poolId: view.poolId, address: '10.70.0.3', options: {} }), { address: '10.70.0.3/24' });
    // The engine's releases change nothing: the manager frees what it allocated.
    await engine.releaseAddress(view.poolId, '10.70.0.3/24');
    await engine.releasePool(view.poolId);
  }
  assert.ok(await records.get(addressRecordSchema, keys.address('10.70.0.0-24', '10.70.0.3')));

  await manager.releaseAddress(swarm.poolId, '10.70.0.3/24');
  assert.equal(await records.get(addressRecordSchema, keys.address('10.70.0.0-24', '10.70.0.3')), undefined);
});

test('another manager (new leader) replays and releases what the first one allocated', async () => {
  const { records, manager, manager2 } = await fixture();
  const { poolId } = await manager.requestPool({ addressSpace: GLOBAL_ADDRESS_SPACE, pool: '10.71.0.0/24', v6: false });
  await manager.requestAddress({ poolId, address: '10.71.0.9', options: {} });
  const again = await manager2.requestPool({ addressSpace: GLOBAL_ADDRESS_SPACE, pool: '10.71.0.0/24', v6: false });
  assert.equal(again.poolId, poolId);
  assert.deepEqual(await manager2.requestAddress({ poolId, address: '10.71.0.9', options: {} }), { address: '10.71.0.9/24' });
  await manager2.releaseAddress(poolId, '10.71.0.9/24');
  assert.equal(await records.get(addressRecordSchema, keys.address('10.71.0.0-24', '10.71.0.9')), undefined);
});

test('a subnet is either a swarm pool or a cluster pool', async () => {
  const { manager, worker } = await fixture();
  await worker.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.72.0.0/24', v6: false });
  await assert.rejects(manager.requestPool({ addressSpace: GLOBAL_ADDRESS_SPACE, pool: '10.72.0.0/24', v6: false }), /already used by a non-swarm network/);
});
