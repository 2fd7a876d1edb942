/**
 * Issue "Resilience", items 1 and 2, through real Docker engines.
 *
 * 1. Crash anywhere: a user's create → run → connect → disconnect → stop → rm → network rm
 *    cycle on host A, with the plugin on A killed (SIGKILL) at a random moment of it and
 *    started again at once (sometimes killed again while it recovers). After each iteration:
 *    no leaked namespaces, veths, mounts or store records on A; the long-running containers on
 *    A and B still reach each other; the continuous ping between them never lost a reply.
 *    TSO_CRASH_ITERATIONS (default 10; TSO_FULL=1: 100) and TSO_SEED replay a schedule.
 * 2. Docker daemon restart with running `--restart always` containers: graceful (SIGTERM) with
 *    the plugin restarted while Docker is down (it never needs docker.sock), then a crash
 *    (SIGKILL): the network and cross-host reachability come back.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { NETNS_DIR, type PluginOptions, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter, sleep, waitFor } from '../helpers/proc';
import { readLocalStoreSnapshot } from '../../src/store/local';
import {
  FULL,
  STORE_PREFIX,
  attachment,
  dockerEndpoints,
  etcdDump,
  inOverlay,
  kernelState,
  killPlugin,
  percentile,
  pingFrom,
  prng,
  retrying,
  seedFromEnv,
  spawnPlugin,
  startPingMonitor,
  startPluginTimed,
} from '../helpers/resilience';

const skip = e2eSkipReason(['/usr/bin/etcd']);
cleanupAfter();

const ITERATIONS = Number(process.env.TSO_CRASH_ITERATIONS ?? (FULL ? 100 : 10));
/** The embedded store (single-host default) gets its own, shorter loop. */
const LOCAL_ITERATIONS = Number(process.env.TSO_CRASH_LOCAL_ITERATIONS ?? Math.max(1, Math.round(ITERATIONS / 2)));
const SEED = seedFromEnv();
const NET = 'crashnet';
const SUBNET = '10.60.0.0/24';
const CYCLE_SUBNET = '10.61.0.0/24';
const LOCAL_NET = 'localnet';
const LEASE_TTL = 5;

let cluster: Cluster;
let etcd: EtcdServer;
let a: DockerHost;
let b: DockerHost;
let c: DockerHost;
let storeUrl: string;
const plugins = new Map<string, PluginProcess>();
let netIdA = '';

/**
 * Where the plugin is killed: a host, the network its long-running container is on, the
 * container that must stay reachable from elsewhere, and how to read the host's store.
 */
interface Site {
  host: DockerHost;
  net: string;
  netId: string;
  anchor: string;
  /** A container elsewhere (another host, or the same one for the embedded store) that pings `anchor`. */
  peer: { host: DockerHost; container: string };
  pluginOptions: PluginOptions;
  dump(): Promise<Map<string, Record<string, unknown>>>;
  /**
   * Addresses the site's crash loop saw left allocated by a lost ReleaseAddress (a known gap,
   * docs/reliability.md): every later leak check of the site, in any test, leaves exactly these out.
   */
  lostReleases: Set<string>;
}
let etcdSite: Site;
let localSite: Site;

async function plugin(site: Site): Promise<number> {
  const { plugin: p, ms } = await startPluginTimed(site.host, site.pluginOptions);
  plugins.set(site.host.name, p);
  return ms;
}

async function runSleeper(host: DockerHost, name: string, network: string, restartAlways = false): Promise<void> {
  const ctr = await host.docker.createContainer({
    Image: cluster.image,
    name,
    Cmd: ['sleep', '100000'],
    StopTimeout: 1,
    HostConfig: { NetworkMode: network, ...(restartAlways ? { RestartPolicy: { Name: 'always' } } : {}) },
  });
  await ctr.start();
}

