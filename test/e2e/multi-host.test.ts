/**
 * Issue "Multi-host": three Docker hosts in network namespaces on one underlay bridge, a real
 * etcd (or, with TSO_STORE_BACKEND=consul, a real Consul server: test/e2e/consul/) on the
 * underlay, one tsoverlay per host. Containers on different hosts share one
 * VXLAN segment; peers are programmed from the store before any traffic; a stopped container
 * and a dead host disappear from every other host's tables.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { e2eSkipReason, heavyCaseSkip, runContainer, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { consulSkipReason, startConsul, type ConsulServer } from '../helpers/consul';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { NETNS_DIR, startPlugin, type PluginOptions, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter, spawnTracked, waitFor } from '../helpers/proc';
import { dockerExec } from '../helpers/resilience';

const backend = process.env.TSO_STORE_BACKEND === 'consul' ? 'consul' : 'etcd';
const skip = e2eSkipReason(backend === 'etcd' ? ['/usr/bin/etcd'] : []) || (backend === 'consul' && consulSkipReason());

cleanupAfter();

const NET = 'demonet';
const SUBNET = '192.168.0.0/24';
const GATEWAY = '192.168.0.1';
// Consul refuses session TTLs under 10 s, and may take up to twice the TTL to end one.
const LEASE_TTL = backend === 'consul' ? 10 : 5;
const EXPIRY_BOUND_MS = backend === 'consul' ? 2 * LEASE_TTL * 1000 + 5000 : 10_000;
let cluster: Cluster;
let etcd: EtcdServer | undefined;
let consul: ConsulServer | undefined;
let pluginOptions: PluginOptions;
let hosts: DockerHost[];
const plugins: PluginProcess[] = [];

async function sh(host: DockerHost, script: string): Promise<string> {
  const r = await host.exec(['sh', '-c', script], { allowFailure: true });
  return r.stdout;
}

/** Runs `ip`/`bridge` inside the host's overlay namespace for the network (empty if none). */
function overlay(host: DockerHost, cmd: string): Promise<string> {
  return sh(host, `f=$(ls ${NETNS_DIR} 2>/dev/null | head -n1); [ -n "$f" ] && nsenter --net=${NETNS_DIR}/$f ${cmd}`);
}

async function startSleeper(host: DockerHost, name: string, ip?: string): Promise<void> {
  const c = await host.docker.createContainer({
    Image: cluster.image,
    name,
    Cmd: ['sleep', '3600'],
    HostConfig: { NetworkMode: NET },
    ...(ip ? { NetworkingConfig: { EndpointsConfig: { [NET]: { IPAMConfig: { IPv4Address: ip } } } } } : {}),
  });
  await c.start();
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 3 });
  hosts = [...cluster.hosts];
  let store: string;
  if (backend === 'consul') {
    consul = await startConsul({ clientAddress: cluster.underlay.gateway });
    store = `consul://${consul.address}`;
  } else {
    etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
    store = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  }
  pluginOptions = { store, extraArgs: ['--lease-ttl', String(LEASE_TTL)] };
  for (const host of hosts) plugins.push(await startPlugin(host, pluginOptions));
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
  await consul?.stop();
});

test('same network on every host: one VNI; C0 on A reachable from B; entries before traffic; VXLAN on the wire', { skip, timeout: 240_000 }, async (t) => {
  for (const host of hosts) {
    await host.docker.createNetwork({ Name: NET, Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: SUBNET }] } });
  }
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  // Local containers on B and C, so that their overlay namespaces exist; none sends traffic.
  await startSleeper(b, 'b-idle');
  await startSleeper(c, 'c-idle');
  for (const host of [b, c]) assert.match(await overlay(host, 'ip -d link show vxlan0'), /vxlan id 256 /, `VNI on ${host.name}`);

  const started = Date.now();
  await startSleeper(a, 'C0', '192.168.0.100');
  const runDone = Date.now();
  const neighbour = /192\.168\.0\.100 lladdr 02:42:c0:a8:00:64 PERMANENT/;
  await waitFor(async () => neighbour.test(await overlay(b, 'ip neigh show dev vxlan0')), { timeoutMs: 10_000, what: 'neighbour entry on B' });
  const visible = Date.now();
  t.diagnostic(`docker run on A took ${runDone - started} ms; entries on B ${visible - started} ms after the run started (${visible - runDone} ms after it returned)`);
  for (const host of [b, c]) {
    assert.match(await overlay(host, 'ip neigh show dev vxlan0'), neighbour, `neighbour on ${host.name}`);
    assert.match(
      await overlay(host, 'bridge fdb show dev vxlan0'),
      // link-netnsid: vxlan0's UDP socket lives in the host namespace, as with Docker's overlay.
      new RegExp(`02:42:c0:a8:00:64 dst ${a.underlay!.address.replace(/\./g, '\\.')}( link-netnsid \\d+)? self permanent`),
      `fdb on ${host.name}`,
    );
  }

  // Capture on the underlay bridge while B pings C0 on A.
  const capture = spawnTracked(['tcpdump', '-l', '-n', '-v', '-i', cluster.underlay.bridge, '-c', '4', 'udp port 4789'], { name: 'tcpdump' });
  await capture.waitForOutput(/listening on/, 10_000);
  const ping = await runContainer(b.docker, cluster.image, ['ping', '-c', '3', '-W', '2', '192.168.0.100'], { network: NET });
  assert.equal(ping.exitCode, 0, `B → C0: ${ping.stdout}${ping.stderr}`);
  assert.match(ping.stdout, /3 packets received/);
  await waitFor(() => !capture.running(), { timeoutMs: 10_000, what: 'tcpdump to see 4 packets' }).catch(() => capture.stop());
  const wire = capture.output();
  assert.match(wire, /VXLAN, flags \[I\] \(0x08\), vni 256/);
  assert.match(wire, new RegExp(`${b.underlay!.address.replace(/\./g, '\\.')}\\.\\d+ > ${a.underlay!.address.replace(/\./g, '\\.')}\\.4789`));

  // And the other way: A → a container on B.
  const bIp = ((await b.docker.getContainer('b-idle').inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string }> } })
    .NetworkSettings.Networks[NET]!.IPAddress;
  const back = await runContainer(a.docker, cluster.image, ['ping', '-c', '2', '-W', '2', bIp], { network: NET });
  assert.equal(back.exitCode, 0, `A → B: ${back.stdout}${back.stderr}`);
});

