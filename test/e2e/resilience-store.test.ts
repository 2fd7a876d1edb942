/**
 * Issue "Resilience", items 3 and 4, with three Docker hosts and a real etcd (or, with
 * TSO_STORE_BACKEND=consul, a real Consul server: test/e2e/consul/).
 *
 * 3. Store outage: etcd is killed for TSO_OUTAGE_SECONDS (default 30, as the issue asks) while
 *    containers ping each other. Existing traffic loses nothing; new requests fail within a
 *    bounded time with an Err naming the store; after etcd returns, changes made at once (while
 *    the watches are still reconnecting) reach every host, every host's tables equal what the
 *    store says, and parallel allocations give distinct addresses.
 * 4. Host death and return: host A loses power (every process killed, /run wiped, Docker's data
 *    kept). B and C drop A's containers within the lease TTL; when A boots again under the
 *    same name, its dead containers are never advertised again (withdrawn before it
 *    re-registers), its `--restart always` container comes back and is reachable, and the store
 *    holds exactly A's live endpoints.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { consulDump, consulSkipReason, startConsul, type ConsulServer } from '../helpers/consul';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import type { PluginProcess } from '../helpers/plugin';
import { cleanupAfter, sleep, waitFor } from '../helpers/proc';
import {
  attachment,
  desiredPeers,
  dockerEndpoints,
  etcdDump,
  peerTables,
  pingFrom,
  retrying,
  sameSet,
  startPingMonitor,
  startPluginTimed,
  type PingMonitor,
} from '../helpers/resilience';

const backend = process.env.TSO_STORE_BACKEND === 'consul' ? 'consul' : 'etcd';
const skip = e2eSkipReason(backend === 'etcd' ? ['/usr/bin/etcd'] : []) || (backend === 'consul' && consulSkipReason());
cleanupAfter();

const OUTAGE_S = Number(process.env.TSO_OUTAGE_SECONDS ?? 30);
// Consul refuses session TTLs under 10 s, and may take up to twice the TTL to end one.
const LEASE_TTL = backend === 'consul' ? 10 : 5;
const EXPIRY_BOUND_MS = backend === 'consul' ? 2 * LEASE_TTL * 1000 + 5000 : (LEASE_TTL + 5) * 1000;
/** How the plugin's errors name the store when it is down. */
const STORE_NAME = backend === 'consul' ? /consul|store/i : /etcd|store/i;
const UNREACHABLE = backend === 'consul' ? /consul.*unreachable/i : /etcd.*(unreachable|no answer)/i;
const NET = 'outnet';
const SUBNET = '10.70.0.0/24';
const NETWORK_KEY = '10.70.0.0-24';

let cluster: Cluster;
let etcd: EtcdServer | undefined;
let consul: ConsulServer | undefined;
let hosts: DockerHost[];
let storeUrl: string;
const plugins = new Map<string, PluginProcess>();
const netIds = new Map<string, string>();

async function startPluginOn(host: DockerHost): Promise<number> {
  const { plugin, ms } = await startPluginTimed(host, { store: storeUrl, extraArgs: ['--lease-ttl', String(LEASE_TTL)] });
  plugins.set(host.name, plugin);
  return ms;
}

async function runSleeper(host: DockerHost, name: string, restartAlways = false): Promise<string> {
  const c = await host.docker.createContainer({
    Image: cluster.image,
    name,
    Cmd: ['sleep', '100000'],
    StopTimeout: 1,
    HostConfig: { NetworkMode: NET, ...(restartAlways ? { RestartPolicy: { Name: 'always' } } : {}) },
  });
  try {
    await c.start();
  } catch (err) {
    await c.remove({ force: true }).catch(() => undefined); // so that a retry can use the name again
    throw err;
  }
  return (await attachment(host.docker, name, NET))!.ip;
}

/** The store's records, keys relative to the plugin's prefix. */
function storeDump(): Promise<Map<string, Record<string, unknown>>> {
  return consul ? consulDump(consul) : etcdDump(etcd!);
}

const storeServer = {
  down: () => (consul ? consul.down() : etcd!.down()),
  up: () => (consul ? consul.up() : etcd!.up()),
};

/** Every host's tables equal what the store says (checked once). */
async function converged(): Promise<boolean> {
  const store = await storeDump();
  for (const h of hosts) {
    if (!h.running()) continue;
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
    consul = await startConsul({ clientAddress: cluster.underlay.gateway });
    storeUrl = `consul://${consul.address}`;
  } else {
    etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
    storeUrl = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  }
  await Promise.all(hosts.map((h) => startPluginOn(h)));
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

/** A plugin's log lines from 3 s before to 1 s after any of the given instants (the lines carry a timestamp). */
function logLinesNear(host: string, output: string, instants: number[]): string[] {
  return output
    .split('\n')
    .filter((line) => {
      const ts = /"timestamp":"([^"]+)"/.exec(line)?.[1];
      const ms = ts ? Date.parse(ts) : NaN;
      return instants.some((at) => ms >= at - 3000 && ms <= at + 1000);
    })
    .slice(0, 40)
    .map((line) => `${host}: ${line.slice(0, 400)}`);
}

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value?: T; error?: string }> {
  const t0 = Date.now();
  try {
    const value = await fn();
    return { ms: Date.now() - t0, value };
  } catch (err) {
    return { ms: Date.now() - t0, error: err instanceof Error ? err.message : String(err) };
  }
}

