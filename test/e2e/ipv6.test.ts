/**
 * Issue 18: IPv6 container networks end to end, three hosts on a shared etcd, tsoverlay as
 * network and IPAM driver.
 * - dual-stack (`--ipv6 --subnet 10.x/24 --subnet fd00:x::/64`, with an IPv6 `--ip-range` and
 *   `--gateway`): every container gets both addresses from the cluster-wide IPAM, reaches the
 *   containers on both other hosts over both families, and every host's vxlan0 holds each
 *   remote container's IPv4 and IPv6 neighbours PERMANENT and one FDB entry `dst <its host>`
 *   before any traffic; explicit `--ip6` is honoured and refused when held on another host.
 * - plugin restart (SIGKILL + start, as test/e2e/resilience-crash does) on one host: its IPv6
 *   entries stay in the kernel while the daemon is gone, a continuous ping6 through that host
 *   loses nothing, changes made elsewhere meanwhile are reconciled, and no entry is doubled.
 * - IPv6-only (`--ipv4=false`, Docker 28 only: 20.10 has no such network): the same without
 *   IPv4, with the MAC rule for containers without an IPv4 address.
 * - host death (a power loss, `DockerHost.crash()`): the dead host's IPv6 neighbours and FDB
 *   entries are removed on the other hosts within the lease TTL + 5 s (docs/reliability.md §4,
 *   §16), and its addresses stay allocated, as IPv4 ones do, while it may come back.
 * CI runs this file on 20.10 (test/e2e/docker28/ipv6.test.ts runs it on 28).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { currentEngine, e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { startPlugin, type PluginOptions, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter, waitFor } from '../helpers/proc';
import { etcdDump, inOverlay, killPlugin, sameSet, startPingMonitor } from '../helpers/resilience';

const skip = e2eSkipReason(['/usr/bin/etcd']);
const ipv6OnlySkip = currentEngine().name === '28' ? false : 'IPv6-only networks (--ipv4=false) need Docker 28';
cleanupAfter();

/** Short, so that the host-death case waits little (the bound is the lease TTL + 5 s). */
const LEASE_TTL = 5;
/**
 * B's, whose daemon the restart case kills: a daemon down for longer than its lease is withdrawn
 * by design once its probe goes unanswered (docs/reliability.md, liveness probes), and on a
 * loaded machine B's kill, the changes made meanwhile and its start took 5 s, so with a 5 s lease
 * C once dropped B's container for a second. The case is about B's own tables, not its lease.
 */
const RESTARTED_LEASE_TTL = 30;
const DUAL = 'dual6';
const DUAL_POOL6 = 'fd00:128::-64';

let cluster: Cluster;
let etcd: EtcdServer;
let a: DockerHost;
let b: DockerHost;
let c: DockerHost;
/** The plugin's options on a host (B's lease outlives its restart). */
const pluginOptions = (host: DockerHost): PluginOptions => ({
  store: storeUrl,
  extraArgs: ['--lease-ttl', String(host === b ? RESTARTED_LEASE_TTL : LEASE_TTL)],
});
let storeUrl = '';
const plugins = new Map<string, PluginProcess>();

interface Attached {
  ip: string;
  ip6: string;
  mac: string;
  /** Docker's id of the network on the container's host (each engine has its own). */
  id: string;
}
/** The dual-stack network's containers, by name, with the host they run on. */
const dual = new Map<string, Attached & { host: DockerHost }>();

async function docker(host: DockerHost, args: string[]): Promise<{ code: number; out: string }> {
  const r = await host.cli(args, { allowFailure: true, timeoutMs: 90_000 });
  return { code: r.code ?? -1, out: `${r.stdout}${r.stderr}` };
}

async function ok(host: DockerHost, args: string[]): Promise<string> {
  const r = await docker(host, args);
  assert.equal(r.code, 0, `docker ${args.join(' ')} on ${host.name}: ${r.out}`);
  return r.out.trim();
}

