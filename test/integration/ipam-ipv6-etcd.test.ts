/**
 * IPv6 IPAM across hosts on a real etcd: three IpamService instances, each with its own etcd
 * client (as three hosts have), allocate at once from one IPv6 pool and race for the same
 * explicit addresses. No address is handed out twice, every answer is a result or a clear
 * conflict, and the store holds exactly one key per address handed out (RFC 5952 form).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { GATEWAY_REQUEST, IpamService, LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { RecordStore } from '../../src/driver/record-store';
import { keys } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { EtcdStore } from '../../src/store/etcd';
import type { Store } from '../../src/store/store';
import { PluginError } from '../../src/util/errors';
import { RUN_PREFIX, startEtcd, type EtcdServer } from '../helpers/etcd';

let etcd: EtcdServer | undefined;
const stores: Store[] = [];
before(async () => {
  etcd = await startEtcd();
});
after(async () => {
  for (const s of stores) await s.close();
  await etcd?.stop();
});

test('three hosts on etcd allocate from one IPv6 /64 and race for explicit addresses: never a duplicate', { timeout: 60_000 }, async () => {
  const prefix = `${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
  const hosts = ['h1', 'h2', 'h3'].map((name) => {
    const store = new EtcdStore({ endpoints: etcd!.endpoints, prefix, logger: silentLogger() });
    stores.push(store);
    return new IpamService(new RecordStore(store), name, silentLogger());
  });
  const pool = 'fd00:e7::/64';
  let poolId = '';
  for (const h of hosts) poolId = (await h.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool, v6: true })).poolId;
  const gateways = await Promise.all(hosts.map((h) => h.requestAddress({ poolId, options: { RequestAddressType: GATEWAY_REQUEST } })));
  assert.deepEqual(new Set(gateways.map((g) => g.address)), new Set(['fd00:e7::1/64']), 'one shared gateway');

  const asks = hosts.flatMap((h, i) =>
    Array.from({ length: 40 }, (_, k) =>
      // Every fourth request names one of ten addresses, in spellings that differ by host.
      k % 4 === 0
        ? h.requestAddress({ poolId, address: i === 0 ? `fd00:e7::${(k % 10) + 100}` : `fd00:e7:0:0::${(k % 10) + 100}`, options: {}, requestId: `h${i}-${k}` })
        : h.requestAddress({ poolId, options: {}, requestId: `h${i}-${k}` }),
    ),
  );
  const settled = await Promise.allSettled(asks);
  const granted = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value.address.split('/')[0]!] : []));
  for (const s of settled) {
    if (s.status === 'rejected') {
      assert.ok(s.reason instanceof PluginError && s.reason.status === 409 && /already in use/.test(s.reason.message), String(s.reason));
    }
  }
  assert.equal(new Set(granted).size, granted.length, `duplicates among ${granted.join(' ')}`);
  assert.ok(granted.length >= 90, `most requests succeed (${granted.length})`);
  const held = await stores[0]!.list(keys.addresses('fd00:e7::-64'));
  const heldIps = held.map((e) => keys.addressOf('fd00:e7::-64', e.key));
  assert.deepEqual(new Set(heldIps), new Set([...granted, 'fd00:e7::1']), 'one key per address handed out, in RFC 5952 form');
});
