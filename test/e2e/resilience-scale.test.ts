/**
 * Issue "Resilience", item 5: concurrency across hosts.
 *
 * - Every host runs `docker network create` of the same subnet at the same moment, for several
 *   networks: each network ends up with exactly one VNI, and no two networks share one.
 * - 3 hosts × TSO_SCALE_PER_HOST parallel `docker run` on one network (default 50, as the issue asks):
 *   all addresses and MACs distinct, the store holds each exactly once, every container
 *   reaches every other one from every host.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { e2eSkipReason, runContainer, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import type { PluginProcess } from '../helpers/plugin';
import { cleanupAfter, waitFor } from '../helpers/proc';
import { attachment, desiredPeers, etcdDump, inOverlay, peerTables, percentile, sameSet, startPluginTimed } from '../helpers/resilience';

const skip = e2eSkipReason(['/usr/bin/etcd']);
cleanupAfter();

const PER_HOST = Number(process.env.TSO_SCALE_PER_HOST ?? 50);
const NETWORKS = 4;
let cluster: Cluster;
let etcd: EtcdServer;
let hosts: DockerHost[];
let plugins: PluginProcess[];

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 3 });
  hosts = [...cluster.hosts];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  const store = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  plugins = (await Promise.all(hosts.map((h) => startPluginTimed(h, { store })))).map((p) => p.plugin);
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
});

test(`parallel docker network create of the same subnet on every host: one VNI per network (${NETWORKS} networks)`, { skip, timeout: 120_000 }, async (t) => {
  const started = Date.now();
  for (let n = 0; n < NETWORKS; n++) {
    await Promise.all(
      hosts.map((h) =>
        h.docker.createNetwork({ Name: `par${n}`, Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: `10.9${n}.0.0/24` }] } }),
      ),
    );
  }
  t.diagnostic(`${NETWORKS} rounds of 3 simultaneous network creates took ${Date.now() - started} ms`);
  const store = await etcdDump(etcd);
  const vnis = [...store].filter(([k]) => k.startsWith('vni/'));
  assert.equal(vnis.length, NETWORKS, `one VNI record per network: ${vnis.map(([k, v]) => `${k}=${String(v.networkKey)}`).join(' ')}`);
  const byNetwork = new Map<string, number>();
  for (let n = 0; n < NETWORKS; n++) {
    const record = store.get(`networks/10.9${n}.0.0-24`);
    assert.ok(record, `network record for 10.9${n}.0.0/24`);
    assert.equal((record.ids as string[]).length, 3, 'every host’s Docker network id is mapped to it');
    byNetwork.set(`par${n}`, Number(record.vni));
  }
  assert.equal(new Set(byNetwork.values()).size, NETWORKS, `distinct VNIs: ${JSON.stringify(Object.fromEntries(byNetwork))}`);
  // And the kernel agrees: a container on every host sees the same VNI on vxlan0.
  for (const h of hosts) {
    const c = await h.docker.createContainer({ Image: cluster.image, name: `${h.name}-vni`, Cmd: ['sleep', '1000'], HostConfig: { NetworkMode: 'par0' } });
    await c.start();
    const id = ((await h.docker.getNetwork('par0').inspect()) as { Id: string }).Id;
    assert.match(await inOverlay(h, id, 'ip -d link show vxlan0'), new RegExp(`vxlan id ${byNetwork.get('par0')} `), `VNI on ${h.name}`);
    await c.remove({ force: true });
  }
  for (let n = 0; n < NETWORKS; n++) for (const h of hosts) await h.docker.getNetwork(`par${n}`).remove();
  const after = await etcdDump(etcd);
  assert.deepEqual([...after.keys()].filter((k) => k.startsWith('vni/') || k.startsWith('networks/') || k.startsWith('ipam/')), [], 'all gone');
});

test(`3 hosts × ${PER_HOST} parallel docker run on one network: distinct addresses and MACs, all reachable`, { skip, timeout: 600_000 }, async (t) => {
  for (const h of hosts) {
    await h.docker.createNetwork({ Name: 'scale', Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.99.0.0/22' }] } });
  }
  const started = Date.now();
  const results = await Promise.all(
    hosts.flatMap((h) =>
      Array.from({ length: PER_HOST }, async (_, i) => {
        const name = `${h.name}-s${i}`;
        const c = await h.docker.createContainer({ Image: cluster.image, name, Cmd: ['sleep', '100000'], HostConfig: { NetworkMode: 'scale' } });
        await c.start();
        return { host: h, name, ...(await attachment(h.docker, name, 'scale'))! };
      }),
    ),
  ).catch(async (err: unknown) => {
    // A store that was slow under this load says so in its own log ("took too long", "slow fdatasync").
    const warnings = etcd.log().split('\n').filter((l) => /slow|too long|timed out/i.test(l));
    t.diagnostic(`etcd's warnings: ${warnings.length}`);
    for (const line of warnings.slice(-10)) t.diagnostic(line);
    for (const line of await pluginTimes()) t.diagnostic(line);
    throw err;
  });
  const runMs = Date.now() - started;
  for (const line of await pluginTimes()) t.diagnostic(line);
  const total = hosts.length * PER_HOST;
  t.diagnostic(`${total} parallel docker run took ${runMs} ms`);
  const ips = results.map((r) => r.ip);
  const twice = results.filter((r) => ips.indexOf(r.ip) !== ips.lastIndexOf(r.ip)).map((r) => `${r.name}=${r.ip} (${r.endpointId.slice(0, 12)})`);
  if (twice.length > 0) {
    const dump = await etcdDump(etcd);
    const dupIps = new Set(results.filter((r) => ips.indexOf(r.ip) !== ips.lastIndexOf(r.ip)).map((r) => r.ip));
    const related = [...dump].filter(([k, v]) => [...dupIps].some((ip) => k.endsWith(`/${ip}`) || v.ip === ip));
    assert.fail(`addresses given twice: ${twice.join(', ')}; store: ${JSON.stringify(related)}`);
  }
  assert.equal(new Set(ips).size, total, `distinct addresses: ${ips.join(' ')}`);
  assert.equal(new Set(results.map((r) => r.mac)).size, total, 'distinct MACs');
  const store = await etcdDump(etcd);
  const held = [...store.keys()].filter((k) => k.startsWith('ipam/addresses/10.99.0.0-22/')).map((k) => k.split('/').pop()!);
  assert.deepEqual(held.filter((ip) => ip !== '10.99.0.1').sort(), [...ips].sort(), 'the store holds each address once, and only those');
  const endpoints = [...store].filter(([k, v]) => k.startsWith('endpoints/10.99.0.0-22/') && v.joined === true);
  assert.equal(endpoints.length, total, 'one joined endpoint record per container');

  // Every host's tables converge to the store's view (the 2 × total remote peers each).
  await waitFor(
    async () => {
      const now = await etcdDump(etcd);
      for (const h of hosts) {
        const id = ((await h.docker.getNetwork('scale').inspect()) as { Id: string }).Id;
        const want = desiredPeers(now, '10.99.0.0-22', h.name);
        const have = await peerTables(h, id);
        if (want.neigh.size !== total - PER_HOST || !sameSet(want.neigh, have.neigh) || !sameSet(want.fdb, have.fdb)) return false;
      }
      return true;
    },
    { timeoutMs: 30_000, what: 'every host to hold every remote peer' },
  );
  t.diagnostic(`all peers programmed on all hosts ${Date.now() - started} ms after the runs began`);

  for (const h of hosts) {
    const script = ips.map((ip) => `ping -c1 -W2 ${ip} >/dev/null || echo FAIL ${ip}`).join('; ');
    const r = await runContainer(h.docker, cluster.image, ['sh', '-c', `${script}; echo done`], { network: 'scale', timeoutMs: 300_000 });
    assert.equal(r.stdout.trim(), 'done', `unreachable from ${h.name}: ${r.stdout}`);
  }
  t.diagnostic(`every one of the ${total} containers answered a ping from every host`);
});

/**
 * Each plugin's request durations by method, its slow store calls and its failed requests (from
 * its debug log): where a slow run spent its time. One diagnostic line per host.
 */
