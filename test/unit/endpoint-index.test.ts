/**
 * This host's endpoint index: start-up and a released address read this host's records by key
 * once the index is complete, and only then. The first start after an upgrade scans as before and
 * completes it; CreateEndpoint and DeleteEndpoint keep it, and a CreateEndpoint whose entry could
 * not be written fails without leaving its record. Real embedded store; recording dataplane.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { HostEndpointIndex } from '../../src/driver/endpoint-index';
import { LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { LocalOverlays } from '../../src/driver/local-overlays';
import { NetworkDriver } from '../../src/driver/network-driver';
import { NetworkRecords } from '../../src/driver/network-records';
import { RecordStore } from '../../src/driver/record-store';
import { endpointRecordSchema, keys, type EndpointRecord, type PoolRecord } from '../../src/driver/records';
import { Recovery } from '../../src/driver/recovery';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';
import { KeyedRwLock } from '../../src/util/keyed-rwlock';
import { gatedWrites } from '../helpers/gated-store';
import { RecordingDataplane, rebootedDataplane } from '../helpers/recording-dataplane';

const host = { name: 'me', vtep: '192.0.2.1', underlayMtu: 1500 };
const NET_KEY = '10.1.0.0-24';
const stores: Store[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function openStore(): Promise<Store> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-epindex-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(store);
  return store;
}

function recoveryOver(records: RecordStore): Recovery {
  const dataplane = rebootedDataplane();
  return new Recovery({
    records,
    networks: new NetworkRecords(records, host, silentLogger()),
    overlays: new LocalOverlays(dataplane, records, host, silentLogger()),
    dataplane,
    host,
    index: new HostEndpointIndex(records, host.name, silentLogger()),
    locks: new KeyedRwLock(),
    logger: silentLogger(),
    deleteEndpoint: async () => {
      throw new Error('not expected without a network record');
    },
  });
}

function endpoint(id: string, e: Partial<EndpointRecord> = {}): EndpointRecord {
  return { id, networkId: 'n-mine', ip: '10.1.0.2', mac: '02:42:0a:01:00:02', locator: host.vtep, host: host.name, joined: true, created: 'then', ...e };
}

async function cluster(): Promise<{ store: Store; records: RecordStore }> {
  const store = await openStore();
  const records = new RecordStore(store);
  await records.put(keys.networkId('n-mine'), { networkKey: NET_KEY, host: 'me', pool: '10.1.0.0/24', created: 'then' });
  await records.put(keys.pool(NET_KEY), { pool: '10.1.0.0/24', addressSpace: 'tsoverlay-global', holders: ['me'], created: 'then' } satisfies PoolRecord);
  return { store, records };
}

const joined = async (records: RecordStore, id: string) => (await records.get(endpointRecordSchema, keys.endpoint(NET_KEY, id)))?.value.joined;
const indexEntries = async (records: RecordStore) => (await records.keysUnder(keys.hostEndpoints(host.name))).map((k) => keys.parseHostEndpoint(host.name, k)?.endpointId).sort();

test('the first start scans and completes the index; the next reads by it alone and drops entries whose record is gone', async () => {
  const { records } = await cluster();
  await records.put(keys.endpoint(NET_KEY, 'e-old'), endpoint('e-old'));
  await records.put(keys.endpoint(NET_KEY, 'e-peer'), endpoint('e-peer', { host: 'other', ip: '10.1.0.3' }));

  await recoveryOver(records).recoverAfterCrash();
  assert.equal(await joined(records, 'e-old'), false, 'a record written before the index is found by the scan');
  assert.deepEqual(await indexEntries(records), ['e-old']);
  assert.ok(await records.store.get(keys.hostEndpointsIndexed(host.name)), 'index not marked complete');

  // Indexed and joined again (as CreateEndpoint and Join would), an entry whose record went, and
  // a record of this host without an entry (only an older version writes one).
  await records.put(keys.endpoint(NET_KEY, 'e-old'), endpoint('e-old'));
  await records.put(keys.hostEndpoint(host.name, NET_KEY, 'e-gone'), { created: 'then' });
  await records.put(keys.endpoint(NET_KEY, 'e-unindexed'), endpoint('e-unindexed', { ip: '10.1.0.9' }));

  await recoveryOver(records).recoverAfterCrash();
  assert.equal(await joined(records, 'e-old'), false, 'the indexed endpoint is withdrawn');
  assert.equal(await joined(records, 'e-unindexed'), true, 'once complete, the index alone is read');
  assert.equal(await joined(records, 'e-peer'), true);
  assert.deepEqual(await indexEntries(records), ['e-old'], 'the dangling entry is dropped at start-up');
});

test('a released address: the lost endpoint is found through the index, and a CreateEndpoint still writing keeps its entry', async () => {
  const { records } = await cluster();
  const recovery = recoveryOver(records);
  await recovery.recoverAfterCrash(); // completes the (empty) index
  await records.put(keys.endpoint(NET_KEY, 'e-lost'), endpoint('e-lost', { joined: false }));
  await records.put(keys.hostEndpoint(host.name, NET_KEY, 'e-lost'), { created: 'then' });
  await records.put(keys.endpoint(NET_KEY, 'e-joined'), endpoint('e-joined', { mac: '02:42:0a:01:00:99' }));
  await records.put(keys.hostEndpoint(host.name, NET_KEY, 'e-joined'), { created: 'then' });
  // Entry written, record not yet: a concurrent CreateEndpoint between its two writes.
  await records.put(keys.hostEndpoint(host.name, NET_KEY, 'e-creating'), { created: 'then' });

  await recovery.deleteEndpointsLostWithAddress('10.1.0.0/24', '10.1.0.2/24');

  const left = (await records.keysUnder(keys.endpoints(NET_KEY))).map((k) => keys.parseEndpoint(k)?.endpointId).sort();
  assert.deepEqual(left, ['e-joined']);
  assert.ok((await indexEntries(records)).includes('e-creating'), 'an entry of a CreateEndpoint in progress was dropped');
});

async function driverOver(store: Store): Promise<NetworkDriver> {
  const driver = new NetworkDriver(new RecordStore(store), new RecordingDataplane(), { name: host.name, vtep: '10.0.0.1', underlayMtu: 1500 }, silentLogger());
  await driver.createNetwork({
    networkId: 'n'.repeat(64),
    genericOptions: {},
    ipv4: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.9.0.0/24', gateway: '10.9.0.1/24' }],
    ipv6: [],
  });
  return driver;
}

test('CreateEndpoint writes the entry with the record, a replay writes a missing one, DeleteEndpoint removes it', async () => {
  const store = await openStore();
  const records = new RecordStore(store);
  const driver = await driverOver(store);
  const net = 'n'.repeat(64);
  const ep = 'a'.repeat(64);
  await driver.createEndpoint({ networkId: net, endpointId: ep, address: '10.9.0.2/24' });
  assert.deepEqual(await indexEntries(records), [ep]);
  await records.delete(keys.hostEndpoint(host.name, '10.9.0.0-24', ep));
  await driver.createEndpoint({ networkId: net, endpointId: ep, address: '10.9.0.2/24' });
  assert.deepEqual(await indexEntries(records), [ep], 'the replay did not restore the entry');
  await driver.deleteEndpoint(net, ep);
  assert.deepEqual(await indexEntries(records), []);
});

test('a CreateEndpoint whose entry cannot be written fails and leaves no record behind', async () => {
  const real = await openStore();
  const store = gatedWrites(real, async (key) => {
    if (key.startsWith('hostendpoints/')) throw new Error('injected: index write failed');
  });
  const driver = await driverOver(store);
  const net = 'n'.repeat(64);
  await assert.rejects(driver.createEndpoint({ networkId: net, endpointId: 'b'.repeat(64), address: '10.9.0.3/24' }), /index write failed/);
  assert.deepEqual(await real.list(keys.endpoints('10.9.0.0-24')), [], 'an unindexed endpoint record was left');
});
