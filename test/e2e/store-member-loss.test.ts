/**
 * Issue 19, "A store that loses a member": three Docker hosts whose daemons are given every
 * member of a 3-member etcd cluster (`etcd://a,b,c`; with TSO_STORE_BACKEND=consul, three
 * Consul servers as `consul://a,b,c`: test/e2e/consul/; with TSO_CONSUL_LAYOUT=agent too, each
 * daemon talks to its own Consul client agent instead, the other layout docs/install.md
 * describes; not in CI). During a burst of `docker run`s on the
 * three hosts the store's leader is SIGKILLed. Then:
 * - no request started once the store took writes again failed (failures are confined to the
 *   election), and every container of the burst runs (a user retries what failed);
 * - 0 lost or duplicated addresses or entries: store records = Docker's endpoints = every
 *   host's neighbour and FDB tables, all addresses distinct;
 * - the pings between containers that existed before lose nothing;
 * - the member comes back (same data), and nothing needs a restart: new `docker run`s work on
 *   every host and every daemon's /healthz says ok.
 * Measured and printed (diagnostics): the election (kill → a leader among the others), kill →
 * first successful store write (a client of the daemons' own store code writing every 100 ms),
 * the longest failed and the longest successful docker run during the burst.
 */
import assert from 'node:assert/strict';
import * as http from 'node:http';
import { after, before, test } from 'node:test';
import { silentLogger } from '../../src/log';
import { openStore } from '../../src/store/open';
import type { Store } from '../../src/store/store';
import { consulDump, consulSkipReason } from '../helpers/consul';
import { startConsulCluster, type ConsulCluster } from '../helpers/consul-cluster';
import { e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcdCluster, type EtcdCluster } from '../helpers/etcd-cluster';
import { startPlugin, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter, sleep, waitFor } from '../helpers/proc';
import {
  attachment,
  desiredPeers,
  dockerEndpoints,
  etcdDump,
  peerTables,
  sameSet,
  startPingMonitor,
  type PingMonitor,
} from '../helpers/resilience';

const backend = process.env.TSO_STORE_BACKEND === 'consul' ? 'consul' : 'etcd';
const consulAgents = backend === 'consul' && process.env.TSO_CONSUL_LAYOUT === 'agent';
const skip = e2eSkipReason(backend === 'etcd' ? ['/usr/bin/etcd', '/usr/bin/etcdctl'] : []) || (backend === 'consul' && consulSkipReason());
cleanupAfter();

const NET = 'mlossnet';
const SUBNET = '10.72.0.0/24';
const NETWORK_KEY = '10.72.0.0-24';
const GATEWAY = '10.72.0.1';
/** Containers each host starts during the burst, and how many at a time. */
const PER_HOST = Number(process.env.TSO_MLOSS_PER_HOST ?? 6);
const CONCURRENCY = 2;
/** A request that started this long after the store took writes again may still have met the election (client-side retry). */
const CLIENT_SLACK_MS = 2000;

let cluster: Cluster;
let etcd: EtcdCluster | undefined;
let consul: ConsulCluster | undefined;
let hosts: DockerHost[];
/** Each host's store URL. */
const storeUrls = new Map<string, string>();
let probeUrl: string;
const plugins = new Map<string, PluginProcess>();
const netIds = new Map<string, string>();

const storeCluster = {
  leader: (waitMs?: number) => (consul ? consul.leader(waitMs) : etcd!.leader(waitMs)),
  kill: (i: number) => (consul ? consul.kill(i) : etcd!.kill(i)),
  restart: (i: number) => (consul ? consul.restart(i) : etcd!.restart(i)),
  dump: () => (consul ? consulDump(consul) : etcdDump(etcd!)),
};

async function runSleeper(host: DockerHost, name: string): Promise<string> {
  const c = await host.docker.createContainer({ Image: cluster.image, name, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: { NetworkMode: NET } });
  try {
    await c.start();
  } catch (err) {
    await c.remove({ force: true }).catch(() => undefined); // so that a retry can use the name again
    throw err;
  }
  return (await attachment(host.docker, name, NET))!.ip;
}

/** GET /healthz on the plugin socket. */
function healthz(plugin: PluginProcess): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: plugin.socketPath, path: '/healthz', method: 'GET', timeout: 10_000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('healthz: no answer')));
    req.on('error', reject);
    req.end();
  });
}

