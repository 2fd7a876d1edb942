import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { GATEWAY_REQUEST, IpamService, LOCAL_ADDRESS_SPACE, REQUEST_ID_OPTION } from '../../src/driver/ipam';
import { RecordStore } from '../../src/driver/record-store';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';
import { PluginError } from '../../src/util/errors';

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
  const ofB = (await b.requestAddress({ poolId, options: {} })).address.split('/')[0];
  await a.releasePool(poolId);
  assert.ok(await store.get('ipam/pools/10.80.0.0-24'));
  assert.deepEqual((await store.list('ipam/addresses/10.80.0.0-24/')).map((e) => e.key.split('/').pop()), ['10.80.0.1', ofB]);
  assert.deepEqual(
    (await store.list('ipam/blocks/10.80.0.0-24/')).map((e) => JSON.parse(e.value).host),
    ['host-b'],
    "a's address blocks go with its hold on the pool",
  );
  await b.releasePool(poolId);
  assert.equal(await store.get('ipam/pools/10.80.0.0-24'), undefined);
  assert.deepEqual(await store.list('ipam/addresses/10.80.0.0-24/'), []);
  assert.deepEqual(await store.list('ipam/blocks/10.80.0.0-24/'), []);
});

/** The endpoint record Docker's CreateEndpoint + Join leave for a running container (as network-driver writes it). */
async function runningEndpoint(store: Store, networkKey: string, id: string, ip: string, host = 'host-a', joined = true): Promise<void> {
  const record = { id, networkId: `net-${networkKey}`, ip, mac: '02:42:00:00:00:00', locator: '192.0.2.1', host, joined, created: new Date().toISOString() };
  await store.put(`endpoints/${networkKey}/${id}`, JSON.stringify(record));
}

