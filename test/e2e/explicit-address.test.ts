/**
 * Issue 15, item 1: two containers on one host never get the same explicit address.
 *
 * On a real dockerd (20.10 from Debian, the harness's default) with tsoverlay as network and
 * IPAM driver: `docker run --ip X` while another container on the same host holds X must fail
 * with a message naming the holder; the first container keeps its address and stays reachable;
 * the address stays held (a third run asking for it fails too, and neither Docker's clean-up of
 * the failed runs nor a stray ReleaseAddress frees it); a request id forged in the request's
 * options claims nothing; once the holder is removed, the address is free again. And Docker's own
 * replay of the holder's address when dockerd restarts (live-restore keeps the container) is
 * accepted, while a second container asking right after it is still refused.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startPlugin, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter } from '../helpers/proc';
import { readLocalStoreSnapshot } from '../../src/store/local';

const skip = e2eSkipReason();
cleanupAfter();

const NET = 'ipnet';
const SUBNET = '10.125.0.0/24';
const IP = '10.125.0.200';
const RECORD = 'tsoverlay/v1/ipam/addresses/10.125.0.0-24/10.125.0.200';

let cluster: Cluster;
let host: DockerHost;
let plugin: PluginProcess;

interface AddressRecord {
  host: string;
  kind: string;
  request?: string;
}

async function addressRecord(key = RECORD): Promise<AddressRecord | undefined> {
  const entries = await readLocalStoreSnapshot(`${host.dir}/tsoverlay-state`, '');
  const found = entries.find((e) => e.key === key);
  return found ? (JSON.parse(found.value) as AddressRecord) : undefined;
}

async function docker(args: string[]): Promise<{ code: number; out: string }> {
  const r = await host.cli(args, { allowFailure: true, timeoutMs: 90_000 });
  return { code: r.code ?? -1, out: `${r.stdout}${r.stderr}` };
}

async function ipOf(name: string, net = NET): Promise<string> {
  const r = await docker(['inspect', '--format', `{{(index .NetworkSettings.Networks "${net}").IPAddress}}`, name]);
  assert.equal(r.code, 0, r.out);
  return r.out.trim();
}

before(async () => {
  if (skip) return;
  // live-restore: containers outlive a dockerd restart, so Docker replays their addresses at start.
  cluster = await startCluster({ hosts: 1, docker: { extraArgs: ['--live-restore'] } });
  host = cluster.hosts[0]!;
  plugin = await startPlugin(host);
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
});

test('docker run --ip of an address another container on the host holds fails, and the holder keeps it', { skip, timeout: 240_000 }, async (t) => {
  const created = await docker(['network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--subnet', SUBNET, NET]);
  assert.equal(created.code, 0, created.out);
  const first = await docker(['run', '-d', '--name', 'first', '--net', NET, '--ip', IP, cluster.image, 'sleep', '3600']);
  assert.equal(first.code, 0, first.out);
  assert.equal(await ipOf('first'), IP);
  const held = await addressRecord();
  assert.ok(held?.request, `the address record names the request that allocated it: ${JSON.stringify(held)}`);

  const second = await docker(['run', '-d', '--name', 'second', '--net', NET, '--ip', IP, cluster.image, 'sleep', '3600']);
  t.diagnostic(`second docker run: exit ${second.code}: ${second.out.trim()}`);
  assert.notEqual(second.code, 0, 'the second docker run must fail');
  assert.match(second.out, new RegExp(`address ${IP.replace(/\./g, '\\.')} is already in use in 10\\.125\\.0\\.0/24: held by .*on host ${host.name}`));
  const secondState = await docker(['inspect', '--format', '{{.State.Running}}', 'second']);
  assert.equal(secondState.out.trim(), 'false', 'the second container is not running');

  // The holder keeps its address, answers from it with its own MAC, and the record is unchanged.
  assert.equal(await ipOf('first'), IP);
  const ping = await docker(['run', '--rm', '--net', NET, cluster.image, 'sh', '-c', `ping -c 3 -W 2 ${IP}; ip neigh show ${IP}`]);
  assert.equal(ping.code, 0, ping.out);
  assert.match(ping.out, /3 packets received/);
  assert.match(ping.out, /lladdr 02:42:0a:7d:00:c8/, 'the MAC of the first container (derived from its address)');
  assert.deepEqual(await addressRecord(), held, 'still held by the first request after the failed run');

  // Removing the failed container (Docker's clean-up of it) frees nothing; a third run fails too.
  const rm = await docker(['rm', '-f', 'second']);
  assert.equal(rm.code, 0, rm.out);
  assert.deepEqual(await addressRecord(), held);
  const third = await docker(['run', '-d', '--name', 'third', '--net', NET, '--ip', IP, cluster.image, 'sleep', '3600']);
  assert.notEqual(third.code, 0, 'a third docker run asking for the address must fail too');
  assert.match(third.out, /is already in use/);
  await docker(['rm', '-f', 'third']);

  // Straight through the plugin socket: a forged request id claims nothing, a stray release frees nothing.
  const forged = await plugin.call(
    '/IpamDriver.RequestAddress',
    JSON.stringify({ PoolID: SUBNET, Address: IP, Options: { 'tsoverlay.request-id': held.request } }),
  );
  assert.equal(forged.status, 409, JSON.stringify(forged.body));
  assert.match((forged.body as { Err: string }).Err, /already in use/);
  const stray = await plugin.call('/IpamDriver.ReleaseAddress', JSON.stringify({ PoolID: SUBNET, Address: `${IP}/24` }));
  assert.equal(stray.status, 200, JSON.stringify(stray.body));
  assert.deepEqual(await addressRecord(), held, 'a release while the holder runs keeps the address');
  const again = await docker(['run', '--rm', '--net', NET, cluster.image, 'ping', '-c', '1', '-W', '2', IP]);
  assert.equal(again.code, 0, again.out);

  // The holder goes: Docker's own release frees the address, and a new container can have it.
  assert.equal((await docker(['rm', '-f', 'first'])).code, 0);
  assert.equal(await addressRecord(), undefined, 'released with its holder');
  const fourth = await docker(['run', '-d', '--name', 'fourth', '--net', NET, '--ip', IP, cluster.image, 'sleep', '3600']);
  assert.equal(fourth.code, 0, fourth.out);
  assert.equal(await ipOf('fourth'), IP);
  assert.equal((await docker(['rm', '-f', 'fourth'])).code, 0);
  assert.equal((await docker(['network', 'rm', NET])).code, 0);
  assert.ok(plugin.process.running());
});

test("Docker's start-up replay of a held --ip is accepted; a container asking for it right after is not", { skip, timeout: 240_000 }, async (t) => {
  const net = 'replaynet';
  const ip = '10.126.0.200';
  const key = 'tsoverlay/v1/ipam/addresses/10.126.0.0-24/10.126.0.200';
  assert.equal((await docker(['network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--subnet', '10.126.0.0/24', net])).code, 0);
  const keeper = await docker(['run', '-d', '--name', 'keeper', '--net', net, '--ip', ip, cluster.image, 'sleep', '3600']);
  assert.equal(keeper.code, 0, keeper.out);
  const held = await addressRecord(key);
  assert.ok(held?.request);
  const logBefore = plugin.process.output().length;

  // dockerd dies and starts again; the container keeps running and Docker replays its address.
  await host.restartDaemon({ kill: true });
  const pluginLog = plugin.process.output().slice(logBefore);
  const replayed = pluginLog.split('\n').filter((l) => l.includes("Docker's start-up replay"));
  t.diagnostic(`plugin lines for the replay: ${replayed.length}`);
  assert.ok(replayed.some((l) => l.includes(ip)), `Docker replayed ${ip} and the plugin took it as the replay:\n${pluginLog.slice(-3000)}`);
  assert.doesNotMatch(host.logs(200_000), /Failed to reserve current address for endpoint "keeper/, 'Docker logged no failed replay');
  assert.equal((await docker(['inspect', '--format', '{{.State.Running}}', 'keeper'])).out.trim(), 'true');
  assert.equal(await ipOf('keeper', net), ip);
  assert.deepEqual(await addressRecord(key), held, 'the record still names the original request');

  // Right after the restart, a second container asking for the address is refused.
  const intruder = await docker(['run', '-d', '--name', 'intruder', '--net', net, '--ip', ip, cluster.image, 'sleep', '3600']);
  assert.notEqual(intruder.code, 0, 'a second container must not get the address after the replay');
  assert.match(intruder.out, /is already in use in 10\.126\.0\.0\/24: held by .*on host/);
  const ping = await docker(['run', '--rm', '--net', net, cluster.image, 'ping', '-c', '2', '-W', '2', ip]);
  assert.equal(ping.code, 0, ping.out);
  await docker(['rm', '-f', 'intruder', 'keeper']);
  assert.equal(await addressRecord(key), undefined);
  assert.equal((await docker(['network', 'rm', net])).code, 0);
});