test(`store outage of ${OUTAGE_S} s under traffic`, { skip, timeout: (OUTAGE_S + 150) * 1000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const a1 = await runSleeper(a, 'a1');
  const b1 = await runSleeper(b, 'b1');
  const c1 = await runSleeper(c, 'c1');
  await runSleeper(b, 'b-leaving');
  await waitFor(converged, { timeoutMs: 15_000, what: 'tables before the outage' });
  const monitors: [string, PingMonitor][] = [
    ['b1 → a1', await startPingMonitor(b.docker, 'b1', a1, 'out-a')],
    ['c1 → a1', await startPingMonitor(c.docker, 'c1', a1, 'out-a')],
    ['a1 → c1', await startPingMonitor(a.docker, 'a1', c1, 'out-c')],
    ['c1 → b1', await startPingMonitor(c.docker, 'c1', b1, 'out-b')],
  ];
  await sleep(1000);

  await storeServer.down();
  const downAt = Date.now();
  // New requests fail fast, with an error that says why.
  const run = await timed(() => runSleeper(a, 'during-outage'));
  const create = await timed(() =>
    b.docker.createNetwork({ Name: 'during', Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.71.0.0/24' }] } }),
  );
  const direct = await timed(() =>
    plugins.get(c.name)!.call('/NetworkDriver.Leave', JSON.stringify({ NetworkID: netIds.get(c.name), EndpointID: 'f'.repeat(64) })),
  );
  t.diagnostic(`during the outage: docker run failed after ${run.ms} ms: ${run.error?.slice(0, 300)}`);
  t.diagnostic(`during the outage: docker network create failed after ${create.ms} ms: ${create.error?.slice(0, 300)}`);
  t.diagnostic(`during the outage: a plugin call answered after ${direct.ms} ms: ${JSON.stringify(direct.value?.body).slice(0, 300)}`);
  assert.ok(run.error && STORE_NAME.test(run.error), `docker run fails naming the store: ${run.error}`);
  assert.ok(create.error && STORE_NAME.test(create.error), `network create fails naming the store: ${create.error}`);
  assert.equal(direct.value?.status, 503, JSON.stringify(direct.value));
  assert.match(String((direct.value?.body as { Err?: string }).Err), UNREACHABLE);
  for (const r of [run, create, direct]) assert.ok(r.ms < 15_000, `answered within 15 s (${r.ms} ms)`);
  await a.docker.getContainer('during-outage').remove({ force: true }).catch(() => undefined);

  // The kernel keeps forwarding: nothing of this host's tables depends on the store being up.
  const stillThere = await peerTables(c, netIds.get(c.name)!);
  assert.ok([...stillThere.neigh].some((e) => e.startsWith(`${a1} `)), 'C keeps its entries during the outage');
  await sleep(Math.max(0, OUTAGE_S * 1000 - (Date.now() - downAt)));

  await storeServer.up();
  const upAt = Date.now();
  // Changes at once, while watches are still reconnecting (their backoff reaches 5 s).
  const firstRun = await timed(() => retrying('docker run a2', () => runSleeper(a, 'a2'), 30, 500));
  await retrying('stop b-leaving', () => b.docker.getContainer('b-leaving').stop({ t: 0 }), 30, 500);
  await retrying('docker run c2', () => runSleeper(c, 'c2'), 30, 500);
  t.diagnostic(`after the store returned: first docker run succeeded after ${firstRun.ms} ms (retrying every 0.5 s)`);
  await waitFor(converged, { timeoutMs: 30_000, intervalMs: 250, what: 'every host to match the store after the outage' });
  t.diagnostic(`every host's tables match the store ${Date.now() - upAt} ms after the store returned`);

  const store = await storeDump();
  for (const h of hosts) assert.ok(store.has(`hosts/${h.name}`), `${h.name} registered after the outage`);
  for (const [name, m] of monitors) {
    const r = await m.stop();
    t.diagnostic(`ping ${name} across the outage: ${r.sent} sent, ${r.lost} lost`);
    if (r.lost > 0) {
      // When each lost request left, against the outage, and what the plugins logged then.
      const at = r.missing.map((seq) => m.startedAt + seq * 200);
      const when = at.map((ms, i) => `seq ${r.missing[i]}: ${((ms - downAt) / 1000).toFixed(1)} s after the store went down, ${((ms - upAt) / 1000).toFixed(1)} s after it returned`);
      const logs = [...plugins].flatMap(([host, p]) => logLinesNear(host, p.process.output(), at));
      assert.fail(`${name} lost ${r.lost} pings\n${when.join('\n')}\n${logs.join('\n')}`);
    }
  }

  // No duplicate allocations after the resync: 3 hosts × 5 concurrent runs.
  const ips = await Promise.all(hosts.flatMap((h) => Array.from({ length: 5 }, (_, i) => runSleeper(h, `${h.name}-after-${i}`))));
  const all = [...ips, a1, b1, c1];
  assert.equal(new Set(all).size, all.length, `distinct addresses: ${all.join(' ')}`);
  const addresses = [...(await storeDump()).keys()].filter((k) => k.startsWith(`ipam/addresses/${NETWORK_KEY}/`));
  const everyIp = new Set<string>();
  for (const h of hosts) for (const e of (await dockerEndpoints(h.docker, NET)).values()) everyIp.add(e.ip);
  assert.deepEqual(
    addresses.map((k) => k.split('/').pop()).filter((ip) => ip !== '10.70.0.1').sort(),
    [...everyIp].sort(),
    'address records are exactly the running containers',
  );
  await waitFor(converged, { timeoutMs: 15_000, what: 'tables after the concurrent runs' });
});

test('host death without a goodbye, and its return under the same name', { skip, timeout: 240_000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  await runSleeper(a, 'a-boot', true);
  await waitFor(converged, { timeoutMs: 15_000, what: 'tables before the host dies' });
  const vtepA = a.underlay!.address;

  const diedAt = Date.now();
  await a.crash();
  plugins.delete(a.name);
  for (const h of [b, c]) {
    await waitFor(async () => ![...(await peerTables(h, netIds.get(h.name)!)).fdb].some((e) => e.endsWith(` ${vtepA}`)), {
      timeoutMs: EXPIRY_BOUND_MS + 5000,
      intervalMs: 100,
      what: `A's entries gone on ${h.name}`,
    });
  }
  const gone = Date.now() - diedAt;
  t.diagnostic(`A's entries removed on B and C ${gone} ms after A died (lease TTL ${LEASE_TTL} s)`);
  assert.ok(gone < EXPIRY_BOUND_MS, `removal took ${gone} ms, target < ${EXPIRY_BOUND_MS / 1000} s (${backend})`);
  const stale = [...(await storeDump())].filter(([k, v]) => k.startsWith('endpoints/') && v.host === a.name && v.joined === true);
  assert.ok(stale.length >= 3, 'the dead host left its endpoints marked joined (no goodbye)');

  // While A boots, B must never show A's dead containers again: every entry pointing at A must
  // belong to an endpoint joined after the boot (addresses themselves may be handed out again).
  let watching = true;
  const seen = new Set<string>();
  const bootAt = Date.now();
  const watcher = (async () => {
    while (watching) {
      const atA = [...(await peerTables(b, netIds.get(b.name)!)).fdb].filter((e) => e.endsWith(` ${vtepA}`)).map((e) => e.split(' ')[0]!);
      if (atA.length > 0) {
        const store = await storeDump();
        for (const mac of atA) {
          const fresh = [...store].some(
            ([k, v]) => k.startsWith('endpoints/') && v.host === a.name && v.mac === mac && v.joined === true && Date.parse(String(v.created)) >= bootAt,
          );
          if (!fresh) seen.add(mac);
        }
      }
      await sleep(50);
    }
  })();

  const pluginMs = await startPluginOn(a); // the plugin's service starts before Docker's
  const registered = (await storeDump()).get(`hosts/${a.name}`);
  assert.ok(registered, 'A registered again');
  assert.equal(registered.vtep, vtepA);
  t.diagnostic(`A's plugin registered again ${pluginMs} ms after boot`);
  await a.startDaemon();
  // a-boot is started again by Docker, perhaps with another address: ask Docker which.
  await waitFor(
    async () => {
      const now = await attachment(a.docker, 'a-boot', NET).catch(() => undefined);
      return now !== undefined && (await pingFrom(b.docker, 'b1', now.ip, 1, 1)) >= 1;
    },
    { timeoutMs: 60_000, intervalMs: 200, what: 'a-boot reachable from B after A came back' },
  );
  t.diagnostic(`a-boot (--restart always) reachable from B ${Date.now() - bootAt} ms after A began to boot`);
  const nowIp = (await attachment(a.docker, 'a-boot', NET))!.ip;
  assert.ok((await pingFrom(c.docker, 'c1', nowIp, 1)) >= 1, 'and from C');
  assert.ok((await pingFrom(a.docker, 'a-boot', (await attachment(c.docker, 'c1', NET))!.ip, 1)) >= 1, 'and A reaches C');

  // Docker's start-up cleanup of the dead endpoints reaches the plugin; the store ends up exact.
  await waitFor(
    async () => {
      const store = await storeDump();
      const mine = [...store].filter(([k, v]) => k.startsWith('endpoints/') && v.host === a.name).map(([, v]) => String(v.id));
      return mine.sort().join() === [...(await dockerEndpoints(a.docker, NET)).keys()].sort().join();
    },
    { timeoutMs: 30_000, what: "A's endpoint records to be exactly Docker's live endpoints" },
  );
  await waitFor(converged, { timeoutMs: 15_000, what: 'tables after A came back' });
  watching = false;
  await watcher;
  assert.deepEqual([...seen], [], "B showed entries of A's dead containers again (MACs)");
});