async function pluginTimes(): Promise<string[]> {
  return Promise.all(plugins.map(async (p, i) => {
    const byMethod = new Map<string, number[]>();
    const slow: string[] = [];
    const failed: string[] = [];
    for (const line of p.process.output().split('\n')) {
      let entry: { message?: string; method?: string; ms?: number; call?: string; error?: string };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        continue; // not a log line, or one cut by the output buffer
      }
      if (entry.message === 'request' && typeof entry.method === 'string' && typeof entry.ms === 'number') {
        const times = byMethod.get(entry.method) ?? [];
        times.push(entry.ms);
        byMethod.set(entry.method, times);
      } else if (entry.message === 'slow store call') {
        slow.push(`${String(entry.call)} ${String(entry.ms)} ms`);
      } else if (entry.message === 'request failed') {
        failed.push(`${String(entry.method)}: ${String(entry.error)}`);
      }
    }
    const times = [...byMethod].map(([m, ms]) => `${m.replace(/^NetworkDriver\./, '')} n=${ms.length} p50=${percentile(ms, 50).toFixed(0)} max=${Math.max(...ms).toFixed(0)} ms`);
    // The longest the daemon's event loop was held up (a synchronous netlink call waits for the kernel).
    const blocked = /^nodejs_eventloop_lag_max_seconds (\S+)/m.exec(await p.metrics().catch((e: unknown) => String(e)))?.[1];
    return (
      `${hosts[i]!.name}: ${times.join('; ')} | event loop held up at most ${blocked === undefined ? '?' : `${(Number(blocked) * 1000).toFixed(0)} ms`}` +
      ` | slow store calls (${slow.length}): ${slow.slice(-5).join(', ')} | failed: ${failed.slice(0, 3).join(' / ')}`
    );
  }));
}
