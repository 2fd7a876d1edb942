/**
 * Peer distribution's desired-state logic on the real embedded store: which remote endpoints
 * become kernel entries, and when they go. The kernel side is a recorder here; the real
 * kernel path is covered by test/e2e/multi-host.test.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import type { Peer } from '../../src/dataplane/types';
import type { PeerDataplane } from '../../src/driver/peer-programmer';
import { PeerSync } from '../../src/driver/peer-sync';
import { RecordStore } from '../../src/driver/record-store';
import { keys, type EndpointRecord, type NetworkRecord } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';

class KernelRecorder implements PeerDataplane {
  readonly table = new Map<string, Peer>();
  calls = 0;
  async applyPeers(_networkId: string, add: Peer[], remove: Peer[]): Promise<unknown> {
    this.calls++;
    for (const p of remove) this.table.delete(p.ip);
    for (const p of add) this.table.set(p.ip, p);
    return {};
  }
  async listPeers(): Promise<Peer[]> {
    return [...this.table.values()];
  }
}

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function setup(): Promise<{ store: Store; records: RecordStore; kernel: KernelRecorder; sync: PeerSync }> {
  return setupWith(new KernelRecorder());
}

async function setupWith<K extends PeerDataplane>(kernel: K): Promise<{ store: Store; records: RecordStore; kernel: K; sync: PeerSync }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-peers-'));
  const store = await openLocalStore({ dir, logger: silentLogger() });
  const records = new RecordStore(store);
  const sync = new PeerSync(records, kernel, { hostName: 'b', vtep: '192.0.2.2', leaseTtlSeconds: 5, reconcileIntervalMs: 60_000 }, silentLogger());
  cleanups.push(async () => {
    await sync.close();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await sync.start();
  return { store, records, kernel, sync };
}

const network: NetworkRecord = {
  key: '10.9.0.0-24',
  ids: ['n'.repeat(64)],
  vni: 256,
  subnet: '10.9.0.0/24',
  gateway: '10.9.0.1',
  mtu: 1450,
  mode: 'static',
  options: { mode: 'static' },
  created: new Date().toISOString(),
};

function endpoint(id: string, ip: string, host: string, joined = true): EndpointRecord {
  return { id, networkId: 'x'.repeat(64), ip, mac: `02:42:0a:09:00:${ip.split('.')[3]!.padStart(2, '0')}`, locator: '0.0.0.0', host, joined, created: '' };
}

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

test('remote joined endpoints of live hosts become peers; own, unjoined and dead-host ones do not', async () => {
  const { records, kernel, sync } = await setup();
  await records.put(keys.host('a'), { name: 'a', vtep: '192.0.2.1', started: '' });
  await records.put(keys.endpoint(network.key, 'e1'), endpoint('e1', '10.9.0.2', 'a'));
  await records.put(keys.endpoint(network.key, 'e2'), endpoint('e2', '10.9.0.3', 'a', false));
  await records.put(keys.endpoint(network.key, 'e3'), endpoint('e3', '10.9.0.4', 'b'));
  await records.put(keys.endpoint(network.key, 'e4'), endpoint('e4', '10.9.0.5', 'ghost'));
  await records.put(keys.endpoint('other-net', 'e5'), endpoint('e5', '10.8.0.5', 'a'));
  await settle();
  await sync.networkActive('n'.repeat(64), network);
  // The VTEP comes from the host's registration, not from what the endpoint record claims.
  assert.deepEqual([...kernel.table.values()], [{ ip: '10.9.0.2', mac: '02:42:0a:09:00:02', vtep: '192.0.2.1' }]);

  // Joining and leaving on the remote host is followed.
  await records.put(keys.endpoint(network.key, 'e2'), endpoint('e2', '10.9.0.3', 'a', true));
  await settle();
  assert.deepEqual([...kernel.table.keys()].sort(), ['10.9.0.2', '10.9.0.3']);
  await records.delete(keys.endpoint(network.key, 'e1'));
  await settle();
  assert.deepEqual([...kernel.table.keys()], ['10.9.0.3']);

  // A host that vanishes (lease expiry) takes its peers with it; it comes back, so do they.
  await records.delete(keys.host('a'));
  await settle();
  assert.equal(kernel.table.size, 0);
  await records.put(keys.host('a'), { name: 'a', vtep: '192.0.2.9', started: '' });
  await settle();
  assert.deepEqual([...kernel.table.values()], [{ ip: '10.9.0.3', mac: '02:42:0a:09:00:03', vtep: '192.0.2.9' }]);
});

test('an inactive network gets nothing; activation programs every existing peer at once', async () => {
  const { records, kernel, sync } = await setup();
  await records.put(keys.host('a'), { name: 'a', vtep: '192.0.2.1', started: '' });
  for (let i = 2; i < 52; i++) await records.put(keys.endpoint(network.key, `e${i}`), endpoint(`e${i}`, `10.9.0.${i}`, 'a'));
  await settle();
  assert.equal(kernel.calls, 0);
  await sync.networkActive('n'.repeat(64), network);
  assert.equal(kernel.table.size, 50);
  assert.equal(kernel.calls, 1, 'one batch');
});

test('registers this host under a lease and withdraws it on close', async () => {
  const { store, sync } = await setup();
  const me = await store.get(keys.host('b'));
  assert.ok(me);
  assert.equal(JSON.parse(me.value).vtep, '192.0.2.2');
  await sync.close();
  assert.equal(await store.get(keys.host('b')), undefined);
});

/** Keeps peers by ip|mac|vtep (not by IP): shows duplicates and conflicts as they are. */
class ExactRecorder implements PeerDataplane {
  readonly table = new Map<string, Peer>();
  async applyPeers(_networkId: string, add: Peer[], remove: Peer[]): Promise<unknown> {
    for (const p of remove) this.table.delete(`${p.ip}|${p.mac}|${p.vtep}`);
    for (const p of add) this.table.set(`${p.ip}|${p.mac}|${p.vtep}`, p);
    return {};
  }
  async listPeers(): Promise<Peer[]> {
    return [...this.table.values()];
  }
}

