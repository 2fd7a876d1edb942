/**
 * CreateEndpoint makes the veth pair while the endpoint record is written (when the network's
 * overlay is up), and Join then uses it — unless the overlay namespace was rebuilt meanwhile.
 * The driver runs over the real embedded store; the dataplane is a recording stand-in (the
 * kernel side of attach/detach is covered by the integration tests).
 */
import { after, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { RecordStore } from '../../src/driver/record-store';
import { NetworkDriver } from '../../src/driver/network-driver';
import { RecordingDataplane } from '../helpers/recording-dataplane';
import type { OverlaySpec } from '../../src/dataplane/types';
import { silentLogger } from '../../src/log';
import { LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { openStore } from '../../src/store/open';
import type { Store } from '../../src/store/store';

const NET = 'n'.repeat(64);
const id = (c: string) => c.repeat(64);

describe('NetworkDriver: veth pair prepared by CreateEndpoint', () => {
  const dirs: string[] = [];
  let store: Store;
  let dp: RecordingDataplane;
  let driver: NetworkDriver;
  const stores: Store[] = [];
  after(async () => {
    for (const s of stores) await s.close();
  });

  beforeEach(async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tso-prepare-'));
    dirs.push(dir);
    store = await openStore(`local://${dir}`, { logger: silentLogger() });
    stores.push(store);
    dp = new RecordingDataplane();
    driver = new NetworkDriver(new RecordStore(store), dp, { name: 'h1', vtep: '10.0.0.1', underlayMtu: 1500 }, silentLogger());
    await driver.createNetwork({
      networkId: NET,
      genericOptions: {},
      ipv4: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.9.0.0/24', gateway: '10.9.0.1/24' }],
      ipv6: [],
    });
  });
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  const createAndJoin = async (ep: string, ip: string) => {
    await driver.createEndpoint({ networkId: NET, endpointId: ep, address: `${ip}/24` });
    return driver.join(NET, ep);
  };

  test('the first endpoint (no overlay yet): Join builds the overlay and the pair', async () => {
    const r = await createAndJoin(id('a'), '10.9.0.2');
    assert.equal(r.srcName, `vc${'a'.repeat(11)}`);
    assert.deepEqual(dp.calls, ['ensureOverlay', `attach ${id('a')}`]);
  });

  test('on a warm overlay CreateEndpoint makes the pair and Join does no kernel work', async () => {
    await createAndJoin(id('a'), '10.9.0.2');
    dp.calls = [];
    await driver.createEndpoint({ networkId: NET, endpointId: id('b'), address: '10.9.0.3/24' });
    assert.deepEqual(dp.calls, [`attach ${id('b')}`]);
    const r = await driver.join(NET, id('b'));
    assert.equal(r.srcName, `vc${'b'.repeat(11)}`);
    assert.deepEqual(dp.calls, [`attach ${id('b')}`], 'Join attached again');
    const record = (await store.list('')).find((e) => e.key.endsWith(`/${id('b')}`));
    assert.ok(record, 'no endpoint record');
    assert.equal((JSON.parse(record.value) as { joined: boolean }).joined, true);
  });

  test('an overlay rebuilt between CreateEndpoint and Join (new epoch): Join attaches again', async () => {
    await createAndJoin(id('a'), '10.9.0.2');
    await driver.createEndpoint({ networkId: NET, endpointId: id('b'), address: '10.9.0.3/24' });
    // The namespace went and came back (another Leave removed it, a Join rebuilt it).
    dp.overlays.set(NET, { netnsPath: '/run/test/99', epoch: 99 });
    dp.calls = [];
    await driver.join(NET, id('b'));
    assert.ok(dp.calls.includes(`attach ${id('b')}`), `calls: ${dp.calls.join(', ')}`);
  });

  test('a pair that could not be prepared is made by Join', async () => {
    await createAndJoin(id('a'), '10.9.0.2');
    dp.failAttach = true;
    await driver.createEndpoint({ networkId: NET, endpointId: id('b'), address: '10.9.0.3/24' });
    dp.failAttach = false;
    dp.calls = [];
    await driver.join(NET, id('b'));
    assert.deepEqual(dp.calls, [`attach ${id('b')}`]);
  });

  test('DeleteEndpoint of a prepared, never joined endpoint removes its pair; a later Join of the same id attaches anew', async () => {
    await createAndJoin(id('a'), '10.9.0.2');
    await driver.createEndpoint({ networkId: NET, endpointId: id('b'), address: '10.9.0.3/24' });
    await driver.deleteEndpoint(NET, id('b'));
    assert.ok(dp.calls.includes(`detach ${id('b')}`));
    dp.calls = [];
    await driver.createEndpoint({ networkId: NET, endpointId: id('b'), address: '10.9.0.3/24' });
    dp.overlays.set(NET, { netnsPath: '/run/test/7', epoch: 7 });
    await driver.join(NET, id('b'));
    assert.equal(dp.calls.filter((c) => c === `attach ${id('b')}`).length, 2);
  });

  test('a failed record write removes the prepared pair', async () => {
    await createAndJoin(id('a'), '10.9.0.2');
    dp.calls = [];
    const put = store.put.bind(store);
    store.put = async () => {
      throw new Error('disk full');
    };
    try {
      await assert.rejects(driver.createEndpoint({ networkId: NET, endpointId: id('c'), address: '10.9.0.4/24' }), /disk full/);
    } finally {
      store.put = put;
    }
    assert.deepEqual(dp.calls, [`attach ${id('c')}`, `detach ${id('c')}`]);
  });
});

describe('NetworkDriver: dual-stack and IPv6-only networks', () => {
  const dirs: string[] = [];
  const stores: Store[] = [];
  after(async () => {
    for (const s of stores) await s.close();
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });
  const open = async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tso-dual-'));
    dirs.push(dir);
    const store = await openStore(`local://${dir}`, { logger: silentLogger() });
    stores.push(store);
    const dp = new RecordingDataplane();
    const driver = new NetworkDriver(new RecordStore(store), dp, { name: 'h1', vtep: '10.0.0.1', underlayMtu: 1500 }, silentLogger());
    return { store, dp, driver };
  };
  const recordOf = async (store: Store, suffix: string) => {
    const e = (await store.list('')).find((x) => x.key.endsWith(suffix));
    assert.ok(e, `no record ${suffix}`);
    return JSON.parse(e.value) as Record<string, unknown>;
  };

  test('dual-stack: the network keeps both subnets and gateways, the endpoint both addresses, the MAC the IPv4 rule', async () => {
    const { store, dp, driver } = await open();
    await driver.createNetwork({
      networkId: NET,
      genericOptions: {},
      ipv4: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.9.0.0/24' }],
      ipv6: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool: 'fd00:9::/64', gateway: 'fd00:9::1/64' }],
    });
    const net = await recordOf(store, 'networks/10.9.0.0-24');
    assert.equal(net.subnet6, 'fd00:9::/64');
    assert.equal(net.gateway6, 'fd00:9::1');
    const r = await driver.createEndpoint({ networkId: NET, endpointId: id('a'), address: '10.9.0.2/24', addressIPv6: 'fd00:9:0::2/64' });
    assert.equal(r.macAddress, '02:42:0a:09:00:02');
    const ep = await recordOf(store, `/${id('a')}`);
    assert.equal(ep.ip, '10.9.0.2');
    assert.equal(ep.ip6, 'fd00:9::2');
    let spec: OverlaySpec | undefined;
    dp.ensureOverlay = async (s: OverlaySpec) => {
      spec = s;
      return { netnsPath: '/run/test/1', epoch: 1 };
    };
    await driver.join(NET, id('a'));
    assert.equal(spec?.gatewayCidr, '10.9.0.1/24');
    assert.equal(spec?.gateway6Cidr, 'fd00:9::1/64');
    await assert.rejects(driver.createEndpoint({ networkId: NET, endpointId: id('b'), address: '10.9.0.3/24' }), /no IPv6 address/);
    await assert.rejects(
      driver.createEndpoint({ networkId: NET, endpointId: id('c'), address: '10.9.0.4/24', addressIPv6: 'fd00:8::4/64' }),
      /fd00:8::4 is not inside the network's subnet fd00:9::\/64/,
    );
  });

  test('IPv6-only: empty IPv4 fields, the IPv6 ones set, the MAC from the address, only an IPv6 gateway on br0', async () => {
    const { store, dp, driver } = await open();
    await driver.createNetwork({ networkId: NET, genericOptions: {}, ipv4: [], ipv6: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool: 'fd00:7::/104' }] });
    const net = await recordOf(store, 'networks/fd00:7::-104');
    assert.equal(net.subnet, '');
    assert.equal(net.gateway, '');
    assert.equal(net.subnet6, 'fd00:7::/104');
    assert.equal(net.gateway6, 'fd00:7::1');
    const r = await driver.createEndpoint({ networkId: NET, endpointId: id('a'), addressIPv6: 'fd00:7::1:2/104' });
    assert.equal(r.macAddress, '06:42:00:01:00:02');
    const ep = await recordOf(store, `/${id('a')}`);
    assert.equal(ep.ip, '');
    assert.equal(ep.ip6, 'fd00:7::1:2');
    let spec: OverlaySpec | undefined;
    dp.ensureOverlay = async (s: OverlaySpec) => {
      spec = s;
      return { netnsPath: '/run/test/1', epoch: 1 };
    };
    await driver.join(NET, id('a'));
    assert.equal(spec?.gatewayCidr, undefined);
    assert.equal(spec?.gateway6Cidr, 'fd00:7::1/104');
    await assert.rejects(driver.createEndpoint({ networkId: NET, endpointId: id('b'), address: '10.0.0.2/24', addressIPv6: 'fd00:7::3/104' }), /no IPv4 subnet/);
    // A replayed CreateEndpoint: the same record, the same MAC.
    assert.equal((await driver.createEndpoint({ networkId: NET, endpointId: id('a'), addressIPv6: 'fd00:7::1:2/104' })).macAddress, '06:42:00:01:00:02');
  });

  test('bad IPv6 input: two IPv6 subnets, a family in the wrong list, mixed IPAM drivers', async () => {
    const { driver } = await open();
    const v6 = (pool: string) => ({ addressSpace: LOCAL_ADDRESS_SPACE, pool });
    await assert.rejects(driver.createNetwork({ networkId: NET, genericOptions: {}, ipv4: [], ipv6: [v6('fd00:1::/64'), v6('fd00:2::/64')] }), /one IPv6 subnet/);
    await assert.rejects(driver.createNetwork({ networkId: NET, genericOptions: {}, ipv4: [v6('fd00:1::/64')], ipv6: [] }), /given as an IPv4 subnet/);
    await assert.rejects(driver.createNetwork({ networkId: NET, genericOptions: {}, ipv4: [], ipv6: [v6('fe80::/64')] }), /link-local/);
    await assert.rejects(
      driver.createNetwork({ networkId: NET, genericOptions: {}, ipv4: [v6('10.1.0.0/24')], ipv6: [{ addressSpace: 'default', pool: 'fd00:1::/64' }] }),
      /one IPAM driver for both families/,
    );
    // This host's underlay is IPv4 (10.0.0.1): an IPv6 p2p remote or multicast group cannot reach it.
    await assert.rejects(
      driver.createNetwork({ networkId: NET, genericOptions: { mode: 'p2p', remote: 'fd00:79::2' }, ipv4: [], ipv6: [v6('fd00:1::/64')] }),
      /mixed underlays are not supported/,
    );
    await assert.rejects(
      driver.createNetwork({ networkId: NET, genericOptions: { mode: 'multicast', group: 'ff05::42' }, ipv4: [], ipv6: [v6('fd00:1::/64')] }),
      /mixed underlays are not supported/,
    );
  });
});
