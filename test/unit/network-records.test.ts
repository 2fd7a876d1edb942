/**
 * Cluster-wide network and VNI records (src/driver/network-records.ts) over the real embedded
 * store: one VNI claim path for CreateNetwork and swarm's AllocateNetwork, one forget path for
 * DeleteNetwork and FreeNetwork.
 */
import { after, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { NetworkRecords } from '../../src/driver/network-records';
import { parseNetworkOptions } from '../../src/driver/options';
import { RecordStore } from '../../src/driver/record-store';
import { keys } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { openStore } from '../../src/store/open';
import type { Store } from '../../src/store/store';

const SWARM_NET = 's'.repeat(25);

describe('NetworkRecords', () => {
  const dirs: string[] = [];
  const stores: Store[] = [];
  let store: Store;
  let networks: NetworkRecords;
  after(async () => {
    for (const s of stores) await s.close();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  beforeEach(async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tso-netrec-'));
    dirs.push(dir);
    store = await openStore(`local://${dir}`, { logger: silentLogger() });
    stores.push(store);
    networks = new NetworkRecords(new RecordStore(store), { name: 'h1', vtep: '10.0.0.1', underlayMtu: 1500 }, silentLogger());
  });

  test('AllocateNetwork is idempotent and skips taken VNIs, malformed ones included', async () => {
    await store.put(keys.vni(256), 'not json');
    const first = await networks.allocateSwarm(SWARM_NET, parseNetworkOptions({}), { mode: 'static' });
    assert.deepEqual(first, { mode: 'static', vni: '257' });
    assert.deepEqual(await networks.allocateSwarm(SWARM_NET, parseNetworkOptions({}), { mode: 'static' }), first, 'a repeated call gets the same VNI');
  });

  test('a VNI named with -o vni: one claim path for swarm and standalone networks', async () => {
    await networks.create({ networkId: 'n1', networkKey: 'vni-4000', subnet: '10.1.0.0/24', gateway: '10.1.0.1', options: parseNetworkOptions({ vni: '4000' }) });
    await assert.rejects(networks.allocateSwarm(SWARM_NET, parseNetworkOptions({ vni: '4000' }), { vni: '4000' }), /VNI 4000 is already in use/);
    assert.deepEqual(await networks.allocateSwarm(SWARM_NET, parseNetworkOptions({ vni: '4001' }), { vni: '4001' }), { vni: '4001' });
    // A worker's CreateNetwork finds the VNI the managers claimed for the same swarm network.
    const worker = await networks.create({ networkId: SWARM_NET, networkKey: 'vni-4001', subnet: '10.2.0.0/24', gateway: '10.2.0.1', options: parseNetworkOptions({ vni: '4001' }) });
    assert.equal(worker.vni, 4001);
    assert.equal(await networks.isSwarmNetwork(SWARM_NET, 'vni-4001'), true);
    // A VNI allocated for a subnet-keyed network cannot be named by another one.
    const auto = await networks.create({ networkId: 'n4', networkKey: '10.5.0.0-24', subnet: '10.5.0.0/24', gateway: '10.5.0.1', options: parseNetworkOptions({}) });
    await assert.rejects(
      networks.create({ networkId: 'n5', networkKey: `vni-${auto.vni}`, subnet: '10.6.0.0/24', gateway: '10.6.0.1', options: parseNetworkOptions({ vni: String(auto.vni) }) }),
      new RegExp(`VNI ${auto.vni} is already in use`),
    );
  });

  test('FreeNetwork forgets the swarm network: VNI, network record, mapping, endpoints', async () => {
    await networks.allocateSwarm(SWARM_NET, parseNetworkOptions({ vni: '4100' }), { vni: '4100' });
    await networks.create({ networkId: SWARM_NET, networkKey: 'vni-4100', subnet: '10.4.0.0/24', gateway: '10.4.0.1', options: parseNetworkOptions({ vni: '4100' }) });
    await store.put(keys.endpoint('vni-4100', 'e1'), '{}');
    await networks.freeSwarm(SWARM_NET);
    for (const key of [keys.vni(4100), keys.network('vni-4100'), keys.networkId(SWARM_NET), keys.endpoint('vni-4100', 'e1')]) {
      assert.equal(await store.get(key), undefined, key);
    }
    await networks.freeSwarm(SWARM_NET); // repeated: nothing left to do, no error
  });
});