test('events update the programmed peers incrementally to exactly what a full recomputation gives', async () => {
  const { records, kernel, sync } = await setupWith(new ExactRecorder());
  const hosts = ['a', 'b', 'c'];
  for (const h of hosts) await records.put(keys.host(h), { name: h, vtep: `192.0.2.${hosts.indexOf(h) + 1}`, started: '' });
  await sync.networkActive('n'.repeat(64), network);
  // A small id and address space, so that duplicates (two records, one peer) and re-used keys are frequent.
  let seed = 7;
  const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16) % n;
  const expected = () => new Set(sync.desiredPeers(network.key).map((p) => `${p.ip}|${p.mac}|${p.vtep}`));
  for (let step = 0; step < 300; step++) {
    const r = rand(20);
    const id = `e${rand(12)}`;
    const remote = rand(2) === 0 ? 'a' : 'c';
    if (r < 11) await records.put(keys.endpoint(network.key, id), endpoint(id, `10.9.0.${2 + rand(3)}`, hosts[rand(3)]!, rand(5) > 0));
    else if (r < 18) await records.delete(keys.endpoint(network.key, id));
    else if (r === 18) await records.delete(keys.host(remote));
    else await records.put(keys.host(remote), { name: remote, vtep: `192.0.2.${remote === 'a' ? 1 : 3 + rand(2) * 10}`, started: '' });
    if (step % 10 === 9) {
      await settle();
      assert.deepEqual(new Set(kernel.table.keys()), expected(), `after step ${step}`);
    }
  }
  await settle();
  assert.deepEqual(new Set(kernel.table.keys()), expected());
});

