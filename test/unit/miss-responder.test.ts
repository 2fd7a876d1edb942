/**
 * mode=miss in peer distribution, on the real embedded store with a recording kernel: nothing
 * is programmed until the kernel asks; an L3 or L2 miss is answered with that one peer; a
 * peer that leaves is withdrawn; unknown addresses are ignored. Also the observer hooks.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { parseInspectArgs } from '../../src/cli/inspect';
import type { Miss } from '../../src/dataplane/peers';
import type { Peer } from '../../src/dataplane/types';
import { MissResponder, indexPeers, lookupMiss } from '../../src/driver/miss-responder';
import type { PeerDataplane } from '../../src/driver/peer-programmer';
import { PeerTableRecorder } from '../helpers/recording-dataplane';
import { PeerSync, type PeerSyncObserver } from '../../src/driver/peer-sync';
import { RecordStore } from '../../src/driver/record-store';
import { keys, type EndpointRecord, type NetworkRecord } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';

class MissKernel extends PeerTableRecorder {
  readonly listeners = new Map<string, (m: Miss) => void>();
  stopped = 0;
  async watchMisses(networkId: string, onMiss: (m: Miss) => void): Promise<() => void> {
    this.listeners.set(networkId, onMiss);
    return () => {
      this.stopped++;
      this.listeners.delete(networkId);
    };
  }
  miss(networkId: string, m: Miss): void {
    this.listeners.get(networkId)?.(m);
  }
}

class Counts implements PeerSyncObserver {
  readonly misses: string[] = [];
  programmed = -1;
  reconciles = 0;
  resets: string[] = [];
  peersProgrammed(_id: string, n: number): void {
    this.programmed = n;
  }
  peersChanged(): void {}
  reconciled(): void {
    this.reconciles++;
  }
  watchReset(watch: string, reconnect: boolean): void {
    this.resets.push(`${watch}:${reconnect}`);
  }
  watchError(): void {}
  miss(kind: string, outcome: string): void {
    this.misses.push(`${kind}:${outcome}`);
  }
}

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const NET_ID = 'm'.repeat(64);
const network: NetworkRecord = {
  key: '10.9.0.0-24',
  ids: [NET_ID],
  vni: 300,
  subnet: '10.9.0.0/24',
  gateway: '10.9.0.1',
  mtu: 1450,
  mode: 'miss',
  options: { mode: 'miss' },
  created: new Date().toISOString(),
};

function endpoint(id: string, ip: string, host: string, joined = true): EndpointRecord {
  return { id, networkId: 'x'.repeat(64), ip, mac: `02:42:0a:09:00:${ip.split('.')[3]!.padStart(2, '0')}`, locator: '0.0.0.0', host, joined, created: '' };
}

async function settle(): Promise<void> {
  for (let i = 0; i < 30; i++) await new Promise((r) => setImmediate(r));
}

test('miss mode: nothing before the kernel asks; L3 and L2 misses answered; leavers withdrawn', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-miss-'));
  const store = await openLocalStore({ dir, logger: silentLogger() });
  const records = new RecordStore(store);
  const kernel = new MissKernel();
  const counts = new Counts();
  const sync = new PeerSync(records, kernel, { hostName: 'b', vtep: '192.0.2.2', leaseTtlSeconds: 5, reconcileIntervalMs: 60_000 }, silentLogger(), counts);
  cleanups.push(async () => {
    await sync.close();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await sync.start();
  // Endpoints are followed per network, from its activation on.
  assert.deepEqual(counts.resets.sort(), ['hosts:false']);
  await records.put(keys.host('a'), { name: 'a', vtep: '192.0.2.1', started: '' });
  await records.put(keys.endpoint(network.key, 'e1'), endpoint('e1', '10.9.0.2', 'a'));
  await records.put(keys.endpoint(network.key, 'e2'), endpoint('e2', '10.9.0.3', 'a'));
  await settle();
  await sync.networkActive(NET_ID, network);
  assert.deepEqual(counts.resets.sort(), ['endpoints:false', 'hosts:false']);
  assert.equal(kernel.table.size, 0, 'nothing pre-programmed');
  assert.ok(kernel.listeners.has(NET_ID), 'listening for misses');
  assert.ok(counts.reconciles >= 1);

  kernel.miss(NET_ID, { kind: 'l3', ip: '10.9.0.2', ifindex: 3 });
  await settle();
  assert.deepEqual([...kernel.table.values()], [{ ip: '10.9.0.2', mac: '02:42:0a:09:00:02', vtep: '192.0.2.1' }]);
  kernel.miss(NET_ID, { kind: 'l2', mac: '02:42:0A:09:00:03', ifindex: 3 });
  kernel.miss(NET_ID, { kind: 'l3', ip: '10.9.0.99', ifindex: 3 });
  await settle();
  assert.deepEqual([...kernel.table.keys()].sort(), ['10.9.0.2', '10.9.0.3']);
  assert.deepEqual(counts.misses, ['l3:answered', 'l2:answered', 'l3:unknown']);
  assert.equal(counts.programmed, 2);

  // A peer that leaves is withdrawn; one never asked for stays unprogrammed when it joins.
  await records.put(keys.endpoint(network.key, 'e1'), endpoint('e1', '10.9.0.2', 'a', false));
  await records.put(keys.endpoint(network.key, 'e4'), endpoint('e4', '10.9.0.4', 'a'));
  await settle();
  assert.deepEqual([...kernel.table.keys()], ['10.9.0.3']);

  // The peer's host moved: the answered entry follows it.
  await records.put(keys.host('a'), { name: 'a', vtep: '192.0.2.9', started: '' });
  await settle();
  assert.deepEqual([...kernel.table.values()], [{ ip: '10.9.0.3', mac: '02:42:0a:09:00:03', vtep: '192.0.2.9' }]);

  // Going inactive stops listening.
  await sync.networkInactive(NET_ID);
  assert.equal(kernel.stopped, 1);
  assert.equal(counts.programmed, 0);
});

test('reconcile makes the tables exact through the dataplane\'s setPeers when it has one', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-set-'));
  const store = await openLocalStore({ dir, logger: silentLogger() });
  const records = new RecordStore(store);
  const calls: Peer[][] = [];
  const kernel: PeerDataplane = {
    applyPeers: async () => ({}),
    // A hand-made entry and a pair the kernel cannot join: listPeers does not even see them.
    listPeers: async () => [],
    setPeers: async (_id, desired) => {
      calls.push(desired);
      return { added: desired.length, removed: 1 };
    },
  };
  const counts = new Counts();
  const sync = new PeerSync(records, kernel, { hostName: 'b', vtep: '192.0.2.2', leaseTtlSeconds: 5, reconcileIntervalMs: 60_000 }, silentLogger(), counts);
  cleanups.push(async () => {
    await sync.close();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await sync.start();
  await records.put(keys.host('a'), { name: 'a', vtep: '192.0.2.1', started: '' });
  await records.put(keys.endpoint(network.key, 'e1'), endpoint('e1', '10.9.0.2', 'a'));
  await settle();
  await sync.networkActive('s'.repeat(64), { ...network, mode: 'static', options: { mode: 'static' } });
  assert.deepEqual(calls, [[{ ip: '10.9.0.2', mac: '02:42:0a:09:00:02', vtep: '192.0.2.1' }]]);
  assert.equal(counts.programmed, 1);
});

test('the responder drops a repeated miss while the first is being answered', async () => {
  let calls = 0;
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let listener!: (m: Miss) => void;
  const responder = new MissResponder(
    {
      watchMisses: async (_id, onMiss) => {
        listener = onMiss;
        return () => undefined;
      },
    },
    async () => {
      calls++;
      await gate;
      return 'answered';
    },
    silentLogger(),
  );
  await responder.watch('n1');
  await responder.watch('n1');
  assert.ok(responder.watching('n1'));
  for (let i = 0; i < 5; i++) listener({ kind: 'l3', ip: '10.0.0.2', ifindex: 1 });
  listener({ kind: 'l3', ip: '10.0.0.3', ifindex: 1 });
  assert.equal(calls, 2);
  release();
  await settle();
  listener({ kind: 'l3', ip: '10.0.0.2', ifindex: 1 });
  assert.equal(calls, 3, 'asked again after the answer: answered again (e.g. entry deleted by hand)');
  responder.close();
  assert.equal(responder.watching('n1'), false);
});

test('lookups by IP and (case-insensitive) MAC', () => {
  const index = indexPeers([{ ip: '10.0.0.2', mac: '02:42:0A:00:00:02', vtep: '192.0.2.1' }]);
  assert.equal(lookupMiss(index, { kind: 'l3', ip: '10.0.0.2', ifindex: 1 })?.vtep, '192.0.2.1');
  assert.equal(lookupMiss(index, { kind: 'l2', mac: '02:42:0a:00:00:02', ifindex: 1 })?.ip, '10.0.0.2');
  assert.equal(lookupMiss(index, { kind: 'l3', ip: '10.0.0.3', ifindex: 1 }), undefined);
});

test('inspect takes the serve options (and their variables) plus its own', () => {
  const o = parseInspectArgs(['demo', '--check', '--json', '--store', 'etcd://10.0.0.5:2379', '--host-name', 'h1'], { TSOVERLAY_NETNS_DIR: '/run/x' });
  assert.deepEqual(o, {
    network: 'demo',
    json: true,
    check: true,
    dockerSocket: '/var/run/docker.sock',
    config: { store: 'etcd://10.0.0.5:2379', storePrefix: 'tsoverlay/v1/', netnsDir: '/run/x', hostName: 'h1', stateDir: '/var/lib/tsoverlay', encryptedVxlanPort: 4793 },
  });
  assert.equal(parseInspectArgs(['--docker-host', 'unix:///run/d.sock', '--host-name', 'h'], {}).dockerSocket, '/run/d.sock');
  assert.equal(parseInspectArgs(['--host-name', 'h'], { DOCKER_HOST: 'unix:///run/e.sock' }).dockerSocket, '/run/e.sock');
  assert.throws(() => parseInspectArgs(['--docker-host', 'tcp://1.2.3.4:2375', '--host-name', 'h'], {}), /only a unix socket/);
  assert.throws(() => parseInspectArgs(['a', 'b', '--host-name', 'h'], {}), /at most one network/);
  assert.throws(() => parseInspectArgs(['--bogus'], {}), /Unknown option/);
});

test('IPv6 l3 misses (Neighbor Solicitations) find the peer by its IPv6 address, whatever its spelling in the store', () => {
  const index = indexPeers([
    { ip: '10.0.0.2', ip6: 'FD00:20:0:0::2', mac: '02:42:0a:00:00:02', vtep: '192.0.2.1' },
    { ip: '', ip6: 'fd00:20::3', mac: '02:42:0a:00:00:03', vtep: '192.0.2.2' },
  ]);
  assert.equal(lookupMiss(index, { kind: 'l3', ip: 'fd00:20::2', ifindex: 1 })?.mac, '02:42:0a:00:00:02');
  assert.equal(lookupMiss(index, { kind: 'l3', ip: 'fd00:20::3', ifindex: 1 })?.vtep, '192.0.2.2');
  assert.equal(lookupMiss(index, { kind: 'l3', ip: '', ifindex: 1 }), undefined);
});