test('distributed store: default IPAM refused with a clear error; -o vni=N is one network on every host', { skip, timeout: 120_000 }, async () => {
  const [a, , c] = hosts as [DockerHost, DockerHost, DockerHost];
  await assert.rejects(
    a.docker.createNetwork({ Name: 'dflt', Driver: 'tsoverlay', IPAM: { Config: [{ Subnet: '10.77.0.0/24' }] } }),
    /--ipam-driver tsoverlay/,
  );
  for (const host of hosts) {
    await host.docker.createNetwork({ Name: 'vnet', Driver: 'tsoverlay', Options: { vni: '5000' }, IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.78.0.0/24' }] } });
  }
  const target = await a.docker.createContainer({ Image: cluster.image, name: 'vtarget', Cmd: ['sleep', '3600'], HostConfig: { NetworkMode: 'vnet' } });
  await target.start();
  const ping = await runContainer(c.docker, cluster.image, ['sh', '-c', 'ping -c 2 -W 2 10.78.0.2'], { network: 'vnet' });
  assert.equal(ping.exitCode, 0, `C → A on vni 5000: ${ping.stdout}${ping.stderr}`);
  const devices = await sh(a, `for f in ${NETNS_DIR}/*; do nsenter --net=$f ip -d link show vxlan0; done`);
  assert.match(devices, /vxlan id 5000 /);
  await target.remove({ force: true });
  for (const host of hosts) await host.docker.getNetwork('vnet').remove();
});

/** `nslookup name` in `container`, asked straight of its host's DNS listener on the network's gateway. */
async function lookupAtGateway(host: DockerHost, container: string, name: string): Promise<string> {
  const r = await dockerExec(host.docker, container, ['nslookup', name, GATEWAY]);
  return `${r.stdout}${r.stderr}`;
}

test('names across hosts on this store: C0 on A resolves on B and C through their DNS listeners', { skip, timeout: 120_000 }, async () => {
  const [, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  for (const [host, container] of [[b, 'b-idle'], [c, 'c-idle']] as const) {
    await waitFor(async () => /Address:\s+192\.168\.0\.100/.test(await lookupAtGateway(host, container, 'C0')), { timeoutMs: 20_000, what: `C0 by name on ${host.name}` });
  }
});

test('a stopped container disappears from every other host', { skip, timeout: 120_000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const started = Date.now();
  await a.docker.getContainer('C0').stop({ t: 0 });
  for (const host of [b, c]) {
    await waitFor(async () => !/192\.168\.0\.100 /.test(await overlay(host, 'ip neigh show dev vxlan0')), { timeoutMs: 10_000, what: `neighbour gone on ${host.name}` });
    await waitFor(async () => !/02:42:c0:a8:00:64/.test(await overlay(host, 'bridge fdb show')), { timeoutMs: 10_000, what: `fdb gone on ${host.name}` });
  }
  t.diagnostic(`entries removed on B and C ${Date.now() - started} ms after docker stop began`);
  // Its name goes with it: NXDOMAIN from B's listener.
  await waitFor(async () => /NXDOMAIN|can't find/i.test(await lookupAtGateway(b, 'b-idle', 'C0')), { timeoutMs: 10_000, what: 'C0 NXDOMAIN on B' });
  await a.docker.getContainer('C0').remove({ force: true });
});

test('3 hosts x 20 concurrent docker run: 60 distinct addresses, all reachable', { skip: skip || heavyCaseSkip('60 concurrent docker run'), timeout: 300_000 }, async (t) => {
  const started = Date.now();
  const runtimeRetries: string[] = [];
  const ids = await Promise.all(
    hosts.flatMap((host) =>
      Array.from({ length: 20 }, async (_, i) => {
        const name = `${host.name}-w${i}`;
        const create = () => host.docker.createContainer({ Image: cluster.image, name, Cmd: ['sleep', '3600'], HostConfig: { NetworkMode: NET } });
        let c = await create();
        try {
          await c.start();
        } catch (err) {
          // runc's prestart hook (Docker's libnetwork-setkey) occasionally fails under many
          // parallel starts on a loaded machine, before the container runs; a user runs it again.
          // Anything else, and a second failure, fails the test.
          const message = err instanceof Error ? err.message : String(err);
          if (!/OCI runtime create failed/.test(message)) throw err;
          runtimeRetries.push(`${name}: ${message.slice(0, 200)}`);
          await c.remove({ force: true });
          c = await create();
          await c.start();
        }
        const info = (await c.inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string; MacAddress: string }> } };
        return { host, ip: info.NetworkSettings.Networks[NET]!.IPAddress, mac: info.NetworkSettings.Networks[NET]!.MacAddress };
      }),
    ),
  );
  t.diagnostic(`60 concurrent docker run took ${Date.now() - started} ms; runc start failures run again: ${runtimeRetries.length}`);
  for (const r of runtimeRetries) t.diagnostic(`  ${r}`);
  const ips = ids.map((x) => x.ip);
  assert.equal(new Set(ips).size, 60, `distinct addresses: ${ips.join(' ')}`);
  assert.equal(new Set(ids.map((x) => x.mac)).size, 60);
  for (const host of hosts) {
    const script = ips.map((ip) => `ping -c1 -W2 ${ip} >/dev/null || echo FAIL ${ip}`).join('; ');
    const r = await runContainer(host.docker, cluster.image, ['sh', '-c', `${script}; echo done`], { network: NET, timeoutMs: 120_000 });
    assert.equal(r.stdout.trim(), 'done', `unreachable from ${host.name}: ${r.stdout}`);
  }
});

test('a plugin restart keeps traffic flowing and the network usable', { skip, timeout: 180_000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const bIp = ((await b.docker.getContainer('b-idle').inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string }> } })
    .NetworkSettings.Networks[NET]!.IPAddress;
  // A container on A that B knows before its plugin goes (one started meanwhile is unknown to
  // B until B's plugin is back).
  await startSleeper(a, 'a-keep');
  const keep = await dockerExec(a.docker, 'a-keep', ['ping', '-c', '1', '-W', '2', bIp]);
  assert.equal(keep.exitCode, 0, `A → B before: ${keep.stdout}${keep.stderr}`);
  await plugins[1]!.stop();
  // The kernel keeps forwarding while the plugin is down.
  const during = await dockerExec(a.docker, 'a-keep', ['ping', '-c', '2', '-W', '2', bIp]);
  assert.equal(during.exitCode, 0, `A → B with B's plugin down: ${during.stdout}${during.stderr}`);
  const restarted = Date.now();
  plugins[1] = await startPlugin(b, pluginOptions);
  t.diagnostic(`plugin on B serving again ${Date.now() - restarted} ms after its start`);
  const after = await runContainer(c.docker, cluster.image, ['ping', '-c', '2', '-W', '2', bIp], { network: NET });
  assert.equal(after.exitCode, 0, `C → B after B's plugin restarted: ${after.stdout}${after.stderr}`);
  // A new container on B (its plugin answering Docker again) is reachable from A.
  const fresh = await b.docker.createContainer({ Image: cluster.image, name: 'b-fresh', Cmd: ['sleep', '3600'], HostConfig: { NetworkMode: NET } });
  await fresh.start();
  const freshIp = ((await fresh.inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string }> } }).NetworkSettings.Networks[NET]!.IPAddress;
  const toFresh = await runContainer(a.docker, cluster.image, ['ping', '-c', '2', '-W', '2', freshIp], { network: NET });
  assert.equal(toFresh.exitCode, 0, `A → new container on B: ${toFresh.stdout}${toFresh.stderr}`);
  await fresh.remove({ force: true });
});

test('a host that dies without a goodbye is removed everywhere once its lease expires', { skip, timeout: 120_000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const aAddr = a.underlay!.address.replace(/\./g, '\\.');
  const pointsAtA = new RegExp(`dst ${aAddr}( link-netnsid \\d+)? self permanent`);
  assert.match(await overlay(b, 'bridge fdb show dev vxlan0'), pointsAtA, 'B has entries for A before');
  const killedAt = Date.now();
  process.kill(plugins[0]!.process.pid, 'SIGKILL');
  process.kill(a.pid, 'SIGKILL');
  for (const host of [b, c]) {
    await waitFor(async () => !pointsAtA.test(await overlay(host, 'bridge fdb show dev vxlan0')), { timeoutMs: EXPIRY_BOUND_MS + 5000, what: `A's entries gone on ${host.name}` });
  }
  const gone = Date.now() - killedAt;
  t.diagnostic(`A's entries removed on B and C ${gone} ms after A died (lease TTL ${LEASE_TTL} s)`);
  assert.ok(gone < EXPIRY_BOUND_MS, `removal took ${gone} ms, target < ${EXPIRY_BOUND_MS / 1000} s (${backend})`);
});
