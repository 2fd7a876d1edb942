/**
 * IPv6 IPAM across hosts on a real etcd and on a real Consul 1.8.7 server, the same cases on
 * each: IPv6 address keys hold ':' (and '::'), which each backend must carry unchanged.
 * - three IpamService instances, each with its own store client (as three hosts have), allocate
 *   at once from one IPv6 pool and race for the same explicit addresses: no address is handed
 *   out twice, every answer is a result or a clear conflict, and the store holds exactly one key
 *   per address handed out (RFC 5952 form);
 * - release: a host frees only its own addresses, whatever the spelling it is given; a freed
 *   address is then available to another host;
 * - the store itself: create-if-absent races between two clients on IPv6 keys have one winner
 *   each, and get/list/delete return and take the RFC 5952 keys byte for byte.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { GATEWAY_REQUEST, IpamService, LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { RecordStore } from '../../src/driver/record-store';
import { keys } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { ConsulStore } from '../../src/store/consul';
import { EtcdStore } from '../../src/store/etcd';
import type { Store } from '../../src/store/store';
import { PluginError } from '../../src/util/errors';
import { consulSkipReason, startConsul, type ConsulServer } from '../helpers/consul';
import { RUN_PREFIX, startEtcd, type EtcdServer } from '../helpers/etcd';

interface Backend {
  name: string;
  skip: string | false;
  start(): Promise<void>;
  /** A new client under `prefix`, as another host would open. */
  open(prefix: string): Store;
  stop(): Promise<void>;
}

let etcd: EtcdServer | undefined;
let consul: ConsulServer | undefined;
const backends: Backend[] = [
  {
    name: 'etcd',
    skip: false,
    start: async () => {
      etcd = await startEtcd();
    },
    open: (prefix) => new EtcdStore({ endpoints: etcd!.endpoints, prefix, logger: silentLogger() }),
    stop: async () => etcd?.stop(),
  },
  {
    name: 'Consul',
    skip: consulSkipReason(),
    start: async () => {
      consul = await startConsul();
    },
    open: (prefix) => {
      const [host, port] = consul!.address.split(':') as [string, string];
      return new ConsulStore({ host, port: Number(port), prefix, logger: silentLogger() });
    },
    stop: async () => consul?.stop(),
  },
];

