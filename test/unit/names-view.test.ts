/**
 * The cluster's names as every host sees them (src/names/view.ts), on the embedded store:
 * a name is served while its endpoint is joined on a live host, per network only. Which hosts
 * are live is peer distribution's decision (a real PeerSync on the same store, probing hosts
 * whose registration lapsed with real UnderlayProbe sockets on loopback); its kernel side is a
 * recorder, as in peer-sync.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { UnderlayProbe } from '../../src/dataplane/underlay-probe';
import { PeerTableRecorder } from '../helpers/recording-dataplane';
import { PeerSync } from '../../src/driver/peer-sync';
import { RecordStore } from '../../src/driver/record-store';
import { silentLogger } from '../../src/log';
import { keys, type NetworkRecord } from '../../src/driver/records';
import { namesKeys } from '../../src/names/records';
import { NamesView } from '../../src/names/view';
import { openLocalStore, type LocalStore } from '../../src/store/local';

let dir = '';
let store: LocalStore;
let view: NamesView;
let sync: PeerSync;
let prober: UnderlayProbe;
/** Host `d`'s daemon answering probes on loopback (its VTEP): closed to make `d` dead. */
let responder: UnderlayProbe;

const kernel = new PeerTableRecorder();

const put = (key: string, value: unknown) => store.put(key, JSON.stringify(value));
const created = new Date().toISOString();

function endpoint(net: string, id: string, ip: string, host: string, joined = true, ip6?: string) {
  return put(keys.endpoint(net, id), { id, networkId: `nid-${net}`, ip, ...(ip6 ? { ip6 } : {}), mac: '02:42:00:00:00:00', locator: '192.0.2.1', host, joined, created });
}
function names(net: string, id: string, container: string, aliases: string[], host: string, networkName = 'demo') {
  return put(namesKeys.endpoint(net, id), {
    endpointId: id,
    networkId: `nid-${net}`,
    networkName,
    host,
    containerId: `c-${id}`,
    container,
    names: [container, ...aliases],
    updated: created,
  });
}

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(check(), 'condition not reached');
}

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tso-names-'));
  store = await openLocalStore({ dir, logger: silentLogger() });
  await put(keys.host('a'), { name: 'a', vtep: '192.0.2.1', started: created });
  await put(keys.host('b'), { name: 'b', vtep: '192.0.2.2', started: created });
  await put(keys.network('10.20.0.0-24'), { key: '10.20.0.0-24', ids: ['x'], vni: 256, subnet: '10.20.0.0/24', gateway: '10.20.0.1', mtu: 1450, mode: 'static', options: {}, created });
  await put(keys.network('10.30.0.0-24'), { key: '10.30.0.0-24', ids: ['y'], vni: 257, subnet: '10.30.0.0/24', gateway: '10.30.0.1', mtu: 1450, mode: 'static', options: {}, created });
  await endpoint('10.20.0.0-24', 'e1', '10.20.0.2', 'a');
  await names('10.20.0.0-24', 'e1', 'Web', ['frontend', 'svc'], 'a');
  await endpoint('10.20.0.0-24', 'e2', '10.20.0.3', 'b');
  await names('10.20.0.0-24', 'e2', 'web2', ['svc'], 'b');
  // Same container name on another network: must not leak across.
  await endpoint('10.30.0.0-24', 'e3', '10.30.0.2', 'b');
  await names('10.30.0.0-24', 'e3', 'web', [], 'b', 'other');
  // Dual-stack and IPv6-only networks: AAAA beside A, PTR under ip6.arpa.
  await put(keys.network('10.40.0.0-24'), { key: '10.40.0.0-24', ids: ['z'], vni: 258, subnet: '10.40.0.0/24', gateway: '10.40.0.1', subnet6: 'fd00:40::/64', gateway6: 'fd00:40::1', mtu: 1450, mode: 'static', options: {}, created });
  await endpoint('10.40.0.0-24', 'e4', '10.40.0.2', 'a', true, 'fd00:40::2');
  await names('10.40.0.0-24', 'e4', 'dual', ['both'], 'a', 'ds');
  await endpoint('10.40.0.0-24', 'e5', '10.40.0.3', 'b', true, 'fd00:40::3');
  await names('10.40.0.0-24', 'e5', 'dual2', ['both'], 'b', 'ds');
  await put(keys.network('fd00:60::-64'), { key: 'fd00:60::-64', ids: ['w'], vni: 259, subnet: '', gateway: '', subnet6: 'fd00:60::/64', gateway6: 'fd00:60::1', mtu: 1450, mode: 'static', options: {}, created });
  await endpoint('fd00:60::-64', 'e6', '', 'b', true, 'fd00:60::a');
  await names('fd00:60::-64', 'e6', 'only6', [], 'b', 'v6net');
  prober = await UnderlayProbe.listen('127.0.0.1', 0, () => ({ name: 'c', instance: 'i-c' }), silentLogger());
  responder = await UnderlayProbe.listen('127.0.0.1', 0, () => ({ name: 'd', instance: 'i-d' }), silentLogger());
  const fast = { attempts: 1, timeoutMs: 200 };
  sync = new PeerSync(
    new RecordStore(store),
    kernel,
    {
      hostName: 'c',
      vtep: '192.0.2.3',
      leaseTtlSeconds: 5,
      reconcileIntervalMs: 60_000,
      probe: (target) => prober.probe(target, responder.port, fast),
      liveness: { intervalMs: 100, ...fast },
    },
    silentLogger(),
  );
  await sync.start();
  view = new NamesView(store, silentLogger(), sync.liveHosts, sync.endpoints);
  await view.start();
  // A host follows the names of the networks it has a local overlay on; here, all four.
  for (const key of ['10.20.0.0-24', '10.30.0.0-24', '10.40.0.0-24', 'fd00:60::-64']) await view.follow(key);
});

