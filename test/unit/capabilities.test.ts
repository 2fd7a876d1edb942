/**
 * What tsoverlay tells Docker about itself, and the calls newer engines make that depend on it:
 * GwAllocChecker stays off (the gateway address lives on br0 in every overlay namespace, so
 * Docker must keep reserving it), GwAllocCheck still answers "keep both gateways" if an engine
 * asks anyway, and Program/RevokeExternalConnectivity succeed for any endpoint, with the option
 * shapes Docker 28 and 29 send.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { silentLogger } from '../../src/log';
import { pluginRoutes } from '../../src/protocol/routes';
import type { IpamService } from '../../src/driver/ipam';
import type { NetworkDriver } from '../../src/driver/network-driver';
import type { Recovery } from '../../src/driver/recovery';

// These routes never reach the driver or IPAM: a call into either would throw here.
const unreachable = new Proxy({}, {
  get(_t, prop) {
    throw new Error(`route touched the driver (${String(prop)})`);
  },
});
const routes = pluginRoutes({
  network: unreachable as NetworkDriver,
  ipam: unreachable as IpamService,
  recovery: unreachable as Recovery,
  scope: 'global',
  logger: silentLogger(),
});

function call(method: string, body: unknown): Promise<unknown> {
  const r = routes[method];
  assert.ok(r, `no route ${method}`);
  return r.run(body);
}

test('GetCapabilities: global scope, GwAllocChecker false', async () => {
  assert.deepEqual(await call('NetworkDriver.GetCapabilities', {}), {
    Scope: 'global',
    ConnectivityScope: 'global',
    GwAllocChecker: false,
  });
});

test('GwAllocCheck, if sent anyway, keeps both gateway addresses', async () => {
  const options = { 'com.docker.network.generic': { vni: '300' }, 'com.docker.network.enable_ipv4': true };
  assert.deepEqual(await call('NetworkDriver.GwAllocCheck', { Options: options }), { SkipIPv4: false, SkipIPv6: false });
  assert.deepEqual(await call('NetworkDriver.GwAllocCheck', {}), { SkipIPv4: false, SkipIPv6: false });
});

test('ProgramExternalConnectivity / RevokeExternalConnectivity succeed for any endpoint', async () => {
  const ids = { NetworkID: 'a'.repeat(64), EndpointID: 'b'.repeat(64) };
  // Docker 29 adds NoProxy6To4 (a boolean) when another endpoint is the IPv6 gateway.
  const options = { 'com.docker.network.portmap': [], 'com.docker.network.endpoint.exposedports': null, NoProxy6To4: true };
  assert.deepEqual(await call('NetworkDriver.ProgramExternalConnectivity', { ...ids, Options: options }), {});
  assert.deepEqual(await call('NetworkDriver.ProgramExternalConnectivity', { ...ids, Options: null }), {});
  assert.deepEqual(await call('NetworkDriver.RevokeExternalConnectivity', ids), {});
  await assert.rejects(call('NetworkDriver.RevokeExternalConnectivity', { NetworkID: 'x' }), /invalid request/);
});
