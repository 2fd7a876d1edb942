/**
 * IPAM's address blocks and pool view (pure logic), and the allocator built on them against the
 * real embedded store: hosts allocating at once take addresses from blocks of their own, never
 * the same address, and a request asked again gets its address back.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { blockBits, blockOf, blockStarts, PoolView } from '../../src/driver/ipam-blocks';
import { IpamService, LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { RecordStore } from '../../src/driver/record-store';
import type { AddressRecord } from '../../src/driver/records';
import { intToIp, ipToInt, parseSubnet } from '../../src/driver/subnet';
import { silentLogger } from '../../src/log';
import { openLocalStore, type LocalStore } from '../../src/store/local';

const held = (host: string, extra: Partial<AddressRecord> = {}): AddressRecord => ({ host, kind: 'endpoint', created: 'now', ...extra });
const ip = (n: number | undefined) => (n === undefined ? undefined : intToIp(n));

test('block geometry: at least four blocks per range, at most 64 addresses, aligned, covering only host addresses', () => {
  assert.equal(blockBits(parseSubnet('10.0.0.0/16')), 6);
  assert.equal(blockBits(parseSubnet('10.0.0.0/24')), 6);
  assert.equal(blockBits(parseSubnet('10.0.0.0/27')), 3);
  assert.equal(blockBits(parseSubnet('10.0.0.0/30')), 0);
  assert.deepEqual(blockStarts(parseSubnet('10.0.0.0/24')).map(intToIp), ['10.0.0.0', '10.0.0.64', '10.0.0.128', '10.0.0.192']);
  assert.equal(blockStarts(parseSubnet('10.0.0.0/16')).length, 1024);
  assert.equal(intToIp(blockOf(parseSubnet('10.0.0.0/24'), ipToInt('10.0.0.200'))), '10.0.0.192');
  // A /30 has two host addresses: the network and broadcast "blocks" are not offered.
  assert.deepEqual(blockStarts(parseSubnet('10.0.0.0/30')).map(intToIp), ['10.0.0.1', '10.0.0.2']);
});

test('a view picks lowest-first in its own blocks, never an address taken or being created', () => {
  const range = parseSubnet('10.1.0.0/24');
  const view = new PoolView(range, 'a');
  view.load([{ ip: ipToInt('10.1.0.1'), record: { host: 'a', kind: 'gateway', created: 'now' } }], []);
  assert.equal(view.pickOwn(), undefined, 'no block yet');
  assert.deepEqual(view.unclaimedBlocks().map(intToIp), ['10.1.0.0', '10.1.0.64', '10.1.0.128', '10.1.0.192']);
  view.blockClaimed(ipToInt('10.1.0.0'), true);
  const first = view.pickOwn();
  const second = view.pickOwn();
  assert.deepEqual([ip(first), ip(second)], ['10.1.0.2', '10.1.0.3'], 'a picked address is not picked twice while its create runs');
  view.foundTaken(first!);
  view.abandoned(second!);
  assert.equal(ip(view.pickOwn()), '10.1.0.3', 'an abandoned pick is free again, one found taken is not');
});

test('a full own block makes the host claim the next one; with none left it borrows', () => {
  const range = parseSubnet('10.2.0.0/28'); // 4 blocks of 4: .0-.3, .4-.7, .8-.11, .12-.15
  const view = new PoolView(range, 'a');
  view.load([], [{ start: ipToInt('10.2.0.4'), owner: 'b' }, { start: ipToInt('10.2.0.8'), owner: 'c' }, { start: ipToInt('10.2.0.12'), owner: 'c' }]);
  view.blockClaimed(ipToInt('10.2.0.0'), true);
  const got = [view.pickOwn(), view.pickOwn(), view.pickOwn()].map(ip);
  assert.deepEqual(got, ['10.2.0.1', '10.2.0.2', '10.2.0.3']);
  assert.equal(view.pickOwn(), undefined);
  assert.deepEqual(view.unclaimedBlocks(), [], 'every block is claimed');
  assert.equal(ip(view.pickAny()), '10.2.0.4', 'borrowed from b, lowest first');
});

test('request replay: the view finds the address this host holds for a request id or a container, until it is released', () => {
  const range = parseSubnet('10.3.0.0/24');
  const view = new PoolView(range, 'a');
  view.load(
    [
      { ip: ipToInt('10.3.0.5'), record: held('a', { request: 'r1', name: 'web' }) },
      { ip: ipToInt('10.3.0.6'), record: held('b', { request: 'r2' }) },
    ],
    [],
  );
  assert.equal(ip(view.heldFor({ requestId: 'r1' })), '10.3.0.5');
  assert.equal(ip(view.heldFor({ name: 'web' })), '10.3.0.5');
  assert.equal(view.heldFor({ requestId: 'r2' }), undefined, "another host's request is not ours");
  view.released(ipToInt('10.3.0.5'));
  assert.equal(view.heldFor({ requestId: 'r1' }), undefined);
  view.blockClaimed(ipToInt('10.3.0.0'), true);
  const n = view.pickOwn()!;
  view.created(n, held('a', { request: 'r3' }));
  assert.equal(view.heldFor({ requestId: 'r3' }), n);
});

const stores: LocalStore[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

test('three hosts allocating at once on one subnet: all distinct, each from blocks of its own', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-blocks-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(store);
  const hosts = ['h1', 'h2', 'h3'].map((h) => new IpamService(new RecordStore(store), h, silentLogger()));
  const { poolId } = await hosts[0]!.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.4.0.0/22', v6: false });
  for (const h of hosts.slice(1)) await h.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.4.0.0/22', v6: false });
  const results = await Promise.all(
    hosts.flatMap((h, i) => Array.from({ length: 100 }, (_, k) => h.requestAddress({ poolId, options: {}, requestId: `h${i}-${k}` }).then((r) => ({ i, ip: r.address.split('/')[0]! })))),
  );
  assert.equal(new Set(results.map((r) => r.ip)).size, 300, 'no address twice');
  const blocks = new Map((await store.list('ipam/blocks/10.4.0.0-22/')).map((e) => [e.key.split('/').pop()!, (JSON.parse(e.value) as { host: string }).host]));
  const range = parseSubnet('10.4.0.0/22');
  const foreign = results.filter((r) => blocks.get(intToIp(blockOf(range, ipToInt(r.ip)))) !== `h${r.i + 1}`);
  assert.deepEqual(foreign, [], 'every address is in a block its host claimed');
  // Asked again with the same request id: the same address, on the same host.
  const again = await hosts[1]!.requestAddress({ poolId, options: {}, requestId: 'h1-7' });
  assert.equal(again.address.split('/')[0], results.find((r) => r.i === 1 && r.ip && results.indexOf(r) === 100 + 7)!.ip);
});