test('the same explicit address from two requests on one host: the second is refused, naming the holder', async () => {
  const { store, a } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.90.0.0/24', v6: false });
  assert.deepEqual(await a.requestAddress({ poolId, address: '10.90.0.200', options: {}, requestId: 'req-first-1' }), { address: '10.90.0.200/24' });
  await runningEndpoint(store, '10.90.0.0-24', 'e'.repeat(64), '10.90.0.200');
  await assert.rejects(a.requestAddress({ poolId, address: '10.90.0.200', options: {}, requestId: 'req-second' }), (err: unknown) => {
    assert.ok(err instanceof PluginError);
    assert.equal(err.status, 409);
    assert.match(err.message, /^address 10\.90\.0\.200 is already in use in 10\.90\.0\.0\/24: held by another container \(endpoint eeeeeeeeeeee\) on host host-a \(request req-firs, /);
    return true;
  });
  // Without any request id (as the daemon never sends, but a direct caller may) it is refused too.
  await assert.rejects(a.requestAddress({ poolId, address: '10.90.0.200', options: {} }), /already in use.*on host host-a/);
  const record = JSON.parse((await store.get('ipam/addresses/10.90.0.0-24/10.90.0.200'))!.value) as { request: string };
  assert.equal(record.request, 'req-first-1', 'the record still names the first request');
});

test('the same request run again (same request id) gets the same address, explicit or not', async () => {
  const { a } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.91.0.0/24', v6: false });
  const explicit = await a.requestAddress({ poolId, address: '10.91.0.50', options: {}, requestId: 'r-explicit' });
  assert.deepEqual(await a.requestAddress({ poolId, address: '10.91.0.50', options: {}, requestId: 'r-explicit' }), explicit);
  const auto = await a.requestAddress({ poolId, options: {}, requestId: 'r-auto' });
  assert.deepEqual(await a.requestAddress({ poolId, options: {}, requestId: 'r-auto' }), auto);
  assert.notDeepEqual(await a.requestAddress({ poolId, options: {}, requestId: 'r-other' }), auto);
});

test('a tsoverlay.request-id option from a caller is ignored: it cannot claim another request’s address', async () => {
  const { store, a } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.92.0.0/24', v6: false });
  await a.requestAddress({ poolId, address: '10.92.0.7', options: {}, requestId: 'victim-id' });
  await assert.rejects(
    a.requestAddress({ poolId, address: '10.92.0.7', options: { [REQUEST_ID_OPTION]: 'victim-id' } }),
    /already in use in 10\.92\.0\.0\/24/,
  );
  await assert.rejects(
    a.requestAddress({ poolId, address: '10.92.0.7', options: { [REQUEST_ID_OPTION]: 'victim-id' }, requestId: 'mine' }),
    /already in use/,
  );
  // Nor does it make an automatic request return the victim's address.
  const auto = await a.requestAddress({ poolId, options: { [REQUEST_ID_OPTION]: 'victim-id' } });
  assert.notEqual(auto.address, '10.92.0.7/24');
  const record = JSON.parse((await store.get('ipam/addresses/10.92.0.0-24/10.92.0.7'))!.value) as { request?: string };
  assert.equal(record.request, 'victim-id');
});

test('a release while a running container of this host holds the address does not free it', async () => {
  const { store, a, b } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.93.0.0/24', v6: false });
  await b.requestPool({ addressSpace: space, pool: '10.93.0.0/24', v6: false });
  await a.requestAddress({ poolId, address: '10.93.0.200', options: {}, requestId: 'holder' });
  await runningEndpoint(store, '10.93.0.0-24', 'a'.repeat(64), '10.93.0.200');
  await assert.rejects(a.requestAddress({ poolId, address: '10.93.0.200', options: {}, requestId: 'loser' }), /already in use/);
  // The loser's release (Docker rolling back the failed container) and another host's release.
  await a.releaseAddress(poolId, '10.93.0.200/24');
  await b.releaseAddress(poolId, '10.93.0.200/24');
  assert.ok(await store.get('ipam/addresses/10.93.0.0-24/10.93.0.200'), 'still held');
  await assert.rejects(b.requestAddress({ poolId, address: '10.93.0.200', options: {} }), /already in use/);
  assert.notEqual((await b.requestAddress({ poolId, options: {} })).address, '10.93.0.200/24');
  // Docker removes the holder: Leave + DeleteEndpoint (the record goes), then ReleaseAddress frees it.
  await store.delete(`endpoints/10.93.0.0-24/${'a'.repeat(64)}`);
  await a.releaseAddress(poolId, '10.93.0.200/24');
  assert.equal(await store.get('ipam/addresses/10.93.0.0-24/10.93.0.200'), undefined);
});

test("Docker's start-up replay (pool asked again, then its endpoints' addresses) succeeds; a later second container does not", async () => {
  const { store, a } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.94.0.0/24', v6: false });
  await a.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } });
  const auto = await a.requestAddress({ poolId, options: {}, requestId: 'r-1' });
  await a.requestAddress({ poolId, address: '10.94.0.200', options: {}, requestId: 'r-2' });
  await runningEndpoint(store, '10.94.0.0-24', '1'.repeat(64), '10.94.0.2');
  await runningEndpoint(store, '10.94.0.0-24', '2'.repeat(64), '10.94.0.200');
  // dockerd restarts: RequestPool, the gateway, then every endpoint's address, explicitly, with fresh ids.
  await a.requestPool({ addressSpace: space, pool: '10.94.0.0/24', v6: false });
  assert.deepEqual(await a.requestAddress({ poolId, address: '10.94.0.1', options: { RequestAddressType: GATEWAY_REQUEST }, requestId: 'x1' }), { address: '10.94.0.1/24' });
  assert.deepEqual(await a.requestAddress({ poolId, address: '10.94.0.2', options: {}, requestId: 'x2' }), auto);
  assert.deepEqual(await a.requestAddress({ poolId, address: '10.94.0.200', options: {}, requestId: 'x3' }), { address: '10.94.0.200/24' });
  // Docker replays each endpoint once: asking again for an address the replay re-confirmed is a second container.
  await assert.rejects(a.requestAddress({ poolId, address: '10.94.0.200', options: {}, requestId: 'x3b' }), /already in use/);
  // Docker serves its API again: the first ordinary request ends the replay.
  await a.requestAddress({ poolId, options: {}, requestId: 'x4' });
  await assert.rejects(a.requestAddress({ poolId, address: '10.94.0.200', options: {}, requestId: 'x5' }), /already in use/);
  // The records still name the original requests.
  const record = JSON.parse((await store.get('ipam/addresses/10.94.0.0-24/10.94.0.200'))!.value) as { request?: string };
  assert.equal(record.request, 'r-2');
});

test('explicit addresses: the gateway is not an endpoint address, and an endpoint address is not the gateway', async () => {
  const { a } = await fixture();
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.95.0.0/24', v6: false });
  await a.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } });
  await assert.rejects(a.requestAddress({ poolId, address: '10.95.0.1', options: {} }), /10\.95\.0\.1 is already in use in 10\.95\.0\.0\/24: it is the network's gateway/);
});

