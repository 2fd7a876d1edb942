/**
 * Settings of the managed plugin: config.json's env entries are the daemon's TSOVERLAY_*
 * variables without the prefix, read only when TSOVERLAY_MANAGED=1; etcd TLS options.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { MANAGED_PLUGIN_ENV, OPTIONS, parseConfig, pluginSettingName } from '../../src/config';

const configJson = path.resolve(__dirname, '../../../config.json');

test('short names are read inside the managed plugin only; TSOVERLAY_* and flags win', () => {
  const env = { STORE: 'etcd://10.0.0.5:2379', SCOPE: 'global', HOST_NAME: 'h7', VTEP: '', LEASE_TTL: '5' };
  const plain = parseConfig([], env);
  assert.equal(plain.store, 'local:///var/lib/tsoverlay');
  assert.equal(plain.scope, 'local');

  const managed = parseConfig([], { ...env, [MANAGED_PLUGIN_ENV]: '1' });
  assert.equal(managed.store, 'etcd://10.0.0.5:2379');
  assert.equal(managed.scope, 'global');
  assert.equal(managed.hostName, 'h7');
  assert.equal(managed.leaseTtlSeconds, 5);
  assert.equal(managed.vtep, undefined, 'an empty setting means unset');

  const both = parseConfig(['--scope', 'local'], { ...env, [MANAGED_PLUGIN_ENV]: '1', TSOVERLAY_STORE: 'consul://c:8500' });
  assert.equal(both.store, 'consul://c:8500');
  assert.equal(both.scope, 'local');
});

test('config.json offers every option as a setting, and nothing unknown', () => {
  const config = JSON.parse(fs.readFileSync(configJson, 'utf8')) as {
    interface: { types: string[]; socket: string };
    env: { name: string; value: string; settable?: string[] }[];
  };
  assert.deepEqual(config.interface.types.sort(), ['docker.ipamdriver/1.0', 'docker.networkdriver/1.0']);
  assert.equal(config.interface.socket, 'tsoverlay.sock');
  const names = new Set(config.env.map((e) => e.name));
  const fixed = new Set(['TSOVERLAY_MANAGED', 'TSOVERLAY_SOCKET', 'TSOVERLAY_NETNS_DIR']);
  // Meaningless inside the plugin: Docker owns the socket's directory.
  const notOffered = new Set(['TSOVERLAY_SOCKET_GROUP']);
  for (const spec of Object.values(OPTIONS)) {
    if (fixed.has(spec.env) || notOffered.has(spec.env)) continue;
    assert.ok(names.has(pluginSettingName(spec.env)), `config.json lacks the setting ${pluginSettingName(spec.env)}`);
  }
  const known = new Set([...Object.values(OPTIONS).map((o) => pluginSettingName(o.env)), ...fixed, 'CONSUL_HTTP_ADDR', 'CONSUL_HTTP_TOKEN', 'CONSUL_HTTP_TOKEN_FILE', 'CONSUL_HTTP_SSL']);
  for (const e of config.env) assert.ok(known.has(e.name), `config.json sets ${e.name}, which the daemon does not read`);
  // The defaults in config.json make a valid configuration.
  const env = Object.fromEntries(config.env.map((e) => [e.name, e.value]));
  const parsed = parseConfig([], env);
  assert.equal(parsed.socket, '/run/docker/plugins/tsoverlay.sock');
  assert.equal(parsed.netnsDir, '/host/run/tsoverlay/netns');
  assert.equal(parsed.store, 'local:///var/lib/tsoverlay');
});

test('etcd TLS settings: PEM text or paths; certificate and key go together', () => {
  const pem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----';
  const c = parseConfig([], { [MANAGED_PLUGIN_ENV]: '1', ETCD_CA: pem });
  assert.deepEqual(c.etcdTls, { ca: pem });
  assert.deepEqual(parseConfig(['--etcd-cert', '/a.pem', '--etcd-key', '/a.key'], {}).etcdTls, { cert: '/a.pem', key: '/a.key' });
  assert.throws(() => parseConfig(['--etcd-cert', '/a.pem'], {}), /go together/);
  assert.equal(parseConfig([], {}).etcdTls, undefined);
});

test('--vtep takes an IPv4 or a routable IPv6 address', () => {
  assert.equal(parseConfig(['--vtep', 'fd00:79::1'], {}).vtep, 'fd00:79::1');
  assert.equal(parseConfig(['--vtep', '10.0.0.1'], {}).vtep, '10.0.0.1');
  for (const bad of ['fe80::1', 'ff02::1', '::1', '::', 'fd00::1%eth0', 'host']) {
    assert.throws(() => parseConfig(['--vtep', bad], {}), /invalid --vtep/, bad);
  }
});