after(async () => {
  await view?.close();
  await sync?.close();
  prober?.close();
  responder?.close();
  await store?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('names, aliases (several addresses for a shared one), <name>.<network>, reverse', () => {
  const z = view.zone('10.20.0.0-24');
  assert.deepEqual(z.lookupName('web')?.v4, ['10.20.0.2']);
  assert.deepEqual(z.lookupName('frontend.demo')?.v4, ['10.20.0.2']);
  assert.deepEqual(z.lookupName('svc')?.v4, ['10.20.0.2', '10.20.0.3']);
  assert.equal(z.lookupName('nobody'), null);
  assert.equal(z.lookupName('nobody.demo'), null);
  assert.equal(z.lookupName('example.com'), undefined);
  assert.deepEqual(z.lookupAddress('10.20.0.2'), ['web.demo']);
  assert.equal(z.lookupAddress('10.20.0.99'), null);
  assert.equal(z.lookupAddress('10.99.0.1'), undefined);
});

test('isolation: each network answers only its own names', () => {
  assert.deepEqual(view.zone('10.30.0.0-24').lookupName('web')?.v4, ['10.30.0.2']);
  assert.equal(view.zone('10.30.0.0-24').lookupName('frontend'), null);
  assert.equal(view.zone('10.30.0.0-24').lookupAddress('10.20.0.2'), undefined);
});

test('a stopped container (not joined), a dead host or a removed record: NXDOMAIN', async () => {
  const z = view.zone('10.20.0.0-24');
  let g = view.generation;
  await endpoint('10.20.0.0-24', 'e2', '10.20.0.3', 'b', false);
  await until(() => view.generation > g);
  assert.deepEqual(z.lookupName('svc')?.v4, ['10.20.0.2']);
  assert.equal(z.lookupName('web2'), null);
  // `a` does not answer probes (its VTEP is not on this machine): dead once the probe fails.
  await store.delete(keys.host('a'));
  await until(() => z.lookupName('web') === null);
  assert.equal(z.lookupAddress('10.20.0.2'), null);
  g = view.generation;
  await put(keys.host('a'), { name: 'a', vtep: '192.0.2.1', started: created });
  await until(() => view.generation > g);
  assert.deepEqual(z.lookupName('web')?.v4, ['10.20.0.2']);
  g = view.generation;
  await store.delete(namesKeys.endpoint('10.20.0.0-24', 'e1'));
  await until(() => view.generation > g);
  assert.equal(z.lookupName('web'), null);
  assert.equal(view.served('10.20.0.0-24').length, 0);
  assert.equal(view.served().length, 4, "the other networks' names: one on 10.30.0.0/24, three on the IPv6 ones");
});

test('a network without a local overlay is not followed: its names are not held, and they come with a follow', async () => {
  await put(keys.network('10.50.0.0-24'), { key: '10.50.0.0-24', ids: ['q'], vni: 260, subnet: '10.50.0.0/24', gateway: '10.50.0.1', mtu: 1450, mode: 'static', options: {}, created });
  await endpoint('10.50.0.0-24', 'e7', '10.50.0.2', 'a');
  await names('10.50.0.0-24', 'e7', 'elsewhere', [], 'a', 'other-net');
  const z = view.zone('10.50.0.0-24');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(z.lookupName('elsewhere'), null, 'not followed: nothing held for it');
  await view.follow('10.50.0.0-24');
  assert.deepEqual(z.lookupName('elsewhere')?.v4, ['10.50.0.2']);
  view.unfollow('10.50.0.0-24');
  assert.equal(z.lookupName('elsewhere'), null, 'released: its records are dropped');
});

test('a malformed record is skipped, the rest still served', async () => {
  const g = view.generation;
  await store.put(namesKeys.endpoint('10.30.0.0-24', 'bad'), '{"names": 5}');
  await endpoint('10.30.0.0-24', 'e4', '10.30.0.4', 'b');
  await names('10.30.0.0-24', 'e4', 'db', [], 'b', 'other');
  await until(() => view.generation > g && view.zone('10.30.0.0-24').lookupName('db') !== null);
  assert.deepEqual(view.zone('10.30.0.0-24').lookupName('db.other')?.v4, ['10.30.0.4']);
});

test('IPv6: AAAA beside A on a dual-stack network, AAAA alone on an IPv6-only one, PTR for both families', () => {
  const z = view.zone('10.40.0.0-24');
  assert.deepEqual(z.lookupName('dual'), { v4: ['10.40.0.2'], v6: ['fd00:40::2'] });
  assert.deepEqual(z.lookupName('both.ds'), { v4: ['10.40.0.2', '10.40.0.3'], v6: ['fd00:40::2', 'fd00:40::3'] });
  assert.deepEqual(z.lookupAddress('fd00:40::2'), ['dual.ds']);
  assert.deepEqual(z.lookupAddress('fd00:40:0:0:0:0:0:2'), ['dual.ds'], 'any spelling of the address');
  assert.deepEqual(z.lookupAddress('10.40.0.2'), ['dual.ds']);
  assert.equal(z.lookupAddress('fd00:40::99'), null, 'inside the IPv6 subnet: NXDOMAIN');
  assert.equal(z.lookupAddress('fd00:41::1'), undefined);
  const only = view.zone('fd00:60::-64');
  assert.deepEqual(only.lookupName('only6'), { v4: [], v6: ['fd00:60::a'] });
  assert.deepEqual(only.lookupAddress('fd00:60::a'), ['only6.v6net']);
  assert.equal(only.lookupAddress('fd00:60::b'), null);
  const served = view.served('10.40.0.0-24').find((n) => n.container === 'dual');
  assert.equal(served?.ip6, 'fd00:40::2');
});

test('a host whose registration lapsed but that answers underlay probes keeps its names exactly as long as its peers stay; NXDOMAIN once they go', async () => {
  const net: NetworkRecord = { key: '10.70.0.0-24', ids: ['v'], vni: 261, subnet: '10.70.0.0/24', gateway: '10.70.0.1', mtu: 1450, mode: 'static', options: {}, created };
  await put(keys.network(net.key), net);
  await put(keys.host('d'), { name: 'd', vtep: '127.0.0.1', instance: 'i-d', started: created });
  await endpoint(net.key, 'e8', '10.70.0.8', 'd');
  await names(net.key, 'e8', 'far', ['faraway'], 'd', 'remote');
  await view.follow(net.key);
  await sync.networkActive('v'.repeat(64), net);
  const z = view.zone(net.key);
  const named = () => z.lookupName('far')?.v4.includes('10.70.0.8') === true;
  const peered = () => kernel.table.has('10.70.0.8');
  await until(() => named() && peered());

  // The lease on hosts/d ran out (d lost the store) while d's daemon still answers on the underlay.
  await store.delete(keys.host('d'));
  await until(() => sync.health().unregisteredPeers.includes('d'));
  for (let i = 0; i < 5; i++) {
    assert.ok(peered(), 'peer distribution keeps d while it answers');
    assert.ok(named(), "and so d's names are served");
    assert.deepEqual(z.lookupAddress('10.70.0.8'), ['far.remote']);
    assert.deepEqual(view.served(net.key).map((n) => n.container), ['far']);
    await new Promise((r) => setTimeout(r, 100));
  }

  // d stops answering: the peers drop it, and its names go with them.
  responder.close();
  await until(() => !sync.health().unregisteredPeers.includes('d'));
  assert.equal(z.lookupName('far'), null);
  assert.equal(z.lookupName('faraway.remote'), null);
  assert.equal(z.lookupAddress('10.70.0.8'), null);
  await until(() => !peered());

  // Registered again: peers and names are back together.
  await put(keys.host('d'), { name: 'd', vtep: '127.0.0.1', instance: 'i-d', started: created });
  await until(() => named() && peered());
  await sync.networkInactive('v'.repeat(64));
  view.unfollow(net.key);
});

test('a host record rewritten as it was changes no answer: the DNS caches are kept', async () => {
  const g = view.generation;
  await put(keys.host('b'), { name: 'b', vtep: '192.0.2.2', started: created });
  // A change of the live set would have reached the view synchronously with the watch event.
  await put(keys.network('10.80.0.0-24'), { key: '10.80.0.0-24', ids: ['u'], vni: 262, subnet: '10.80.0.0/24', gateway: '10.80.0.1', mtu: 1450, mode: 'static', options: {}, created });
  await until(() => view.generation > g);
  assert.equal(view.generation, g + 1, 'only the network record counted');
});