/** The embedded store's committed state (snapshot + log), as the etcd dump shows etcd: relative keys, JSON values. */
async function localDump(host: DockerHost): Promise<Map<string, Record<string, unknown>>> {
  const out = new Map<string, Record<string, unknown>>();
  for (const e of await readLocalStoreSnapshot(`${host.dir}/tsoverlay-state`, STORE_PREFIX)) {
    out.set(e.key, JSON.parse(e.value) as Record<string, unknown>);
  }
  return out;
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 3 });
  [a, b, c] = cluster.hosts as [DockerHost, DockerHost, DockerHost];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  storeUrl = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  const etcdOptions: PluginOptions = { store: storeUrl, extraArgs: ['--lease-ttl', String(LEASE_TTL)] };
  etcdSite = { host: a, net: NET, netId: '', anchor: 'a-anchor', peer: { host: b, container: 'b-anchor' }, pluginOptions: etcdOptions, dump: () => etcdDump(etcd), lostReleases: new Set() };
  localSite = { host: c, net: LOCAL_NET, netId: '', anchor: 'c-anchor', peer: { host: c, container: 'c-peer' }, pluginOptions: {}, dump: () => localDump(c), lostReleases: new Set() };
  await Promise.all([plugin(etcdSite), plugin({ ...etcdSite, host: b }), plugin(localSite)]);
  for (const h of [a, b]) {
    await h.docker.createNetwork({ Name: NET, Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: SUBNET }] } });
  }
  await c.docker.createNetwork({ Name: LOCAL_NET, Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.62.0.0/24' }] } });
  netIdA = ((await a.docker.getNetwork(NET).inspect()) as { Id: string }).Id;
  etcdSite.netId = netIdA;
  localSite.netId = ((await c.docker.getNetwork(LOCAL_NET).inspect()) as { Id: string }).Id;
  await runSleeper(a, 'a-anchor', NET);
  await runSleeper(b, 'b-anchor', NET);
  await runSleeper(c, 'c-anchor', LOCAL_NET);
  await runSleeper(c, 'c-peer', LOCAL_NET);
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
});

/**
 * What the site's host must look like whenever nothing is in flight: exactly its running
 * containers' state, nothing else, in the kernel, the mount table and the store.
 */
async function assertNoLeaks(site: Site, when: string): Promise<void> {
  const { host, lostReleases } = site;
  const running = (await host.docker.listContainers()).map((x) => x.Names[0]!.slice(1));
  const endpoints = await dockerEndpoints(host.docker, site.net);
  const kernel = await kernelState(host);
  assert.deepEqual(kernel.hostVeths, [], `${when}: veths left in ${host.name}'s namespace`);
  assert.equal(kernel.overlayFiles.length, 1, `${when}: overlay namespace files on ${host.name}: ${kernel.overlayFiles.join(' ')}`);
  assert.match(kernel.overlayFiles[0]!, new RegExp(`^\\d+-${site.netId.slice(0, 10)}$`), when);
  assert.deepEqual(kernel.netnsMounts.map((m) => m.split('/').pop()), kernel.overlayFiles, `${when}: namespace mounts on ${host.name}`);
  const ports = (await inOverlay(host, site.netId, 'ip -o link show master br0')).split('\n').filter((l) => / ve[0-9a-f]+@/.test(l));
  assert.equal(ports.length, endpoints.size, `${when}: br0 ports ${ports.length} vs Docker's endpoints ${endpoints.size}`);

  const store = await site.dump();
  const mine = [...store].filter(([k, v]) => k.startsWith('endpoints/') && v.host === host.name);
  assert.deepEqual(
    mine.map(([, v]) => String(v.id)).sort(),
    [...endpoints.keys()].sort(),
    `${when}: endpoint records of ${host.name} vs Docker's endpoints (${running.join(',')})`,
  );
  for (const [k, v] of mine) assert.equal(v.joined, true, `${when}: ${k} not joined`);
  const addresses = [...store]
    .filter(([k, v]) => k.startsWith('ipam/addresses/') && v.host === host.name && v.kind === 'endpoint' && !lostReleases.has(k))
    .map(([k]) => k.split('/').pop());
  assert.deepEqual(addresses.sort(), [...endpoints.values()].map((e) => e.ip).sort(), `${when}: addresses held by ${host.name}`);
  const stray = [...store.keys()].filter((k) => k.includes(CYCLE_SUBNET.split('/')[0]!));
  assert.deepEqual(stray, [], `${when}: records of the removed cycle network`);
  const netids = [...store].filter(([k, v]) => k.startsWith('netids/') && v.host === host.name).map(([k]) => k.slice('netids/'.length));
  assert.deepEqual(netids, [site.netId], `${when}: ${host.name}'s network ids in the store`);
  assert.equal([...store.keys()].filter((k) => k.startsWith('vni/')).length, 1, `${when}: VNI records`);
}