/** Every host's tables equal what the store says (checked once). */
async function converged(): Promise<boolean> {
  const store = await storeCluster.dump();
  for (const h of hosts) {
    const want = desiredPeers(store, NETWORK_KEY, h.name);
    const have = await peerTables(h, netIds.get(h.name)!);
    if (!sameSet(want.neigh, have.neigh) || !sameSet(want.fdb, have.fdb)) return false;
  }
  return true;
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 3 });
  hosts = [...cluster.hosts];
  if (backend === 'consul') {
    consul = await startConsulCluster({ clientAddress: cluster.underlay.gateway, clients: consulAgents ? hosts.length : 0 });
    hosts.forEach((h, i) => storeUrls.set(h.name, `consul://${consulAgents ? consul!.agents[i]! : consul!.reachableAddresses.join(',')}`));
    probeUrl = consulAgents ? storeUrls.get(hosts[0]!.name)! : `consul://${consul.members.map((m) => m.address).join(',')}`;
  } else {
    etcd = await startEtcdCluster({ alsoListenOn: cluster.underlay.gateway });
    for (const h of hosts) storeUrls.set(h.name, `etcd://${etcd.reachableEndpoints.join(',')}`);
    probeUrl = `etcd://${etcd.endpoints.join(',')}`;
  }
  await Promise.all(
    hosts.map(async (h) => {
      plugins.set(h.name, await startPlugin(h, { store: storeUrls.get(h.name)! }));
    }),
  );
  for (const h of hosts) {
    await h.docker.createNetwork({ Name: NET, Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: SUBNET }] } });
    netIds.set(h.name, ((await h.docker.getNetwork(NET).inspect()) as { Id: string }).Id);
  }
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
  await consul?.stop();
});

interface Attempt {
  host: string;
  name: string;
  start: number;
  ms: number;
  error?: string;
}

interface Probe {
  start: number;
  end: number;
  ok: boolean;
}

/** Writes a key every `everyMs` (each write on its own, not waiting for the previous) until stopped. */
function startWriteProbe(store: Store, everyMs = 100): { stop(): Promise<Probe[]> } {
  const probes: Probe[] = [];
  const pending = new Set<Promise<void>>();
  let i = 0;
  const timer = setInterval(() => {
    const start = Date.now();
    const p = store
      .put(`probe-${i % 8}`, String(i++))
      .then(
        () => probes.push({ start, end: Date.now(), ok: true }),
        () => probes.push({ start, end: Date.now(), ok: false }),
      )
      .then(() => {
        pending.delete(p);
      });
    pending.add(p);
  }, everyMs);
  return {
    async stop() {
      clearInterval(timer);
      await Promise.all([...pending]);
      return probes.sort((a, b) => a.start - b.start);
    },
  };
}

const label = consulAgents ? 'consul (client agent per host)' : backend;