for (const backend of backends) {
  describe(`IPv6 IPAM on ${backend.name}`, { skip: backend.skip }, () => {
    const stores: Store[] = [];
    const freshPrefix = () => `${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
    /** `n` hosts sharing one fresh prefix, each with its own client. */
    const hostsOn = (n: number): { stores: Store[]; ipam: IpamService[] } => {
      const prefix = freshPrefix();
      const mine = Array.from({ length: n }, () => backend.open(prefix));
      stores.push(...mine);
      return { stores: mine, ipam: mine.map((s, i) => new IpamService(new RecordStore(s), `h${i + 1}`, silentLogger())) };
    };
    before(() => backend.start());
    after(async () => {
      for (const s of stores) await s.close();
      await backend.stop();
    });

    test('three hosts allocate from one IPv6 /64 and race for explicit addresses: never a duplicate', { timeout: 60_000 }, async () => {
      const { stores: clients, ipam: hosts } = hostsOn(3);
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
      const held = await clients[0]!.list(keys.addresses('fd00:e7::-64'));
      const heldIps = held.map((e) => keys.addressOf('fd00:e7::-64', e.key));
      assert.deepEqual(new Set(heldIps), new Set([...granted, 'fd00:e7::1']), 'one key per address handed out, in RFC 5952 form');
    });

    test('release: only the holder frees an IPv6 address, in any spelling; then another host gets it', { timeout: 60_000 }, async () => {
      const { stores: clients, ipam: [h1, h2] } = hostsOn(2) as { stores: Store[]; ipam: [IpamService, IpamService] };
      const pool = 'fd00:e8:0:1::/64';
      const { poolId } = await h1.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool, v6: true });
      await h2.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool, v6: true });
      const poolKey = 'fd00:e8:0:1::-64';
      const key = keys.address(poolKey, 'fd00:e8:0:1::a:0');
      assert.equal((await h1.requestAddress({ poolId, address: 'FD00:E8:0:1:0:0:A:0', options: {}, requestId: 'r1' })).address, 'fd00:e8:0:1::a:0/64');
      assert.ok(await clients[1]!.get(key), 'stored under the RFC 5952 key');
      // Another host's release of it changes nothing, nor does its request for it.
      await h2.releaseAddress(poolId, 'fd00:e8:0:1::a:0');
      assert.ok(await clients[0]!.get(key), "h2's release leaves h1's address");
      await assert.rejects(h2.requestAddress({ poolId, address: 'fd00:e8:0:1::a:0', options: {}, requestId: 'r2' }), /already in use/);
      // The holder's release, spelled otherwise, frees the one key.
      await h1.releaseAddress(poolId, 'fd00:e8:0:1:0:0:a:0');
      assert.equal(await clients[1]!.get(key), undefined, 'released');
      assert.equal((await h2.requestAddress({ poolId, address: 'fd00:e8:0:1::a:0', options: {}, requestId: 'r3' })).address, 'fd00:e8:0:1::a:0/64');
      assert.equal(JSON.parse((await clients[0]!.get(key))!.value).host, 'h2', 'now held by h2');
      // Dynamic addresses of h1 released one by one leave no key behind.
      const mine = await Promise.all(Array.from({ length: 5 }, (_, i) => h1.requestAddress({ poolId, options: {}, requestId: `d${i}` })));
      for (const m of mine) await h1.releaseAddress(poolId, m.address.split('/')[0]!);
      const left = (await clients[0]!.list(keys.addresses(poolKey))).map((e) => keys.addressOf(poolKey, e.key));
      assert.deepEqual(left.sort(), ['fd00:e8:0:1::a:0'], 'only h2 holds an address');
    });

    test('store: create-if-absent races on IPv6 keys have one winner each; get/list/delete keep RFC 5952 keys byte for byte', { timeout: 60_000 }, async () => {
      const prefix = freshPrefix();
      const [s1, s2] = [backend.open(prefix), backend.open(prefix)] as [Store, Store];
      stores.push(s1, s2);
      const ips = ['::', '::1', 'fd00::', 'fd00:e9::1:0:0:1', '2001:db8:0:1:1:1:1:1', 'fd00:e9:0:0:1::', 'fe80::ffff:a00:1'];
      const ks = [...ips.map((ip) => keys.address('fd00:e9::-64', ip)), ...Array.from({ length: 20 }, (_, i) => keys.address('fd00:e9::-64', `fd00:e9::${(i + 1).toString(16)}`))];
      const results = await Promise.all(ks.flatMap((k) => [s1.create(k, JSON.stringify({ by: 's1' })), s2.create(k, JSON.stringify({ by: 's2' }))]));
      for (let i = 0; i < ks.length; i++) {
        const [r1, r2] = [results[2 * i], results[2 * i + 1]];
        assert.equal([r1, r2].filter((r) => r !== undefined).length, 1, `exactly one create of ${ks[i]} wins`);
        const got = await s2.get(ks[i]!);
        assert.equal(got?.key, ks[i]);
        assert.equal(JSON.parse(got!.value).by, r1 !== undefined ? 's1' : 's2', `the value of ${ks[i]} is the winner's`);
      }
      const listed = await s1.list(keys.addresses('fd00:e9::-64'));
      assert.deepEqual(listed.map((e) => e.key).sort(), [...ks].sort(), 'list returns every key unchanged');
      assert.deepEqual(listed.map((e) => keys.addressOf('fd00:e9::-64', e.key)).filter((ip): ip is string => ip !== undefined && ips.includes(ip)).sort(), [...ips].sort());
      // A prefix ending in '::' lists only what is below it.
      assert.deepEqual((await s1.list(`${keys.addresses('fd00:e9::-64')}fd00:e9::1:`)).map((e) => e.key), [keys.address('fd00:e9::-64', 'fd00:e9::1:0:0:1')]);
      await s2.delete(ks[0]!);
      assert.equal(await s1.get(ks[0]!), undefined);
      assert.equal((await s1.list(keys.addresses('fd00:e9::-64'))).length, ks.length - 1);
    });
  });
}
