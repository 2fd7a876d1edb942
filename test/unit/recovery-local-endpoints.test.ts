/**
 * Recovery after a restart finds this host's endpoints without reading the other hosts' networks
 * record by record: it must still find every one of them (its own networks, a swarm network whose
 * mapping another host rewrote) and touch nothing of another host's.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { HostEndpointIndex } from '../../src/driver/endpoint-index';
import { LocalOverlays } from '../../src/driver/local-overlays';
import { NetworkRecords } from '../../src/driver/network-records';
import { RecordStore } from '../../src/driver/record-store';
import { endpointRecordSchema, keys, type EndpointRecord, type NetworkIdRecord, type PoolRecord } from '../../src/driver/records';
import { Recovery } from '../../src/driver/recovery';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import { KeyedRwLock } from '../../src/util/keyed-rwlock';
import { rebootedDataplane } from '../helpers/recording-dataplane';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const host = { name: 'me', vtep: '192.0.2.1', underlayMtu: 1500 };

async function setup() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-recovery-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  const records = new RecordStore(store);
  const dataplane = rebootedDataplane();
  const locks = new KeyedRwLock();
  const networks = new NetworkRecords(records, host, silentLogger());
  const overlays = new LocalOverlays(dataplane, records, host, silentLogger());
  const recovery = new Recovery({
    records,
    networks,
    overlays,
    dataplane,
    host,
    index: new HostEndpointIndex(records, host.name, silentLogger()),
    locks,
    logger: silentLogger(),
    // Reached only for an endpoint whose network record exists; these tests write none, so a lost endpoint's record is deleted directly.
    deleteEndpoint: async () => {
      throw new Error('not expected without a network record');
    },
  });
  const mapping = (networkId: string, m: Omit<NetworkIdRecord, 'created'>) => records.put(keys.networkId(networkId), { ...m, created: 'then' });
  const endpoint = (networkKey: string, id: string, e: Partial<EndpointRecord>) =>
    records.put(keys.endpoint(networkKey, id), {
      id,
      networkId: 'n-mine',
      ip: '10.1.0.2',
      mac: '02:42:0a:01:00:02',
      locator: host.vtep,
      host: host.name,
      joined: true,
      created: 'then',
      ...e,
    } satisfies EndpointRecord);
  const joined = async (networkKey: string, id: string) => (await records.get(endpointRecordSchema, keys.endpoint(networkKey, id)))?.value.joined;
  return { store, records, recovery, mapping, endpoint, joined };
}

test('after a reboot: every joined endpoint of this host is withdrawn, in its own networks and in a swarm network another host mapped last; no other host’s is touched', async () => {
  const { store, records, recovery, mapping, endpoint, joined } = await setup();
  try {
    await mapping('n-mine', { networkKey: '10.1.0.0-24', host: 'me', pool: '10.1.0.0/24' });
    // Still held: the network is not one whose deletion a crash cut short.
    await records.put(keys.pool('10.1.0.0-24'), { pool: '10.1.0.0/24', addressSpace: 'tsoverlay-global', holders: ['me'], created: 'then' } satisfies PoolRecord);
    await mapping('n-swarm', { networkKey: 'vni-4100', host: 'other' });
    await mapping('n-other', { networkKey: '10.2.0.0-24', host: 'other', pool: '10.2.0.0/24' });
    await endpoint('10.1.0.0-24', 'e-mine', {});
    await endpoint('10.1.0.0-24', 'e-peer', { host: 'other', ip: '10.1.0.3' });
    await endpoint('vni-4100', 'e-swarm', { networkId: 'n-swarm', ip: '10.3.0.2' });
    await endpoint('10.2.0.0-24', 'e-other', { networkId: 'n-other', host: 'other', ip: '10.2.0.2' });
    // A host whose name is only part of this one's must not be taken for it.
    await endpoint('10.1.0.0-24', 'e-almost', { host: 'me2', ip: '10.1.0.4' });

    await recovery.recoverAfterCrash();
    await recovery.resumeAfterRestart();

    assert.equal(await joined('10.1.0.0-24', 'e-mine'), false);
    assert.equal(await joined('vni-4100', 'e-swarm'), false);
    assert.equal(await joined('10.1.0.0-24', 'e-peer'), true);
    assert.equal(await joined('10.2.0.0-24', 'e-other'), true);
    assert.equal(await joined('10.1.0.0-24', 'e-almost'), true);
    // Peers wait for these withdrawals in both networks before they program this host again.
    assert.ok(recovery.settledIn['10.1.0.0-24'] !== undefined && recovery.settledIn['vni-4100'] !== undefined);
  } finally {
    await store.close();
  }
});

test('a released address: only this host’s unjoined endpoint holding exactly that address is deleted', async () => {
  const { store, records, recovery, mapping, endpoint } = await setup();
  try {
    await mapping('n-mine', { networkKey: '10.1.0.0-24', host: 'me', pool: '10.1.0.0/24' });
    await endpoint('10.1.0.0-24', 'e-lost', { joined: false, ip: '10.1.0.2' });
    await endpoint('10.1.0.0-24', 'e-prefix', { joined: false, ip: '10.1.0.20' });
    await endpoint('10.1.0.0-24', 'e-joined', { ip: '10.1.0.2', mac: '02:42:0a:01:00:99' });
    await endpoint('10.1.0.0-24', 'e-theirs', { joined: false, host: 'other', ip: '10.1.0.2' });

    await recovery.deleteEndpointsLostWithAddress('10.1.0.0/24', '10.1.0.2/24');

    const left = (await records.keysUnder(keys.endpoints('10.1.0.0-24'))).map((k) => keys.parseEndpoint(k)?.endpointId).sort();
    assert.deepEqual(left, ['e-joined', 'e-prefix', 'e-theirs']);
  } finally {
    await store.close();
  }
});
