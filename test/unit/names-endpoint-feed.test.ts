/**
 * The names view reads its endpoints from peer distribution's watch (src/driver/endpoint-feed.ts):
 * one `endpoints/<key>/` watch per network whoever follows it, and names that follow every
 * endpoint change through it — a join, a leave, a deleted record, this host's own containers, and
 * a full state delivered again after the watch lost its connection. A real PeerSync and NamesView
 * on the embedded store; the store's watch is passed through a cut-off the test controls (events
 * dropped while cut, as on a lost connection, then a fresh full state, as a backend delivers on
 * reconnect), and the kernel side is a recorder, as in names-view.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { PeerTableRecorder } from '../helpers/recording-dataplane';
import { PeerSync } from '../../src/driver/peer-sync';
import { RecordStore } from '../../src/driver/record-store';
import { keys, type NetworkRecord } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { namesKeys } from '../../src/names/records';
import { NamesView } from '../../src/names/view';
import { openLocalStore, type LocalStore } from '../../src/store/local';
import type { Store, WatchListener } from '../../src/store/store';


/** An open watch of the store as its owner sees it, which the test can cut off and bring back. */
interface OpenWatch {
  prefix: string;
  listener: WatchListener;
  cut: boolean;
  closed: boolean;
}

let dir = '';
let local: LocalStore;
let store: Store;
const opened: OpenWatch[] = [];
const kernel = new PeerTableRecorder();
let sync: PeerSync;
let view: NamesView;

const created = new Date().toISOString();
const put = (key: string, value: unknown) => local.put(key, JSON.stringify(value));
const NET: NetworkRecord = { key: '10.90.0.0-24', ids: ['n'], vni: 290, subnet: '10.90.0.0/24', gateway: '10.90.0.1', mtu: 1450, mode: 'static', options: {}, created };
const P2P: NetworkRecord = { key: '10.91.0.0-24', ids: ['p'], vni: 291, subnet: '10.91.0.0/24', gateway: '10.91.0.1', mtu: 1450, mode: 'p2p', options: {}, created };
const NET_ID = 'n'.repeat(64);

function endpoint(net: string, id: string, ip: string, host: string, joined: boolean) {
  return put(keys.endpoint(net, id), { id, networkId: `nid-${net}`, ip, mac: `02:42:0a:5a:00:${ip.split('.')[3]!.padStart(2, '0')}`, locator: '192.0.2.1', host, joined, created });
}
function names(net: string, id: string, container: string, host: string) {
  return put(namesKeys.endpoint(net, id), { endpointId: id, networkId: `nid-${net}`, networkName: 'feed', host, containerId: `c-${id}`, container, names: [container], updated: created });
}

/** The open, not closed, watches of a network's endpoints. */
const endpointWatches = (networkKey: string) => opened.filter((w) => !w.closed && w.prefix === keys.endpoints(networkKey));

async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 300 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(check(), `condition not reached: ${what}`);
}

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tso-names-feed-'));
  local = await openLocalStore({ dir, logger: silentLogger() });
  store = {
    get description() {
      return local.description;
    },
    get distributed() {
      return local.distributed;
    },
    get: (k) => local.get(k),
    list: (p) => local.list(p),
    put: (k, v, o) => local.put(k, v, o),
    create: (k, v, o) => local.create(k, v, o),
    compareAndSet: (k, v, r, o) => local.compareAndSet(k, v, r, o),
    delete: (k) => local.delete(k),
    compareAndDelete: (k, r) => local.compareAndDelete(k, r),
    deletePrefix: (p) => local.deletePrefix(p),
    grantLease: (t) => local.grantLease(t),
    close: () => local.close(),
    watch: (prefix, listener) => {
      const w: OpenWatch = { prefix, listener, cut: false, closed: false };
      opened.push(w);
      const inner = local.watch(prefix, {
        onReset: (entries, revision) => {
          if (!w.cut) listener.onReset(entries, revision);
        },
        onEvents: (events) => {
          if (!w.cut) listener.onEvents(events);
        },
        onError: (err) => listener.onError?.(err),
      });
      return {
        close: async () => {
          w.closed = true;
          await inner.close();
        },
      };
    },
  };
  await put(keys.host('a'), { name: 'a', vtep: '192.0.2.1', started: created });
  await put(keys.network(NET.key), NET);
  await put(keys.network(P2P.key), P2P);
  sync = new PeerSync(new RecordStore(store), kernel, { hostName: 'c', vtep: '192.0.2.3', leaseTtlSeconds: 5, reconcileIntervalMs: 60_000 }, silentLogger());
  await sync.start();
  view = new NamesView(store, silentLogger(), sync.liveHosts, sync.endpoints);
  await view.start();
});