async function addresses(host: DockerHost, name: string, net: string): Promise<Attached> {
  const f = `{{with index .NetworkSettings.Networks "${net}"}}{{.IPAddress}}|{{.GlobalIPv6Address}}|{{.MacAddress}}|{{.NetworkID}}{{end}}`;
  const [ip = '', ip6 = '', mac = '', id = ''] = (await ok(host, ['inspect', '--format', f, name])).split('|');
  return { ip, ip6, mac, id };
}

/** Starts a container on the dual-stack network and records its addresses. */
async function runDual(host: DockerHost, name: string, extra: string[] = []): Promise<Attached> {
  await ok(host, ['run', '-d', '--name', name, '--net', DUAL, ...extra, cluster.image, 'sleep', '3600']);
  const x = await addresses(host, name, DUAL);
  dual.set(name, { ...x, host });
  return x;
}

async function rmDual(host: DockerHost, ...names: string[]): Promise<void> {
  await ok(host, ['rm', '-f', ...names]);
  for (const n of names) dual.delete(n);
}

/** The dual-stack network's id on a host (from any of its containers there). */
function netIdOn(host: DockerHost): string {
  const x = [...dual.values()].find((v) => v.host === host);
  assert.ok(x, `a container of ${DUAL} on ${host.name}`);
  return x.id;
}

/**
 * A host's vxlan0 tables as listed, duplicates kept: PERMANENT neighbours of both families
 * (`ip mac`) and FDB entries (`mac dst`).
 */
async function tables(host: DockerHost): Promise<{ neigh: string[]; fdb: string[] }> {
  const id = netIdOn(host);
  const neigh: string[] = [];
  const fdb: string[] = [];
  for (const l of (await inOverlay(host, id, 'ip neigh show dev vxlan0')).split('\n')) {
    const m = /^(\S+) lladdr (\S+) PERMANENT/.exec(l);
    if (m) neigh.push(`${m[1]} ${m[2]}`);
  }
  for (const l of (await inOverlay(host, id, 'bridge fdb show dev vxlan0')).split('\n')) {
    const m = /^(\S+) dst (\S+) .*self permanent/.exec(l);
    if (m) fdb.push(`${m[1]} ${m[2]}`);
  }
  return { neigh, fdb };
}

/** What a host must hold from Docker's own view: both neighbours and the FDB entry of every container on the live other hosts. */
function expectedOn(host: DockerHost, live: readonly DockerHost[] = [a, b, c]): { neigh: Set<string>; fdb: Set<string> } {
  const neigh = new Set<string>();
  const fdb = new Set<string>();
  for (const x of dual.values()) {
    if (x.host === host || !live.includes(x.host)) continue;
    neigh.add(`${x.ip} ${x.mac}`);
    neigh.add(`${x.ip6} ${x.mac}`);
    fdb.add(`${x.mac} ${x.host.underlay!.address}`);
  }
  return { neigh, fdb };
}

/** True when the host's tables are exactly `expectedOn`, each entry listed once. */
async function exact(host: DockerHost, live?: readonly DockerHost[]): Promise<boolean> {
  const want = expectedOn(host, live);
  const have = await tables(host);
  return (
    have.neigh.length === new Set(have.neigh).size &&
    have.fdb.length === new Set(have.fdb).size &&
    sameSet(want.neigh, new Set(have.neigh)) &&
    sameSet(want.fdb, new Set(have.fdb))
  );
}

async function describeTables(host: DockerHost, live?: readonly DockerHost[]): Promise<string> {
  const want = expectedOn(host, live);
  const have = await tables(host);
  return `${host.name}: want neigh ${[...want.neigh].join(', ')} fdb ${[...want.fdb].join(', ')}; have neigh ${have.neigh.join(', ')} fdb ${have.fdb.join(', ')}`;
}

async function ping6(from: DockerHost, ctr: string, ip6: string): Promise<void> {
  const r = await docker(from, ['exec', ctr, 'ping', '-6', '-c', '2', '-i', '0.2', '-W', '2', ip6]);
  assert.equal(r.code, 0, `${ctr} on ${from.name} → ${ip6}: ${r.out}`);
  assert.match(r.out, /2 packets received/);
}

const esc = (s: string) => s.replace(/[.:]/g, (ch) => `\\${ch}`);

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 3 });
  [a, b, c] = cluster.hosts as [DockerHost, DockerHost, DockerHost];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  storeUrl = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  await Promise.all([a, b, c].map(async (h) => plugins.set(h.name, await startPlugin(h, pluginOptions(h)))));
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
});

