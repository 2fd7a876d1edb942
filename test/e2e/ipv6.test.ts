/**
 * Issue 18: IPv6 container networks end to end, two hosts on a shared etcd, tsoverlay as network
 * and IPAM driver.
 * - dual-stack (`--ipv6 --subnet 10.x/24 --subnet fd00:x::/64`, with an IPv6 `--ip-range` and
 *   `--gateway`): every container gets both
 *   addresses from the cluster-wide IPAM, reaches a container on the other host over both, and
 *   the other host's vxlan0 holds the remote container's IPv4 and IPv6 neighbours PERMANENT
 *   before any traffic; explicit `--ip6` is honoured and refused when held on another host.
 * - IPv6-only (`--ipv4=false`, Docker 28 only: 20.10 has no such network): the same without
 *   IPv4, with the MAC rule for containers without an IPv4 address.
 * CI runs this file on 20.10 (test/e2e/docker28/ipv6.test.ts runs it on 28).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { currentEngine, e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { startPlugin } from '../helpers/plugin';
import { cleanupAfter, waitFor } from '../helpers/proc';
import { etcdDump, inOverlay } from '../helpers/resilience';

const skip = e2eSkipReason(['/usr/bin/etcd']);
const ipv6OnlySkip = currentEngine().name === '28' ? false : 'IPv6-only networks (--ipv4=false) need Docker 28';
cleanupAfter();

let cluster: Cluster;
let etcd: EtcdServer;
let a: DockerHost;
let b: DockerHost;

async function docker(host: DockerHost, args: string[]): Promise<{ code: number; out: string }> {
  const r = await host.cli(args, { allowFailure: true, timeoutMs: 90_000 });
  return { code: r.code ?? -1, out: `${r.stdout}${r.stderr}` };
}

async function ok(host: DockerHost, args: string[]): Promise<string> {
  const r = await docker(host, args);
  assert.equal(r.code, 0, `docker ${args.join(' ')} on ${host.name}: ${r.out}`);
  return r.out.trim();
}

async function addresses(host: DockerHost, name: string, net: string): Promise<{ ip: string; ip6: string; mac: string; id: string }> {
  const f = `{{with index .NetworkSettings.Networks "${net}"}}{{.IPAddress}}|{{.GlobalIPv6Address}}|{{.MacAddress}}|{{.NetworkID}}{{end}}`;
  const [ip = '', ip6 = '', mac = '', id = ''] = (await ok(host, ['inspect', '--format', f, name])).split('|');
  return { ip, ip6, mac, id };
}

const esc = (s: string) => s.replace(/[.:]/g, (c) => `\\${c}`);

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 2 });
  [a, b] = cluster.hosts as [DockerHost, DockerHost];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  const store = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  for (const host of [a, b]) await startPlugin(host, { store });
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
});

test('dual-stack: both addresses from the cluster IPAM, PERMANENT neighbours of both families before traffic, ping and ping6 across hosts', { skip, timeout: 180_000 }, async (t) => {
  const net = 'dual6';
  for (const host of [a, b]) {
    await ok(host, [
      'network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--ipv6',
      '--subnet', '10.128.0.0/24', '--subnet', 'fd00:128::/64', '--ip-range', 'fd00:128::100/120', '--gateway', 'fd00:128::fe', net,
    ]);
  }
  await ok(a, ['run', '-d', '--name', 'a1', '--net', net, cluster.image, 'sleep', '3600']);
  await ok(a, ['run', '-d', '--name', 'a2', '--net', net, '--ip6', 'fd00:128::a2', cluster.image, 'sleep', '3600']);
  await ok(b, ['run', '-d', '--name', 'b1', '--net', net, cluster.image, 'sleep', '3600']);
  const a1 = await addresses(a, 'a1', net);
  const a2 = await addresses(a, 'a2', net);
  const b1 = await addresses(b, 'b1', net);
  t.diagnostic(`a1 ${JSON.stringify(a1)} a2 ${JSON.stringify(a2)} b1 ${JSON.stringify(b1)}`);
  assert.equal(a2.ip6, 'fd00:128::a2', 'explicit --ip6');
  const all = [a1, a2, b1];
  assert.equal(new Set(all.map((x) => x.ip)).size, 3, 'distinct IPv4 addresses across hosts');
  assert.equal(new Set(all.map((x) => x.ip6)).size, 3, 'distinct IPv6 addresses across hosts');
  for (const x of all) {
    assert.match(x.ip, /^10\.128\.0\./);
    assert.match(x.ip6, /^fd00:128::/);
  }
  for (const x of [a1, b1]) assert.match(x.ip6, /^fd00:128::1[0-9a-f]{2}$/, '--ip-range: dynamic IPv6 addresses from fd00:128::100/120');
  // An address held on one host is refused on the other.
  const taken = await docker(b, ['run', '-d', '--name', 'b2', '--net', net, '--ip6', 'fd00:128::a2', cluster.image, 'sleep', '3600']);
  assert.notEqual(taken.code, 0, 'a second holder of fd00:128::a2');
  assert.match(taken.out, /fd00:128::a2 is already in use/);
  await docker(b, ['rm', '-f', 'b2']);

  // Before any traffic: B's vxlan0 holds a1's neighbours of both families, PERMANENT, one MAC.
  const v6neigh = new RegExp(`${esc(a1.ip6)} lladdr ${a1.mac} PERMANENT`);
  await waitFor(async () => v6neigh.test(await inOverlay(b, b1.id, 'ip -6 neigh show dev vxlan0')), { timeoutMs: 10_000, what: "a1's IPv6 neighbour on B" });
  assert.match(await inOverlay(b, b1.id, 'ip -4 neigh show dev vxlan0'), new RegExp(`${esc(a1.ip)} lladdr ${a1.mac} PERMANENT`));
  assert.match(await inOverlay(b, b1.id, 'bridge fdb show dev vxlan0'), new RegExp(`${a1.mac} dst ${esc(a.underlay!.address)}`));
  assert.match(await inOverlay(b, b1.id, 'ip -6 addr show dev br0'), /fd00:128::fe\/64/, "the chosen IPv6 gateway (--gateway) on B's br0");

  const ping6 = await docker(b, ['exec', 'b1', 'ping', '-6', '-c', '3', '-W', '2', a1.ip6]);
  assert.equal(ping6.code, 0, ping6.out);
  assert.match(ping6.out, /3 packets received/);
  const ping4 = await docker(b, ['exec', 'b1', 'ping', '-c', '2', '-W', '2', a2.ip]);
  assert.equal(ping4.code, 0, ping4.out);
  const back = await docker(a, ['exec', 'a2', 'ping', '-6', '-c', '2', '-W', '2', b1.ip6]);
  assert.equal(back.code, 0, back.out);

  // The store holds one address record per IPv6 address, under the RFC 5952 key.
  const store = await etcdDump(etcd);
  for (const x of all) assert.ok(store.has(`ipam/addresses/fd00:128::-64/${x.ip6}`), `address record of ${x.ip6}`);

  for (const [host, names] of [[a, ['a1', 'a2']], [b, ['b1']]] as const) await ok(host, ['rm', '-f', ...names]);
  await waitFor(async () => !/fd00:128::/.test(await inOverlay(b, b1.id, 'ip -6 neigh show dev vxlan0')), { timeoutMs: 10_000, what: 'IPv6 neighbours withdrawn' }).catch(() => undefined);
  for (const host of [a, b]) await ok(host, ['network', 'rm', net]);
  const left = [...(await etcdDump(etcd)).keys()].filter((k) => k.includes('fd00:128'));
  assert.deepEqual(left, [], 'no IPv6 pool, address or MAC record left');
});

test('IPv6-only (--ipv4=false): no IPv4 at all, MACs from the IPv6 rule, PERMANENT neighbours, ping6 across hosts', { skip: skip || ipv6OnlySkip, timeout: 180_000 }, async (t) => {
  const net = 'only6';
  for (const host of [a, b]) {
    await ok(host, ['network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--ipv4=false', '--ipv6', '--subnet', 'fd00:129::/64', net]);
  }
  await ok(a, ['run', '-d', '--name', 'o1', '--net', net, cluster.image, 'sleep', '3600']);
  await ok(b, ['run', '-d', '--name', 'o2', '--net', net, cluster.image, 'sleep', '3600']);
  const o1 = await addresses(a, 'o1', net);
  const o2 = await addresses(b, 'o2', net);
  t.diagnostic(`o1 ${JSON.stringify(o1)} o2 ${JSON.stringify(o2)}`);
  assert.equal(o1.ip, '', 'no IPv4 address');
  assert.match(o1.ip6, /^fd00:129::/);
  assert.notEqual(o1.ip6, o2.ip6);
  // A /64 is shorter than /96: the MAC is allocated cluster-wide (06:42:…), not derived.
  assert.match(o1.mac, /^06:42:/);
  assert.notEqual(o1.mac, o2.mac);
  const store = await etcdDump(etcd);
  assert.ok(store.has(`ipam/macs/fd00:129::-64/${o1.mac}`), 'the MAC record');
  const neigh = new RegExp(`${esc(o1.ip6)} lladdr ${o1.mac} PERMANENT`);
  await waitFor(async () => neigh.test(await inOverlay(b, o2.id, 'ip -6 neigh show dev vxlan0')), { timeoutMs: 10_000, what: "o1's neighbour on B" });
  assert.equal((await inOverlay(b, o2.id, 'ip -4 neigh show dev vxlan0')).trim(), '', 'no IPv4 neighbour');
  const ping6 = await docker(b, ['exec', 'o2', 'ping', '-6', '-c', '3', '-W', '2', o1.ip6]);
  assert.equal(ping6.code, 0, ping6.out);
  assert.match(ping6.out, /3 packets received/);
  await ok(a, ['rm', '-f', 'o1']);
  await ok(b, ['rm', '-f', 'o2']);
  assert.equal((await etcdDump(etcd)).has(`ipam/macs/fd00:129::-64/${o1.mac}`), false, 'the MAC is released with its container');
  for (const host of [a, b]) await ok(host, ['network', 'rm', net]);
});
