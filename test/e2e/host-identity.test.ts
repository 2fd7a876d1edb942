/**
 * Host identity and a store partition, with three Docker hosts and a real etcd.
 *
 * - A second daemon started under a live host's name (a cloned VM, an identical image) is
 *   refused: it exits non-zero naming the other host's VTEP, and nothing of the live host's
 *   records, peers or traffic changes. The same when the clone also copied the state directory
 *   (the same instance id).
 * - A host whose registration disappears registers again by itself.
 * - A host cut off from the store (but not from its peers) for TSO_PARTITION_SECONDS (default 60):
 *   no ping lost to or from its containers; /healthz says it is not registered meanwhile; its
 *   containers' names still resolve on the other hosts (names follow the peers' liveness); after
 *   the partition everything converges to the store.
 * - A host powered off (dockerd + plugin killed, underlay link down): its entries are gone on
 *   every other host within the lease TTL + 5 s, and its names with them.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NODE_FLAGS } from '../../src/node-flags';
import { e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { NETNS_DIR, PLUGIN_MAIN, PLUGIN_SOCKET, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter, sleep, waitFor } from '../helpers/proc';
import {
  attachment,
  desiredPeers,
  etcdDump,
  peerTables,
  sameSet,
  startPingMonitor,
  startPluginTimed,
  type PingMonitor,
} from '../helpers/resilience';

const skip = e2eSkipReason(['/usr/bin/etcd']);
cleanupAfter();

const PARTITION_S = Number(process.env.TSO_PARTITION_SECONDS ?? 60);
const LEASE_TTL = 5;
const NET = 'idnet';
const SUBNET = '10.73.0.0/24';
const NETWORK_KEY = '10.73.0.0-24';
const GATEWAY = '10.73.0.1';

let cluster: Cluster;
let etcd: EtcdServer;
let hosts: DockerHost[];
let storeUrl: string;
const plugins = new Map<string, PluginProcess>();
const netIds = new Map<string, string>();

function stateDir(host: DockerHost): string {
  return path.join(host.dir, 'tsoverlay-state');
}

async function runSleeper(host: DockerHost, name: string): Promise<string> {
  const c = await host.docker.createContainer({ Image: cluster.image, name, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: { NetworkMode: NET } });
  await c.start();
  return (await attachment(host.docker, name, NET))!.ip;
}

/** `nslookup name` from B's container `part-b`, asked straight of B's DNS listener on the gateway. */
async function lookupOnB(b: DockerHost, name: string): Promise<string> {
  const r = await b.cli(['exec', 'part-b', 'nslookup', name, GATEWAY], { allowFailure: true, timeoutMs: 20_000 });
  return `${r.stdout}${r.stderr}`;
}

const resolvesTo = (out: string, ip: string) => new RegExp(`Name:\\s+\\S+\\s+Address(?: \\d+)?:\\s+${ip.replace(/\./g, '\\.')}\\b`).test(out);

async function converged(live: readonly DockerHost[]): Promise<boolean> {
  const store = await etcdDump(etcd);
  for (const h of live) {
    const want = desiredPeers(store, NETWORK_KEY, h.name);
    const have = await peerTables(h, netIds.get(h.name)!);
    if (!sameSet(want.neigh, have.neigh) || !sameSet(want.fdb, have.fdb)) return false;
  }
  return true;
}

function healthz(host: DockerHost): Promise<{ status: string; problems: string[] }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath: `/proc/${host.nsPid()}/root${PLUGIN_SOCKET}`, path: '/healthz' }, (res) => {
      let data = '';
      res.on('data', (c: Buffer) => (data += c.toString()));
      res.on('end', () => {
        try {
          resolve(JSON.parse(data) as { status: string; problems: string[] });
        } catch (err) {
          reject(err instanceof Error ? err : new Error(String(err)));
        }
      });
    });
    req.on('error', reject);
  });
}

/** Only what a host's records are: its registration, its endpoints and its addresses. */
function recordsOf(store: Map<string, Record<string, unknown>>, host: string): string {
  const mine = [...store]
    .filter(([k, v]) => k === `hosts/${host}` || (k.startsWith('endpoints/') && v.host === host) || (k.startsWith('ipam/addresses/') && v.host === host))
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return mine.sort().join('\n');
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 3 });
  hosts = [...cluster.hosts];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  storeUrl = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  for (const h of hosts) {
    const { plugin } = await startPluginTimed(h, { store: storeUrl, extraArgs: ['--lease-ttl', String(LEASE_TTL), '--state-dir', stateDir(h)] });
    plugins.set(h.name, plugin);
    await h.docker.createNetwork({ Name: NET, Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: SUBNET }] } });
    netIds.set(h.name, ((await h.docker.getNetwork(NET).inspect()) as { Id: string }).Id);
  }
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
});