async function assertReachable(site: Site, when: string): Promise<void> {
  const ip = (await attachment(site.host.docker, site.anchor, site.net))!.ip;
  const back = (await attachment(site.peer.host.docker, site.peer.container, site.net))!.ip;
  assert.ok((await pingFrom(site.peer.host.docker, site.peer.container, ip, 1)) >= 1, `${when}: ${site.anchor} unreachable`);
  assert.ok((await pingFrom(site.host.docker, site.anchor, back, 1)) >= 1, `${when}: ${site.anchor} cannot reach ${site.peer.container}`);
}

interface CycleResult {
  failedStep?: string;
  error?: string;
}

/** One user cycle on the site's host; stops at the first failed step (the caller cleans up like a user would). */
async function cycle(site: Site, i: number): Promise<CycleResult> {
  const { docker } = site.host;
  const name = `cyc${i}`;
  const ctr = `c${i}`;
  const steps: [string, () => Promise<unknown>][] = [
    ['network create', () => docker.createNetwork({ Name: name, Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: CYCLE_SUBNET }] } })],
    ['create', () => docker.createContainer({ Image: cluster.image, name: ctr, Cmd: ['sleep', '100000'], HostConfig: { NetworkMode: name } })],
    ['start', () => docker.getContainer(ctr).start()],
    ['connect', () => docker.getNetwork(site.net).connect({ Container: ctr })],
    ['disconnect', () => docker.getNetwork(site.net).disconnect({ Container: ctr })],
    ['stop', () => docker.getContainer(ctr).stop({ t: 0 })],
    ['rm', () => docker.getContainer(ctr).remove()],
    ['network rm', () => docker.getNetwork(name).remove()],
  ];
  for (const [step, fn] of steps) {
    try {
      await fn();
    } catch (err) {
      return { failedStep: step, error: err instanceof Error ? err.message : String(err) };
    }
  }
  return {};
}

/** After a failed cycle: what a user does (remove the container and the network, retrying). */
async function cleanUpCycle(site: Site, i: number): Promise<void> {
  const { docker } = site.host;
  await retrying(`rm -f c${i}`, async () => {
    await docker.getContainer(`c${i}`).remove({ force: true }).catch((err: { statusCode?: number }) => {
      if (err.statusCode !== 404) throw err;
    });
  });
  await retrying(`network rm cyc${i}`, async () => {
    await docker.getNetwork(`cyc${i}`).remove().catch((err: { statusCode?: number }) => {
      if (err.statusCode !== 404) throw err;
    });
  });
}