test('dual-stack on three hosts: both addresses from the cluster IPAM, PERMANENT neighbours of both families and FDB entries on every host before traffic, ping6 across all pairs', { skip, timeout: 180_000 }, async (t) => {
  for (const host of [a, b, c]) {
    await ok(host, [
      'network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--ipv6',
      '--subnet', '10.128.0.0/24', '--subnet', 'fd00:128::/64', '--ip-range', 'fd00:128::100/120', '--gateway', 'fd00:128::fe', DUAL,
    ]);
  }
  await Promise.all([
    (async () => {
      await runDual(a, 'a1');
      await runDual(a, 'a2', ['--ip6', 'fd00:128::a2']);
    })(),
    runDual(b, 'b1'),
    runDual(c, 'c1'),
  ]);
  const all = [...dual.values()];
  t.diagnostic([...dual].map(([n, x]) => `${n}@${x.host.name} ${x.ip} ${x.ip6} ${x.mac}`).join('; '));
  assert.equal(dual.get('a2')!.ip6, 'fd00:128::a2', 'explicit --ip6');
  assert.equal(new Set(all.map((x) => x.ip)).size, 4, 'distinct IPv4 addresses across hosts');
  assert.equal(new Set(all.map((x) => x.ip6)).size, 4, 'distinct IPv6 addresses across hosts');
  assert.equal(new Set(all.map((x) => x.mac)).size, 4, 'distinct MACs across hosts');
  for (const x of all) {
    assert.match(x.ip, /^10\.128\.0\./);
    assert.match(x.ip6, /^fd00:128::/);
  }
  for (const n of ['a1', 'b1', 'c1']) assert.match(dual.get(n)!.ip6, /^fd00:128::1[0-9a-f]{2}$/, `--ip-range: ${n}'s dynamic IPv6 address from fd00:128::100/120`);
  // An address held on one host is refused on another.
  const taken = await docker(b, ['run', '-d', '--name', 'b2', '--net', DUAL, '--ip6', 'fd00:128::a2', cluster.image, 'sleep', '3600']);
  assert.notEqual(taken.code, 0, 'a second holder of fd00:128::a2');
  assert.match(taken.out, /fd00:128::a2 is already in use/);
  await docker(b, ['rm', '-f', 'b2']);

  // Before any traffic: every host holds the other two hosts' containers, both families
  // PERMANENT with the container's one MAC, and one FDB entry per MAC pointing at its host.
  for (const host of [a, b, c]) {
    await waitFor(() => exact(host), { timeoutMs: 10_000, what: `${host.name}'s tables` }).catch(async (err: unknown) => {
      throw new Error(`${String(err)}\n${await describeTables(host)}`);
    });
    const v6 = await inOverlay(host, netIdOn(host), 'ip -6 neigh show dev vxlan0');
    for (const x of all.filter((y) => y.host !== host)) assert.match(v6, new RegExp(`${esc(x.ip6)} lladdr ${x.mac} PERMANENT`), `${x.ip6} on ${host.name}`);
    assert.match(await inOverlay(host, netIdOn(host), 'ip -6 addr show dev br0'), /fd00:128::fe\/64/, `the chosen IPv6 gateway (--gateway) on ${host.name}'s br0`);
  }

  // ping6 in both directions between every pair of hosts, and IPv4 once.
  const rep = new Map<DockerHost, string>([[a, 'a2'], [b, 'b1'], [c, 'c1']]);
  await Promise.all(
    [a, b, c].map(async (from) => {
      for (const to of [a, b, c]) if (to !== from) await ping6(from, rep.get(from)!, dual.get(rep.get(to)!)!.ip6);
    }),
  );
  await ping6(c, 'c1', dual.get('a1')!.ip6);
  const ping4 = await docker(b, ['exec', 'b1', 'ping', '-c', '2', '-W', '2', dual.get('a2')!.ip]);
  assert.equal(ping4.code, 0, ping4.out);

  // The store holds one address record per IPv6 address, under the RFC 5952 key.
  const store = await etcdDump(etcd);
  for (const x of all) assert.ok(store.has(`ipam/addresses/${DUAL_POOL6}/${x.ip6}`), `address record of ${x.ip6}`);
});