test('a second daemon under a live host\'s name is refused and changes nothing', { skip, timeout: 180_000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const a1 = await runSleeper(a, 'id-a1');
  const b1 = await runSleeper(b, 'id-b1');
  await waitFor(() => converged([a, b]), { timeoutMs: 15_000, what: 'tables before the clone' });
  const monitors: [string, PingMonitor][] = [
    ['b → a', await startPingMonitor(b.docker, 'id-b1', a1, 'id-ba')],
    ['a → b', await startPingMonitor(a.docker, 'id-a1', b1, 'id-ab')],
  ];
  const before = recordsOf(await etcdDump(etcd), a.name);
  assert.match(before, /"instance":"[0-9a-f-]{36}"/, 'the registration carries the instance id');

  // The clone runs on host C's network namespace (another VTEP) under A's name: once with a
  // state directory of its own, once with a copy of A's (a cloned disk: the same instance id).
  const copied = path.join(c.dir, 'cloned-state');
  fs.cpSync(stateDir(a), copied, { recursive: true });
  for (const [what, dir, expect] of [
    ['own identity', path.join(c.dir, 'clone-own-state'), /registered by another live host at VTEP/],
    ['copied identity', copied, /cloned state directory/],
  ] as const) {
    const argv = [
      process.execPath, ...NODE_FLAGS, PLUGIN_MAIN, 'serve', '--store', storeUrl, '--socket', `/run/tsoverlay-clone-${Date.now()}.sock`,
      '--netns-dir', `${NETNS_DIR}-clone`, '--host-name', a.name, '--state-dir', dir, '--lease-ttl', String(LEASE_TTL),
    ];
    const clone = c.exec(argv, { background: true, name: 'tsoverlay-clone' });
    const exit = await Promise.race([clone.exited, sleep(20_000).then(() => undefined)]);
    const output = clone.output();
    t.diagnostic(`clone (${what}) exit: ${JSON.stringify(exit)}; ${output.split('\n').find((l) => l.includes(a.underlay!.address)) ?? ''}`.slice(0, 600));
    assert.ok(exit, `the clone (${what}) must not keep running`);
    assert.equal(exit.code, 1, `the clone (${what}) exits with status 1`);
    assert.ok(output.includes(a.underlay!.address), `the error names the live host's VTEP ${a.underlay!.address}`);
    assert.match(output, expect);
  }
  await sleep(1000);
  assert.equal(recordsOf(await etcdDump(etcd), a.name), before, "A's registration, endpoints and addresses unchanged");
  assert.ok(await converged([a, b]), 'every host still programs A as before');
  assert.equal((await healthz(a)).status, 'ok');
  for (const [name, m] of monitors) {
    const r = await m.stop();
    t.diagnostic(`ping ${name} while the clone tried: ${r.sent} sent, ${r.lost} lost`);
    assert.equal(r.lost, 0);
  }
});

test('a host whose registration is deleted registers again by itself', { skip, timeout: 60_000 }, async (t) => {
  const a = hosts[0]!;
  const registered = (await etcdDump(etcd)).get(`hosts/${a.name}`);
  assert.ok(registered);
  const t0 = Date.now();
  await etcd.etcdctl('del', `tsoverlay/v1/hosts/${a.name}`);
  const back = await waitFor(async () => (await etcdDump(etcd)).get(`hosts/${a.name}`), { timeoutMs: 10_000, intervalMs: 50, what: 'A registered again' });
  t.diagnostic(`A registered again ${Date.now() - t0} ms after its registration was deleted`);
  assert.equal(back.vtep, registered.vtep);
  assert.equal(back.instance, registered.instance);
  await waitFor(async () => (await healthz(a)).status === 'ok', { timeoutMs: 5_000, what: 'A healthy again' });
});