/** The crash loop on one site; returns its figures for the diagnostics. */
async function crashLoop(site: Site, iterations: number, seed: number, t: { diagnostic(s: string): void }): Promise<void> {
  const random = prng(seed);
  t.diagnostic(`${site.host.name}: seed ${seed} (replay with TSO_SEED=${SEED})`);
  await assertNoLeaks(site, 'before');
  // How long one undisturbed cycle takes: kill points are drawn from it.
  const t0 = Date.now();
  assert.deepEqual(await cycle(site, 0), {}, 'an undisturbed cycle works');
  const cycleMs = Date.now() - t0;
  await assertNoLeaks(site, 'after an undisturbed cycle');
  t.diagnostic(`${site.host.name}: one undisturbed cycle (8 Docker operations, 14 plugin calls) takes ${cycleMs} ms`);

  const ip = (await attachment(site.host.docker, site.anchor, site.net))!.ip;
  const monitor = await startPingMonitor(site.peer.host.docker, site.peer.container, ip, `crash-${site.host.name}`);
  const restartMs: number[] = [];
  const failures = new Map<string, number>();
  let survived = 0;
  let doubleKills = 0;
  /**
   * Docker re-sends a request whose connection broke with an empty body; when the plugin died
   * before reading it, nothing can recover it (docs/reliability.md). A lost ReleaseAddress is the
   * one such loss that leaves a record (the address stays allocated): counted and reported.
   */
  const lostReleases = site.lostReleases;
  const lost = new Map<string, number>();
  for (let i = 1; i <= iterations; i++) {
    const killAt = Math.floor(random() * cycleMs * 1.1);
    const running = cycle(site, i);
    await sleep(killAt);
    await killPlugin(plugins.get(site.host.name)!);
    if (random() < 0.25) {
      // Killed again while it recovers (start-up sweep, registration, resync).
      doubleKills++;
      const early = spawnPlugin(site.host, site.pluginOptions.store ?? `local://${site.host.dir}/tsoverlay-state`, site.pluginOptions.extraArgs);
      await sleep(Math.floor(random() * 800));
      process.kill(early.pid, 'SIGKILL');
      await early.exited;
    }
    restartMs.push(await plugin(site));
    const result = await running;
    for (const m of plugins.get(site.host.name)!.process.output().matchAll(/"message":"empty request body and nothing to replay[^}]*"method":"([A-Za-z.]+)"/g)) {
      lost.set(m[1]!, (lost.get(m[1]!) ?? 0) + 1);
      if (m[1] === 'IpamDriver.ReleaseAddress') {
        const endpoints = new Set([...(await dockerEndpoints(site.host.docker, site.net)).values()].map((e) => e.ip));
        for (const [k, v] of await site.dump()) {
          if (k.startsWith('ipam/addresses/') && v.host === site.host.name && v.kind === 'endpoint' && !endpoints.has(k.split('/').pop()!)) lostReleases.add(k);
        }
      }
    }
    if (result.failedStep) {
      failures.set(result.failedStep, (failures.get(result.failedStep) ?? 0) + 1);
      t.diagnostic(`${site.host.name} iteration ${i}: killed at ${killAt} ms; "${result.failedStep}" failed: ${result.error?.slice(0, 200)}`);
      await cleanUpCycle(site, i);
    } else {
      survived++;
    }
    await assertNoLeaks(site, `iteration ${i} (seed ${seed}, kill at ${killAt} ms)`);
    await assertReachable(site, `iteration ${i}`);
  }
  const ping = await monitor.stop();
  t.diagnostic(
    `${site.host.name}: ${iterations} crashes (${doubleKills} killed twice): ${survived} cycles completed with Docker's own retries only; ` +
      `failed steps that needed the user's retry: ${JSON.stringify(Object.fromEntries(failures))}`,
  );
  t.diagnostic(
    `${site.host.name}: requests Docker re-sent with an empty body that the dead plugin had not read: ${JSON.stringify(Object.fromEntries(lost))}; ` +
      `addresses left allocated by a lost ReleaseAddress: ${lostReleases.size}`,
  );
  t.diagnostic(`${site.host.name}: plugin restart until serving: median ${percentile(restartMs, 50)} ms, max ${Math.max(...restartMs)} ms`);
  t.diagnostic(`${site.host.name}: continuous ping ${site.peer.container} → ${site.anchor} during the loop: ${ping.sent} sent, ${ping.lost} lost`);
  assert.equal(ping.lost, 0, 'running containers never lost connectivity');
}

test(`crash anywhere: ${ITERATIONS} × SIGKILL of the plugin during create/join/leave/delete through Docker (etcd, two hosts)`, { skip, timeout: (60 + ITERATIONS * 25) * 1000 }, async (t) => {
  await crashLoop(etcdSite, ITERATIONS, SEED, t);
});

test(`crash anywhere with the embedded store: ${LOCAL_ITERATIONS} × SIGKILL (single host)`, { skip, timeout: (60 + LOCAL_ITERATIONS * 25) * 1000 }, async (t) => {
  await crashLoop(localSite, LOCAL_ITERATIONS, SEED + 1, t);
});

test('start-up sweep: what a crash can leave behind is removed before the host registers again', { skip, timeout: 120_000 }, async (t) => {
  // The states a SIGKILL can freeze (the random loop above hits them only by chance), made by hand.
  await killPlugin(plugins.get(a.name)!);
  const overlayFile = (await kernelState(a)).overlayFiles[0]!;
  const fakeEndpoint = 'feedc0ffee42'.repeat(5) + 'abcd';
  const aIp = (await attachment(a.docker, 'a-anchor', NET))!.ip;
  const store = await etcdDump(etcd);
  const anchorRecord = [...store].find(([k, v]) => k.startsWith('endpoints/') && v.host === a.name)!;
  const networkKey = anchorRecord[0].split('/')[1]!;
  const script = [
    // a veth pair made for a Join that never completed (no endpoint record)
    'ip link add vcdeadbeef123 type veth peer name vedeadbeef123',
    // a bridge port in the live overlay whose endpoint is gone
    `nsenter --net=${NETNS_DIR}/${overlayFile} ip link add vefeedface012 type veth peer name tmpfeedface`,
    `nsenter --net=${NETNS_DIR}/${overlayFile} ip link set vefeedface012 master br0`,
    // the namespace of a network with no local container left, and an empty file (crash before the mount)
    `touch ${NETNS_DIR}/3-0123456789 && unshare --net=${NETNS_DIR}/3-0123456789 true`,
    `touch ${NETNS_DIR}/4-abcdefabcd`,
  ].join(' && ');
  const made = await a.exec(['sh', '-c', script], { allowFailure: true });
  assert.equal(made.code, 0, made.stderr);
  // An endpoint the store says is joined on A whose container (and port) is gone, as its
  // CreateEndpoint left it: the record and A's index entry of it.
  await etcd.etcdctl(
    'put',
    `tsoverlay/v1/endpoints/${networkKey}/${fakeEndpoint}`,
    JSON.stringify({ id: fakeEndpoint, networkId: netIdA, ip: '10.60.0.250', mac: '02:42:0a:3c:00:fa', locator: a.underlay!.address, host: a.name, joined: true, created: new Date().toISOString() }),
  );
  await etcd.etcdctl('put', `tsoverlay/v1/hostendpoints/${a.name}/${networkKey}/${fakeEndpoint}`, JSON.stringify({ created: new Date().toISOString() }));
  const before = await kernelState(a);
  assert.ok(before.hostVeths.includes('vcdeadbeef123') && before.overlayFiles.length === 3, JSON.stringify(before));

  const ms = await plugin(etcdSite);
  t.diagnostic(`plugin restarted in ${ms} ms and swept the leftovers`);
  const after = await kernelState(a);
  assert.deepEqual(after.hostVeths, [], 'stray veth removed');
  assert.deepEqual(after.overlayFiles, [overlayFile], 'unused and empty namespace files removed');
  assert.deepEqual(after.netnsMounts.map((m) => m.split('/').pop()), [overlayFile], 'their mounts too');
  assert.doesNotMatch(await inOverlay(a, netIdA, 'ip -o link'), /vefeedface012/, 'orphan port removed');
  const fake = (await etcdDump(etcd)).get(`endpoints/${networkKey}/${fakeEndpoint}`);
  assert.equal(fake?.joined, false, 'an endpoint without its port is withdrawn');
  const netIdB = ((await b.docker.getNetwork(NET).inspect()) as { Id: string }).Id;
  await waitFor(async () => !(await inOverlay(b, netIdB, 'ip neigh show dev vxlan0')).includes('10.60.0.250 '), {
    what: 'B to drop the withdrawn endpoint',
  });
  assert.ok((await pingFrom(b.docker, 'b-anchor', aIp, 1)) >= 1, 'the real container is still reachable');
  await etcd.etcdctl('del', `tsoverlay/v1/endpoints/${networkKey}/${fakeEndpoint}`);
  await etcd.etcdctl('del', `tsoverlay/v1/hostendpoints/${a.name}/${networkKey}/${fakeEndpoint}`);
  await assertNoLeaks(etcdSite, 'after the sweep');
});

test('Docker daemon restart with --restart always containers: network and reachability come back', { skip, timeout: 240_000 }, async (t) => {
  await runSleeper(a, 'a-web', NET, true);
  const bAnchor = async () => (await attachment(b.docker, 'b-anchor', NET))!.ip;
  const webIp = async () => (await attachment(a.docker, 'a-web', NET).catch(() => undefined))?.ip;
  const reachable = async (ip: string | undefined) => ip !== undefined && (await pingFrom(b.docker, 'b-anchor', ip, 1, 1)) >= 1;
  assert.ok(await reachable(await webIp()), 'a-web reachable before');
  assert.ok((await pingFrom(a.docker, 'a-web', await bAnchor(), 1)) >= 1);

  // Graceful restart; the plugin is restarted while Docker is down: it needs no docker.sock.
  await a.restartDaemon({ start: false });
  await killPlugin(plugins.get(a.name)!);
  const pluginMs = await plugin(etcdSite);
  t.diagnostic(`plugin restarted in ${pluginMs} ms with dockerd stopped`);
  const started = Date.now();
  await a.startDaemon();
  await waitFor(async () => reachable(await webIp()), { timeoutMs: 60_000, intervalMs: 300, what: 'a-web reachable after dockerd restart' });
  t.diagnostic(`graceful dockerd restart: a-web reachable from B ${Date.now() - started} ms after dockerd started`);
  assert.ok((await pingFrom(a.docker, 'a-web', await bAnchor(), 1)) >= 1, 'A → B after restart');

  // Crash: SIGKILL dockerd, start it again.
  const crashed = Date.now();
  await a.restartDaemon({ kill: true });
  await waitFor(async () => reachable(await webIp()), { timeoutMs: 60_000, intervalMs: 300, what: 'a-web reachable after dockerd crash' });
  t.diagnostic(`dockerd SIGKILL + start: a-web reachable from B ${Date.now() - crashed} ms after the kill`);

  // Whatever Docker did at its start (stale endpoints, replays), A's state is exactly its containers'.
  await waitFor(async () => (await a.docker.listContainers()).length >= 1, { what: 'containers listed' });
  const endpoints = await dockerEndpoints(a.docker, NET);
  const store = await etcdDump(etcd);
  const mine = [...store].filter(([k, v]) => k.startsWith('endpoints/') && v.host === a.name).map(([, v]) => String(v.id));
  await waitFor(
    async () => {
      const now = await etcdDump(etcd);
      const ids = [...now].filter(([k, v]) => k.startsWith('endpoints/') && v.host === a.name && v.joined === true).map(([, v]) => String(v.id));
      return ids.sort().join() === [...(await dockerEndpoints(a.docker, NET)).keys()].sort().join();
    },
    { timeoutMs: 20_000, what: `A's joined endpoint records to match Docker's (${mine.length} records, ${endpoints.size} endpoints)` },
  );
  assert.deepEqual((await kernelState(a)).hostVeths, []);
  await a.docker.getContainer('a-web').remove({ force: true });
});