test(`${label}: the store's leader SIGKILLed during a burst of docker runs on three hosts`, { skip, timeout: 170_000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const a1 = await runSleeper(a, 'a1');
  const b1 = await runSleeper(b, 'b1');
  const c1 = await runSleeper(c, 'c1');
  await waitFor(converged, { timeoutMs: 20_000, what: 'tables before the burst' });
  const monitors: [string, PingMonitor][] = [
    ['a1 → b1', await startPingMonitor(a.docker, 'a1', b1, 'ml-b')],
    ['b1 → c1', await startPingMonitor(b.docker, 'b1', c1, 'ml-c')],
    ['c1 → a1', await startPingMonitor(c.docker, 'c1', a1, 'ml-a')],
  ];
  const probeStore = await openStore(probeUrl, { logger: silentLogger(), prefix: 'tso-member-loss-probe/' });
  const probe = startWriteProbe(probeStore);
  let probing = true;
  const stopProbe = async (): Promise<Probe[]> => {
    const probes = await probe.stop();
    if (probing) await probeStore.close();
    probing = false;
    return probes;
  };
  t.after(stopProbe); // also when an assertion fails first
  await sleep(1000);

  // The burst: each host starts PER_HOST containers, CONCURRENCY at a time, retrying what fails.
  const attempts: Attempt[] = [];
  let done = 0;
  const burst = Promise.all(
    hosts.flatMap((h) =>
      Array.from({ length: CONCURRENCY }, async (_, worker) => {
        for (let k = worker; k < PER_HOST; k += CONCURRENCY) {
          const name = `${h.name}-burst-${k}`;
          for (let attempt = 1; ; attempt++) {
            const start = Date.now();
            try {
              await runSleeper(h, name);
              attempts.push({ host: h.name, name, start, ms: Date.now() - start });
              break;
            } catch (err) {
              const error = err instanceof Error ? err.message : String(err);
              attempts.push({ host: h.name, name, start, ms: Date.now() - start, error });
              if (attempt >= 20) throw new Error(`${name}: docker run failed ${attempt} times, last: ${error}`);
              await sleep(500);
            }
          }
          done++;
        }
      }),
    ),
  );

  // Kill the leader while the burst is in flight.
  await waitFor(() => done >= 3, { timeoutMs: 60_000, intervalMs: 20, what: 'the burst to be under way' });
  const leader = await storeCluster.leader();
  const killAt = Date.now();
  await storeCluster.kill(leader);
  const newLeader = await storeCluster.leader(30_000);
  const electionMs = Date.now() - killAt;
  assert.notEqual(newLeader, leader);
  await burst;
  const burstEnd = Date.now();

  await storeCluster.restart(leader);
  const restartedAt = Date.now();
  const probes = await stopProbe();

  // The window: from the kill to the first write started after it that succeeded (writes
  // in flight at the kill may finish later than writes started after the election).
  const firstOk = probes.filter((p) => p.start >= killAt && p.ok).sort((x, y) => x.end - y.end)[0];
  assert.ok(firstOk, 'the store took writes again after the kill');
  const recoveredMs = firstOk.end - killAt;
  const failedProbes = probes.filter((p) => !p.ok).length;
  const longestProbe = Math.max(...probes.filter((p) => p.end >= killAt).map((p) => p.end - p.start));
  const lastStalled = Math.max(...probes.filter((p) => p.start <= killAt + electionMs).map((p) => p.end)) - killAt;
  const failed = attempts.filter((x) => x.error !== undefined);
  const succeeded = attempts.filter((x) => x.error === undefined);
  const longestFailed = Math.max(0, ...failed.map((x) => x.ms));
  const longestOk = Math.max(...succeeded.map((x) => x.ms));
  t.diagnostic(`${label}: member ${leader} (leader) SIGKILLed; member ${newLeader} leads ${electionMs} ms later`);
  t.diagnostic(
    `${label}: first successful store write ${recoveredMs} ms after the kill; ${failedProbes} of ${probes.length} probe writes failed; longest probe write ${longestProbe} ms; the last write begun before the election ended ${lastStalled} ms after the kill`,
  );
  t.diagnostic(
    `${label}: burst of ${hosts.length * PER_HOST} docker runs in ${burstEnd - killAt} ms after the kill: ${failed.length} attempts failed (longest ${longestFailed} ms), longest successful run ${longestOk} ms`,
  );
  for (const f of failed) t.diagnostic(`  failed ${f.name} at kill${f.start - killAt >= 0 ? '+' : ''}${f.start - killAt} ms after ${f.ms} ms: ${f.error!.slice(0, 240)}`);
  // Failures are confined to the election: nothing that started once the store was writable failed.
  const late = failed.filter((f) => f.start > firstOk.end + CLIENT_SLACK_MS);
  assert.deepEqual(late.map((f) => `${f.name}@kill+${f.start - killAt}ms: ${f.error}`), [], 'docker runs failed after the store took writes again');
  assert.ok(failed.every((f) => f.start + f.ms >= killAt), 'nothing failed before the kill');

  // The member is back, and nothing needed a restart.
  await waitFor(converged, { timeoutMs: 30_000, intervalMs: 250, what: 'every host to match the store after the member loss' });
  t.diagnostic(`${label}: every host's tables match the store ${Date.now() - restartedAt} ms after the member restarted`);
  for (const [name, m] of monitors) {
    const r = await m.stop();
    t.diagnostic(`ping ${name} across the member loss: ${r.sent} sent, ${r.lost} lost`);
    assert.equal(r.lost, 0, `${name} lost pings`);
  }
  const after = await Promise.all(hosts.map((h) => runSleeper(h, `${h.name}-after`)));
  await waitFor(converged, { timeoutMs: 20_000, intervalMs: 250, what: 'tables after the post-restart runs' });
  for (const h of hosts) {
    const r = await healthz(plugins.get(h.name)!);
    assert.equal(r.status, 200, `${h.name} /healthz: ${r.body}`);
    assert.match(r.body, /"status":"ok"/);
  }

  // 0 lost or duplicated addresses or entries: store ↔ Docker, and all distinct.
  const store = await storeCluster.dump();
  const dockerIps: string[] = [];
  for (const h of hosts) {
    assert.ok(store.has(`hosts/${h.name}`), `${h.name} registered`);
    const eps = await dockerEndpoints(h.docker, NET);
    dockerIps.push(...[...eps.values()].map((e) => e.ip));
    const mine = [...store]
      .filter(([k, v]) => k.startsWith(`endpoints/${NETWORK_KEY}/`) && v.host === h.name)
      .map(([, v]) => String(v.id))
      .sort();
    assert.deepEqual(mine, [...eps.keys()].sort(), `${h.name}: endpoint records = Docker's endpoints`);
  }
  assert.equal(dockerIps.length, 3 + hosts.length * (PER_HOST + 1), 'every container runs');
  assert.equal(new Set(dockerIps).size, dockerIps.length, `distinct addresses: ${dockerIps.join(' ')}`);
  assert.ok(after.every((ip) => dockerIps.includes(ip)));
  const addressRecords = [...store.keys()]
    .filter((k) => k.startsWith(`ipam/addresses/${NETWORK_KEY}/`))
    .map((k) => k.split('/').pop()!)
    .filter((ip) => ip !== GATEWAY)
    .sort();
  assert.deepEqual(addressRecords, [...dockerIps].sort(), 'address records are exactly the running containers');
});