test('plugin restart (SIGKILL + start) on one host: its IPv6 entries stay, ping6 through it loses nothing, missed changes are reconciled, no duplicates', { skip, timeout: 180_000 }, async (t) => {
  const a1 = dual.get('a1')!;
  const b1 = dual.get('b1')!;
  const monitors = [
    { name: 'b1 → a1', m: await startPingMonitor(b.docker, 'b1', a1.ip6, 'v6-b1-a1') },
    { name: 'c1 → b1', m: await startPingMonitor(c.docker, 'c1', b1.ip6, 'v6-c1-b1') },
  ];
  const killedAt = Date.now();
  await killPlugin(plugins.get(b.name)!);
  plugins.delete(b.name);
  // The kernel keeps what the daemon programmed.
  const kept = await tables(b);
  const before = expectedOn(b);
  for (const e of before.neigh) assert.ok(kept.neigh.includes(e), `${e} kept on B with its daemon gone`);
  for (const e of before.fdb) assert.ok(kept.fdb.includes(e), `${e} kept on B with its daemon gone`);

  // Changes B's daemon misses: a2 leaves A, a3 arrives on A.
  const [, a3] = await Promise.all([rmDual(a, 'a2'), runDual(a, 'a3')]);
  const restartedAt = Date.now();
  plugins.set(b.name, await startPlugin(b, pluginOptions(b)));
  t.diagnostic(`B's daemon down for ${Date.now() - killedAt} ms`);
  await waitFor(() => exact(b), { timeoutMs: 30_000, intervalMs: 200, what: "B's tables reconciled after its restart" }).catch(async (err: unknown) => {
    throw new Error(`${String(err)}\n${await describeTables(b)}`);
  });
  t.diagnostic(`B's tables equal Docker's view (a2 gone, a3 added, nothing doubled) ${Date.now() - restartedAt} ms after the plugin started`);
  for (const host of [a, c]) assert.ok(await exact(host), await describeTables(host));
  await Promise.all([ping6(b, 'b1', a3.ip6), ping6(a, 'a3', b1.ip6)]);
  // B stayed a peer throughout: neither A nor C saw its registration go.
  for (const h of [a, c]) {
    const aboutB = plugins.get(h.name)!.process.output().split('\n').filter((l) => l.includes(`"host":"${b.name}"`) && /registration|underlay/.test(l));
    assert.deepEqual(aboutB, [], `${h.name}'s daemon on B's registration`);
  }
  for (const { name, m } of monitors) {
    const r = await m.stop();
    t.diagnostic(`ping6 ${name} across B's plugin restart: ${r.sent} sent, ${r.lost} lost`);
    assert.ok(r.sent > 0, `${name} ran`);
    assert.equal(r.lost, 0, `${name} lost replies`);
  }
  // One endpoint record per container, one address record per IPv6 address.
  const store = await etcdDump(etcd);
  const joined = [...store].filter(([k, v]) => k.startsWith('endpoints/') && v.joined === true && String(v.ip6 ?? '').startsWith('fd00:128:'));
  assert.deepEqual(joined.map(([, v]) => String(v.ip6)).sort(), [...dual.values()].map((x) => x.ip6).sort(), 'endpoint records after the restart');
  const held = [...store.keys()].filter((k) => k.startsWith(`ipam/addresses/${DUAL_POOL6}/`)).map((k) => k.split('/').pop());
  assert.deepEqual(held.sort(), ['fd00:128::fe', ...[...dual.values()].map((x) => x.ip6)].sort(), 'IPv6 address records after the restart (a2 released)');
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

test('host death: the dead host\'s IPv6 neighbours and FDB entries go within the lease TTL + 5 s, its addresses stay allocated', { skip, timeout: 180_000 }, async (t) => {
  const c1 = dual.get('c1')!;
  const vtepC = c.underlay!.address;
  for (const host of [a, b]) await waitFor(() => exact(host), { timeoutMs: 15_000, what: `${host.name}'s tables before C dies` });
  const diedAt = Date.now();
  await c.crash();
  plugins.delete(c.name);
  await Promise.all(
    [a, b].map((host) =>
      waitFor(
        async () => {
          const now = await tables(host);
          return !now.fdb.some((e) => e.endsWith(` ${vtepC}`)) && !now.neigh.some((e) => e.endsWith(` ${c1.mac}`));
        },
        { timeoutMs: (LEASE_TTL + 15) * 1000, intervalMs: 100, what: `C's entries gone on ${host.name}` },
      ),
    ),
  );
  const gone = Date.now() - diedAt;
  t.diagnostic(`C's IPv4 and IPv6 entries removed on A and B ${gone} ms after C died (lease TTL ${LEASE_TTL} s)`);
  assert.ok(gone < (LEASE_TTL + 5) * 1000, `within the lease TTL + 5 s (${gone} ms)`);
  const v6left = await inOverlay(a, netIdOn(a), 'ip -6 neigh show dev vxlan0');
  assert.doesNotMatch(v6left, new RegExp(esc(c1.ip6)), `c1's IPv6 neighbour on A`);
  // Only C's entries went.
  for (const host of [a, b]) assert.ok(await exact(host, [a, b]), await describeTables(host, [a, b]));

  // C may come back (docs/reliability.md §4): its endpoint stays, withdrawn by its lease, and its
  // addresses stay allocated, IPv6 as IPv4; an explicit request for one is refused.
  const store = await etcdDump(etcd);
  assert.equal(store.has(`hosts/${c.name}`), false, "C's registration expired");
  const c1Record = [...store].find(([k, v]) => k.startsWith('endpoints/') && v.ip6 === c1.ip6);
  assert.ok(c1Record && c1Record[1].host === c.name, "c1's endpoint record kept");
  assert.equal(store.get(`ipam/addresses/${DUAL_POOL6}/${c1.ip6}`)?.host, c.name, "c1's IPv6 address record kept");
  assert.equal(store.get(`ipam/addresses/10.128.0.0-24/${c1.ip}`)?.host, c.name, "c1's IPv4 address record kept");
  const steal = async (flag: string, ip: string, name: string): Promise<void> => {
    const r = await docker(a, ['run', '-d', '--name', name, '--net', DUAL, flag, ip, cluster.image, 'sleep', '3600']);
    assert.notEqual(r.code, 0, `${flag} ${ip} of the dead host's container`);
    assert.match(r.out, new RegExp(`${esc(ip)} is already in use`));
    await docker(a, ['rm', '-f', name]);
  };
  // Meanwhile, dynamic allocations never hand out the dead host's addresses.
  const [, , b3] = await Promise.all([steal('--ip6', c1.ip6, 'a-steal6'), steal('--ip', c1.ip, 'a-steal4'), runDual(b, 'b3')]);
  assert.notEqual(b3.ip6, c1.ip6);
  assert.notEqual(b3.ip, c1.ip);
  await waitFor(() => exact(a, [a, b]), { timeoutMs: 10_000, what: "b3's entries on A" });
  await ping6(a, 'a1', b3.ip6);

  // The live hosts leave; what is left of the IPv6 pool is C's alone.
  await Promise.all([rmDual(a, 'a1', 'a3'), rmDual(b, 'b1', 'b3')]);
  await Promise.all([a, b].map((host) => ok(host, ['network', 'rm', DUAL])));
  const left = [...(await etcdDump(etcd))].filter(([k]) => k.includes('fd00:128'));
  t.diagnostic(`left of fd00:128::/64 with C dead: ${left.map(([k]) => k).join(' ')}`);
  for (const [k, v] of left) {
    if (k === `ipam/pools/${DUAL_POOL6}`) assert.deepEqual(v.holders, [c.name], 'the pool is held by C alone');
    else if (k === `ipam/addresses/${DUAL_POOL6}/fd00:128::fe`) assert.equal(v.kind, 'gateway');
    else assert.equal(v.host, c.name, `${k} belongs to C`);
  }
  assert.ok(left.some(([k]) => k === `ipam/addresses/${DUAL_POOL6}/${c1.ip6}`), "c1's IPv6 address still allocated");
});