after(async () => {
  await view?.close();
  await sync?.close();
  await local?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('peer distribution and the names view share one endpoint watch; names follow join, leave and delete through it', async () => {
  await sync.networkActive(NET_ID, NET);
  await view.follow(NET.key);
  assert.equal(endpointWatches(NET.key).length, 1, 'one watch of the network endpoints for both');
  const z = view.zone(NET.key);

  // Join: a remote container is a peer and has its name.
  await endpoint(NET.key, 'e1', '10.90.0.11', 'a', true);
  await names(NET.key, 'e1', 'api', 'a');
  await until(() => z.lookupName('api')?.v4[0] === '10.90.0.11' && kernel.table.has('10.90.0.11'), 'remote join');
  assert.deepEqual(z.lookupAddress('10.90.0.11'), ['api.feed']);

  // This host's own container: named, never its own peer.
  await endpoint(NET.key, 'e0', '10.90.0.10', 'c', true);
  await names(NET.key, 'e0', 'local', 'c');
  await until(() => z.lookupName('local')?.v4[0] === '10.90.0.10', 'local join');
  assert.equal(kernel.table.has('10.90.0.10'), false, 'own endpoints are no peers');

  // Leave: NXDOMAIN, and the peer goes with it.
  await endpoint(NET.key, 'e1', '10.90.0.11', 'a', false);
  await until(() => z.lookupName('api') === null && !kernel.table.has('10.90.0.11'), 'leave');
  assert.equal(z.lookupAddress('10.90.0.11'), null);

  // Joined again, then its endpoint record deleted (names record still there): NXDOMAIN.
  await endpoint(NET.key, 'e1', '10.90.0.11', 'a', true);
  await until(() => z.lookupName('api') !== null, 'join again');
  const g = view.generation;
  await local.delete(keys.endpoint(NET.key, 'e1'));
  await until(() => view.generation > g, 'delete seen');
  assert.equal(z.lookupName('api'), null);
  assert.deepEqual(view.served(NET.key).map((n) => n.container), ['local']);
});

test('a full state after a watch error: names catch up with what changed while the watch was cut off', async () => {
  const z = view.zone(NET.key);
  const [w] = endpointWatches(NET.key);
  assert.ok(w);
  w.cut = true;
  w.listener.onError?.(new Error('connection lost'));
  assert.ok(sync.health().watchTrouble.endpoints, 'the shared watch is in trouble');
  // Missed by the view: a new container, the local one gone, and api back.
  const g0 = view.generation;
  await endpoint(NET.key, 'e2', '10.90.0.12', 'a', true);
  await names(NET.key, 'e2', 'worker', 'a');
  await local.delete(keys.endpoint(NET.key, 'e0'));
  await endpoint(NET.key, 'e1', '10.90.0.11', 'a', true);
  // The names watch is not cut: the new names record arrives, its endpoint does not.
  await until(() => view.generation > g0, 'names record seen');
  assert.equal(z.lookupName('worker'), null, 'its endpoint is not known yet');
  assert.deepEqual(z.lookupName('local')?.v4, ['10.90.0.10'], 'the delete was missed');

  // Reconnected: the backend delivers the prefix again.
  w.cut = false;
  const entries = await local.list(w.prefix);
  const revision = await local.put('test/tick', '1');
  const g = view.generation;
  w.listener.onReset(entries, revision);
  assert.ok(view.generation > g, 'the full state reaches the names at once');
  assert.deepEqual(z.lookupName('worker')?.v4, ['10.90.0.12']);
  assert.deepEqual(z.lookupName('api')?.v4, ['10.90.0.11']);
  assert.equal(z.lookupName('local'), null);
  assert.equal(sync.health().watchTrouble.endpoints, undefined, 'trouble cleared by the full state');
  await until(() => kernel.table.has('10.90.0.12') && kernel.table.has('10.90.0.11'), 'peers reconciled from the same state');
});

test('a network followed by one reader keeps its watch while the other lets go; the last one closes it', async () => {
  // The names view lets go first: the peers keep the watch, the names are dropped.
  view.unfollow(NET.key);
  assert.equal(endpointWatches(NET.key).length, 1);
  assert.equal(view.zone(NET.key).lookupName('worker'), null);
  await sync.networkInactive(NET_ID);
  assert.equal(endpointWatches(NET.key).length, 0, 'closed with its last reader');

  // A mode that programs no peers (p2p): its endpoints are watched for the names alone.
  await endpoint(P2P.key, 'e5', '10.91.0.15', 'a', true);
  await names(P2P.key, 'e5', 'p2p-box', 'a');
  await view.follow(P2P.key);
  assert.equal(endpointWatches(P2P.key).length, 1);
  assert.deepEqual(view.zone(P2P.key).lookupName('p2p-box')?.v4, ['10.91.0.15']);
  view.unfollow(P2P.key);
  assert.equal(endpointWatches(P2P.key).length, 0);
  assert.equal(view.zone(P2P.key).lookupName('p2p-box'), null);
});
