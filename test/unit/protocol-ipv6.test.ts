/**
 * IPv6 through libnetwork's request shapes: RequestPool with V6, RequestAddress/ReleaseAddress on
 * an IPv6 pool, and random IPv6-looking input. Every answer is either a result or a PluginError
 * (Docker's {"Err"} with a 4xx/5xx status): never another exception, never a duplicate address.
 * The routes run over the real IPAM on the embedded store; TSO_SEED replays a run.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { IpamService } from '../../src/driver/ipam';
import type { NetworkDriver } from '../../src/driver/network-driver';
import { RecordStore } from '../../src/driver/record-store';
import type { Recovery } from '../../src/driver/recovery';
import { silentLogger } from '../../src/log';
import { pluginRoutes } from '../../src/protocol/routes';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';
import { PluginError } from '../../src/util/errors';
import { prng, seedFromEnv } from '../helpers/resilience';

const stores: Store[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function routesOverIpam() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-proto6-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(store);
  const ipam = new IpamService(new RecordStore(store), 'h1', silentLogger());
  // ReleaseAddress asks recovery first; these tests have no endpoints for it to find.
  const recovery = { deleteEndpointsLostWithAddress: async () => undefined } as unknown as Recovery;
  const routes = pluginRoutes({ network: {} as NetworkDriver, ipam, recovery, scope: 'local', logger: silentLogger() });
  return (method: string, body: unknown) => {
    const r = routes[method];
    assert.ok(r, method);
    return r.run(body);
  };
}

test('RequestPool V6, RequestAddress and ReleaseAddress on an IPv6 pool, in Docker request shapes', async () => {
  const call = await routesOverIpam();
  const pool = (await call('IpamDriver.RequestPool', { AddressSpace: 'tsoverlay-local', Pool: 'fd00:33::/64', SubPool: '', Options: {}, V6: true })) as {
    PoolID: string;
    Pool: string;
  };
  assert.deepEqual(pool, { PoolID: 'fd00:33::/64', Pool: 'fd00:33::/64', Data: {} });
  const gw = await call('IpamDriver.RequestAddress', { PoolID: pool.PoolID, Address: '', Options: { RequestAddressType: 'com.docker.network.gateway' } });
  assert.deepEqual(gw, { Address: 'fd00:33::1/64', Data: {} });
  const explicit = await call('IpamDriver.RequestAddress', { PoolID: pool.PoolID, Address: 'fd00:33:0::00ff', Options: null });
  assert.deepEqual(explicit, { Address: 'fd00:33::ff/64', Data: {} });
  assert.deepEqual(await call('IpamDriver.ReleaseAddress', { PoolID: pool.PoolID, Address: 'fd00:33::ff' }), {});
  await assert.rejects(
    call('IpamDriver.RequestPool', { AddressSpace: 'tsoverlay-local', Pool: 'fe80::/64', Options: {}, V6: true }),
    (e: unknown) => e instanceof PluginError && e.status === 400 && /link-local/.test(e.message),
  );
  await assert.rejects(
    call('IpamDriver.RequestPool', { AddressSpace: 'tsoverlay-local', Pool: 'fd00::/64', Options: {}, V6: 'yes' }),
    (e: unknown) => e instanceof PluginError && /invalid request/.test(e.message),
  );
});

test('random IPv6-looking pools and addresses: a result or a PluginError, never another error, never a duplicate', async () => {
  const seed = seedFromEnv();
  const r = prng(seed);
  const call = await routesOverIpam();
  const hex = () => Math.floor(r() * 0x10000).toString(16);
  const pieces = [':', '::', ':::', '/', '%eth0', '.', 'g', '1.2.3.4', 'ffff', '0', '/64', '/120', '/121', '/47', '/0', '/999', '-'];
  const junk = () => Array.from({ length: 1 + Math.floor(r() * 8) }, () => (r() < 0.5 ? hex() : pieces[Math.floor(r() * pieces.length)])).join('');
  const granted = new Set<string>();
  let ok = 0;
  const pools: string[] = [];
  const { PoolID } = (await call('IpamDriver.RequestPool', { AddressSpace: 'tsoverlay-local', Pool: 'fd00:44::/120', Options: {}, V6: true })) as { PoolID: string };
  pools.push(PoolID);
  for (let i = 0; i < 400; i++) {
    const kind = r();
    let body: unknown;
    let method: string;
    if (kind < 0.3) {
      method = 'IpamDriver.RequestPool';
      body = { AddressSpace: 'tsoverlay-local', Pool: r() < 0.5 ? `fd00:${hex()}::${junk()}` : junk(), SubPool: r() < 0.2 ? junk() : '', Options: {}, V6: r() < 0.8 };
    } else if (kind < 0.8) {
      method = 'IpamDriver.RequestAddress';
      const address = r() < 0.4 ? '' : r() < 0.5 ? `fd00:44::${Math.floor(r() * 300).toString(16)}` : junk();
      body = { PoolID: r() < 0.8 ? pools[Math.floor(r() * pools.length)] : junk() || 'x', Address: address, Options: {} };
    } else {
      method = 'IpamDriver.ReleaseAddress';
      body = { PoolID: pools[0], Address: r() < 0.5 ? [...granted][Math.floor(r() * granted.size)] ?? junk() : junk() || 'x' };
    }
    try {
      const out = (await call(method, body)) as { PoolID?: string; Address?: string };
      ok++;
      if (out.PoolID && !pools.includes(out.PoolID)) pools.push(out.PoolID);
      if (method === 'IpamDriver.RequestAddress' && out.Address) {
        // No request id nor container name here: a held address is never handed out again.
        assert.ok(!granted.has(out.Address), `seed ${seed}: ${out.Address} granted twice`);
        granted.add(out.Address);
      }
      if (method === 'IpamDriver.ReleaseAddress') granted.delete(String((body as { Address: string }).Address));
    } catch (err) {
      assert.ok(err instanceof PluginError, `seed ${seed}: ${method} ${JSON.stringify(body)} threw ${String(err)}`);
      assert.ok(err.status >= 400 && err.status < 600);
      assert.ok(err.message.length < 600, 'errors stay short');
    }
  }
  assert.ok(ok > 20, `seed ${seed}: some requests succeed (${ok})`);
  for (const a of granted) assert.match(a, /^(fd00:|[0-9a-f:]+\/\d+$)/, a);
});