test('requests queued behind a stalled store answer within the request timeout, with a clear error', async () => {
  const { store } = await fixture();
  const records = new RecordStore(store);
  const a = new IpamService(records, 'host-a', silentLogger(), { requestTimeoutMs: 300 });
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.96.0.0/24', v6: false });
  await a.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } });
  // A store that stops answering once a request holds the subnet (what etcd does under SIGSTOP).
  const stalled = new RecordStore(stallingStore(store));
  const s = new IpamService(stalled, 'host-a', silentLogger(), { requestTimeoutMs: 300 });
  const t0 = performance.now();
  const results = await Promise.allSettled(Array.from({ length: 8 }, () => s.requestAddress({ poolId, options: {} })));
  const took = performance.now() - t0;
  assert.ok(took < 300 + 200, `answered after ${Math.round(took)} ms`);
  for (const r of results) {
    assert.equal(r.status, 'rejected');
    const err = (r as PromiseRejectedResult).reason as Error;
    assert.match(err.message, /timed out waiting for its turn on 10\.96\.0\.0\/24 after 300 ms|deadline passed/);
  }
  assert.equal(await a.requestAddress({ poolId, options: {} }).then((r) => r.address), '10.96.0.2/24', 'nothing was allocated meanwhile');
});

/** `store` whose reads of single keys still answer and whose every other call never does. */
function stallingStore(store: Store): Store {
  const never = (): Promise<never> => new Promise<never>(() => undefined);
  return {
    description: store.description,
    distributed: false,
    get: (key) => store.get(key),
    list: never,
    put: never,
    create: never,
    compareAndSet: never,
    delete: never,
    compareAndDelete: never,
    deletePrefix: never,
    watch: (prefix, listener) => store.watch(prefix, listener),
    grantLease: never,
    close: () => Promise.resolve(),
  };
}

test('an allocation the store applies after its request failed is undone', async () => {
  const { store } = await fixture();
  const a = new IpamService(new RecordStore(store), 'host-a', silentLogger(), { requestTimeoutMs: 200 });
  const { poolId } = await a.requestPool({ addressSpace: space, pool: '10.97.0.0/24', v6: false });
  await a.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } });
  // host-a's first allocation claims its address block; the address itself is freed again.
  await a.releaseAddress(poolId, (await a.requestAddress({ poolId, options: {} })).address);
  // A store that holds creates back and applies them later (etcd stopped, then resumed).
  let resume!: () => void;
  const resumed = new Promise<void>((r) => (resume = r));
  const late: Store = { ...storeMethods(store), create: async (key, value, options) => {
    await resumed;
    return store.create(key, value, options);
  } };
  const s = new IpamService(new RecordStore(late), 'host-a', silentLogger(), { requestTimeoutMs: 200 });
  await assert.rejects(s.requestAddress({ poolId, address: '10.97.0.9', options: {}, requestId: 'gave-up' }), /deadline passed/);
  await assert.rejects(s.requestAddress({ poolId, options: {}, requestId: 'gave-up-too' }), /deadline passed/);
  resume();
  await new Promise((r) => setTimeout(r, 50));
  const written = (await store.list('ipam/addresses/10.97.0.0-24/')).map((e) => e.key.split('/').pop());
  assert.deepEqual(written, ['10.97.0.1', '10.97.0.2', '10.97.0.9'], 'the store applied both creates late');
  const t0 = Date.now();
  while ((await store.list('ipam/addresses/10.97.0.0-24/')).length > 1 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual((await store.list('ipam/addresses/10.97.0.0-24/')).map((e) => e.key.split('/').pop()), ['10.97.0.1'], 'only the gateway is left');
});

/** The Store methods of `store`, bound, as a plain object to override some of. */
function storeMethods(store: Store): Store {
  return {
    description: store.description,
    distributed: store.distributed,
    get: (k) => store.get(k),
    list: (p) => store.list(p),
    put: (k, v, o) => store.put(k, v, o),
    create: (k, v, o) => store.create(k, v, o),
    compareAndSet: (k, v, r, o) => store.compareAndSet(k, v, r, o),
    delete: (k) => store.delete(k),
    compareAndDelete: (k, r) => store.compareAndDelete(k, r),
    deletePrefix: (p) => store.deletePrefix(p),
    watch: (p, l) => store.watch(p, l),
    grantLease: (t) => store.grantLease(t),
    close: () => Promise.resolve(),
  };
}