test(`a host cut off from the store for ${PARTITION_S} s loses no traffic`, { skip, timeout: (PARTITION_S + 120) * 1000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const a2 = await runSleeper(a, 'part-a');
  const b2 = await runSleeper(b, 'part-b');
  const c2 = await runSleeper(c, 'part-c');
  await waitFor(() => converged([a, b, c]), { timeoutMs: 15_000, what: 'tables before the partition' });
  await waitFor(async () => resolvesTo(await lookupOnB(b, 'part-a'), a2), { timeoutMs: 15_000, what: "A's container's name on B before the partition" });
  const monitors: [string, PingMonitor][] = [
    ['b → a', await startPingMonitor(b.docker, 'part-b', a2, 'part-ba')],
    ['c → a', await startPingMonitor(c.docker, 'part-c', a2, 'part-ca')],
    ['a → b', await startPingMonitor(a.docker, 'part-a', b2, 'part-ab')],
    ['a → c', await startPingMonitor(a.docker, 'part-a', c2, 'part-ac')],
  ];
  await sleep(500);
  // Only the store is unreachable from A: its peers are on the same underlay subnet.
  const route = ['ip', 'route', 'add', 'blackhole', `${cluster.underlay.gateway}/32`];
  await a.underlay!.exec(route);
  let routed = true;
  try {
    await waitFor(async () => !(await etcdDump(etcd)).has(`hosts/${a.name}`), { timeoutMs: (LEASE_TTL + 10) * 1000, what: "A's lease to expire" });
    t.diagnostic(`A's registration expired in the store; B and C keep its containers while A answers on the underlay`);
    const health = await waitFor(async () => {
      const h = await healthz(a);
      return h.status !== 'ok' ? h : undefined;
    }, { timeoutMs: 15_000, what: 'A to report that it is not registered' });
    t.diagnostic(`A's /healthz during the partition: ${JSON.stringify(health.problems)}`);
    assert.ok(health.problems.some((p) => /not registered/.test(p)));
    // A's registration is gone but B keeps A as a peer: A's names stay with it (issue 17).
    const during = await lookupOnB(b, 'part-a');
    assert.ok(resolvesTo(during, a2), `part-a resolves on B during the partition: ${during}`);
    await sleep(Math.max(0, PARTITION_S * 1000 - LEASE_TTL * 1000));
    for (const h of [b, c]) {
      const tables = await peerTables(h, netIds.get(h.name)!);
      assert.ok([...tables.neigh].some((e) => e.startsWith(`${a2} `)), `${h.name} still has A's container at the end of the partition`);
    }
  } finally {
    await a.underlay!.exec(['ip', 'route', 'del', 'blackhole', `${cluster.underlay.gateway}/32`]).then(() => (routed = false), () => undefined);
  }
  assert.equal(routed, false);
  const healedAt = Date.now();
  await waitFor(async () => (await etcdDump(etcd)).has(`hosts/${a.name}`), { timeoutMs: 20_000, what: 'A registered again' });
  await waitFor(() => converged([a, b, c]), { timeoutMs: 30_000, intervalMs: 250, what: 'every host to match the store after the partition' });
  t.diagnostic(`A registered and every table matches the store ${Date.now() - healedAt} ms after the partition ended`);
  for (const [name, m] of monitors) {
    const r = await m.stop();
    t.diagnostic(`ping ${name} across the partition: ${r.sent} sent, ${r.lost} lost`);
    assert.ok(r.sent >= PARTITION_S * 4, 'the monitor ran through the partition');
    assert.equal(r.lost, 0, `${name} lost pings`);
  }
  // Nothing duplicated: one address per running container, one endpoint record per container.
  const store = await etcdDump(etcd);
  const ips = [...store].filter(([k, v]) => k.startsWith('endpoints/') && v.joined === true).map(([, v]) => String(v.ip));
  assert.equal(new Set(ips).size, ips.length, `distinct joined addresses: ${ips.join(' ')}`);
});

test('a host powered off has its entries removed within the lease TTL + 5 s', { skip, timeout: 120_000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  await waitFor(() => converged([a, b, c]), { timeoutMs: 15_000, what: 'tables before the power-off' });
  const vtepA = a.underlay!.address;
  const offAt = Date.now();
  await a.crash();
  await a.underlay!.exec(['ip', 'link', 'set', a.underlay!.ifname, 'down']);
  plugins.delete(a.name);
  for (const h of [b, c]) {
    await waitFor(async () => ![...(await peerTables(h, netIds.get(h.name)!)).fdb].some((e) => e.endsWith(` ${vtepA}`)), {
      timeoutMs: (LEASE_TTL + 15) * 1000,
      intervalMs: 100,
      what: `A's entries gone on ${h.name}`,
    });
  }
  const gone = Date.now() - offAt;
  t.diagnostic(`A's entries removed on B and C ${gone} ms after power-off (lease TTL ${LEASE_TTL} s)`);
  // The same decision drops the peers and the names: no wait here.
  assert.match(await lookupOnB(b, 'part-a'), /NXDOMAIN|can't find/i, "A's names go with its peers");
  assert.ok(gone < (LEASE_TTL + 5) * 1000, `within TTL + 5 s (${gone} ms)`);
});
