import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type net from 'node:net';
import { z } from 'zod';
import { silentLogger } from '../../src/log';
import { createNetworkRequest, createEndpointRequest, joinRequest, requestPoolRequest } from '../../src/protocol/schemas';
import { PLUGIN_CONTENT_TYPE, createApp, listenUnix, route } from '../../src/protocol/server';
import { PluginError } from '../../src/util/errors';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-proto-'));
const socketPath = path.join(dir, 'plugin.sock');
let server: net.Server;
const seen: unknown[] = [];

before(async () => {
  const app = createApp(
    {
      'Echo.Join': route(joinRequest, async (r) => {
        seen.push(r);
        return { ok: r.EndpointID };
      }),
      'Echo.Fail': route(z.unknown(), async () => {
        throw new PluginError('unknown network abc', 404);
      }),
      'Echo.Crash': route(z.unknown(), async () => {
        throw new TypeError('boom');
      }),
    },
    silentLogger(),
  );
  server = await listenUnix(app, socketPath);
});
after(async () => {
  await new Promise((r) => server.close(r));
  fs.rmSync(dir, { recursive: true, force: true });
});

function call(method: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: method, method: 'POST', headers }, (res) => {
      let data = '';
      res.on('data', (c) => (data += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body: JSON.parse(data) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const EP = 'a'.repeat(64);
const NET = 'b'.repeat(64);

test('body parsed as JSON without Content-Type, answered with the plugin content type', async () => {
  const r = await call('/Echo.Join', JSON.stringify({ NetworkID: NET, EndpointID: EP, SandboxKey: '/x', Options: null }), {
    Accept: 'application/vnd.docker.plugins.v1.2+json',
  });
  assert.equal(r.status, 200);
  assert.match(r.type, new RegExp(PLUGIN_CONTENT_TYPE.replace(/[.+]/g, '\\$&')));
  assert.deepEqual(r.body, { ok: EP });
});

test('socket is root-only', () => {
  assert.equal(fs.statSync(socketPath).mode & 0o777, 0o600);
});

test('malformed JSON, wrong types and bad ids give a clear Err and the server keeps serving', async () => {
  const bad = await call('/Echo.Join', '{"NetworkID": ');
  assert.equal(bad.status, 400);
  assert.match((bad.body as { Err: string }).Err, /not valid JSON/);
  const wrongType = await call('/Echo.Join', JSON.stringify({ NetworkID: 5, EndpointID: EP }));
  assert.match((wrongType.body as { Err: string }).Err, /invalid request: NetworkID: Expected string/);
  const badId = await call('/Echo.Join', JSON.stringify({ NetworkID: '../../etc', EndpointID: EP }));
  assert.match((badId.body as { Err: string }).Err, /NetworkID: must be 10-64 letters or digits/);
  const ok = await call('/Echo.Join', JSON.stringify({ NetworkID: NET, EndpointID: EP }));
  assert.equal(ok.status, 200);
});

test('handler errors map to status + Err; unexpected ones to 500', async () => {
  const fail = await call('/Echo.Fail', '{}');
  assert.deepEqual(fail, { status: 404, type: fail.type, body: { Err: 'unknown network abc' } });
  const crash = await call('/Echo.Crash', '{}');
  assert.equal(crash.status, 500);
  assert.deepEqual(crash.body, { Err: 'boom' });
});

test('unknown methods are 404 with Err; oversized bodies 413', async () => {
  const r = await call('/NetworkDriver.Nope', '{}');
  assert.equal(r.status, 404);
  assert.match((r.body as { Err: string }).Err, /unknown plugin method/);
  const proto = await call('/__proto__', '{}');
  assert.equal(proto.status, 404);
  const big = await call('/Echo.Join', JSON.stringify({ pad: 'x'.repeat(2 * 1024 * 1024) }));
  assert.equal(big.status, 413);
  assert.match((big.body as { Err: string }).Err, /larger than/);
});

test('a second server on a live socket is refused; a stale socket file is replaced', async () => {
  const app = createApp({}, silentLogger());
  await assert.rejects(listenUnix(app, socketPath), /already serving/);
  const stale = path.join(dir, 'stale.sock');
  fs.writeFileSync(stale, '');
  const s = await listenUnix(app, stale);
  await new Promise((r) => s.close(r));
});

test('schemas accept Docker shapes with nulls and refuse bad values', () => {
  const net = createNetworkRequest.parse({
    NetworkID: NET,
    Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': { vni: '300', 'com.docker.network.driver.mtu': 1400 } },
    IPv4Data: [{ AddressSpace: 'tsoverlay-local', Pool: '10.20.0.0/24', Gateway: '10.20.0.1/24', AuxAddresses: null }],
    IPv6Data: null,
  });
  assert.deepEqual(net.Options['com.docker.network.generic'], { vni: '300', 'com.docker.network.driver.mtu': '1400' });
  assert.deepEqual(net.IPv6Data, []);
  const ep = createEndpointRequest.parse({ NetworkID: NET, EndpointID: EP, Interface: { Address: '10.20.0.2/24', AddressIPv6: '', MacAddress: '' } });
  assert.equal(ep.Interface.Address, '10.20.0.2/24');
  assert.ok(!createEndpointRequest.safeParse({ NetworkID: NET, EndpointID: 'x;rm -rf' }).success);
  assert.ok(!requestPoolRequest.safeParse({ AddressSpace: 'x', V6: 'yes' }).success);
});