test('between host changes each event is programmed from its own peers alone, and the tables stay exact', async () => {
  const kernel = new ExactRecorder();
  const sizes: number[] = [];
  const counting: PeerDataplane = {
    applyPeers: async (networkId, add, remove) => {
      sizes.push(add.length + remove.length);
      return kernel.applyPeers(networkId, add, remove);
    },
    listPeers: () => kernel.listPeers(),
  };
  const { records, sync } = await setupWith(counting);
  for (const [h, i] of [['a', 1], ['c', 3]] as const) await records.put(keys.host(h), { name: h, vtep: `192.0.2.${i}`, started: '' });
  for (let i = 0; i < 400; i++) await records.put(keys.endpoint(network.key, `big${i}`), endpoint(`big${i}`, `10.9.${1 + (i >> 8)}.${i & 0xff}`, i % 2 ? 'a' : 'c'));
  await sync.networkActive('n'.repeat(64), network);
  await settle();
  assert.equal(kernel.table.size, 400);
  const expected = () => new Set(sync.desiredPeers(network.key).map((p) => `${p.ip}|${p.mac}|${p.vtep}`));
  let seed = 11;
  const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16) % n;
  // Few ids and addresses: two records for one peer, re-joins and moves between hosts are frequent.
  for (let step = 0; step < 300; step++) {
    sizes.length = 0;
    const id = `e${rand(10)}`;
    if (rand(3) < 2) await records.put(keys.endpoint(network.key, id), endpoint(id, `10.9.0.${2 + rand(3)}`, rand(2) ? 'a' : 'c', rand(4) > 0));
    else await records.delete(keys.endpoint(network.key, id));
    await settle();
    assert.deepEqual(new Set(kernel.table.keys()), expected(), `after step ${step}`);
    // One record changed: at most its old peer out and its new peer in, never a rewrite of the 400.
    assert.ok(sizes.every((n) => n <= 2), `step ${step} programmed ${sizes.join(', ')} peers`);
  }
});

test('endpoints are followed per network: only while a local overlay is up, never those of other networks', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-peers-'));
  const inner = await openLocalStore({ dir, logger: silentLogger() });
  const open = new Map<string, number>();
  const delivered: string[] = [];
  // The real store, with its watches counted: which prefixes are followed, and what they deliver.
  const watch = (prefix: string, listener: Parameters<Store['watch']>[1]): ReturnType<Store['watch']> => {
      open.set(prefix, (open.get(prefix) ?? 0) + 1);
      const w = inner.watch(prefix, {
        onReset: (entries, revision) => {
          delivered.push(...entries.map((e) => e.key));
          listener.onReset(entries, revision);
        },
        onEvents: (events) => {
          delivered.push(...events.map((e) => e.key));
          listener.onEvents(events);
        },
      });
      return {
        close: () => {
          open.set(prefix, open.get(prefix)! - 1);
          return w.close();
        },
      };
  };
  const store = new Proxy(inner, {
    get: (target, prop, receiver) => {
      if (prop === 'watch') return watch;
      const value: unknown = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as Store;
  const records = new RecordStore(store);
  const kernel = new KernelRecorder();
  const sync = new PeerSync(records, kernel, { hostName: 'b', vtep: '192.0.2.2', leaseTtlSeconds: 5, reconcileIntervalMs: 60_000 }, silentLogger());
  cleanups.push(async () => {
    await sync.close();
    await inner.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await sync.start();
  const followed = () => [...open].filter(([, n]) => n > 0).map(([p]) => p).sort();
  assert.deepEqual(followed(), [keys.hosts()]);

  await records.put(keys.host('a'), { name: 'a', vtep: '192.0.2.1', started: '' });
  await records.put(keys.endpoint(network.key, 'e1'), endpoint('e1', '10.9.0.2', 'a'));
  await records.put(keys.endpoint('other-net', 'e5'), endpoint('e5', '10.8.0.5', 'a'));
  await sync.networkActive('n'.repeat(64), network);
  assert.deepEqual(followed(), [keys.endpoints(network.key), keys.hosts()].sort());
  assert.deepEqual([...kernel.table.keys()], ['10.9.0.2']);

  await records.put(keys.endpoint('other-net', 'e6'), endpoint('e6', '10.8.0.6', 'a'));
  await records.put(keys.endpoint(network.key, 'e2'), endpoint('e2', '10.9.0.3', 'a'));
  await settle();
  assert.deepEqual([...kernel.table.keys()].sort(), ['10.9.0.2', '10.9.0.3']);
  assert.deepEqual(delivered.filter((k) => k.startsWith(keys.endpoints('other-net'))), [], 'nothing of a network without a local overlay');

  await sync.networkInactive('n'.repeat(64));
  await settle();
  assert.deepEqual(followed(), [keys.hosts()], 'the watch goes with the last local overlay');
  const before = delivered.length;
  await records.put(keys.endpoint(network.key, 'e3'), endpoint('e3', '10.9.0.4', 'a'));
  await settle();
  assert.equal(delivered.length, before, 'nothing delivered after release');
  assert.deepEqual(sync.desiredPeers(network.key), [], 'its endpoints are forgotten');
});
