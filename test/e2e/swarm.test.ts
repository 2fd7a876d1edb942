/**
 * Issue "Ship it the way Docker plugins ship", swarm: two Docker hosts in a swarm (h1 manager,
 * h2 worker), the managed plugin installed from a registry on both with SCOPE=global and an
 * etcd store, an attachable swarm-scoped tsoverlay network created on the manager with
 * tsoverlay's IPAM, `docker run --net` on each node, cross-node ping.
 *
 * What Docker 20.10 does here (and the plugin answers): the manager's allocator calls
 * IpamDriver.RequestPool/RequestAddress in the *global* address space and
 * NetworkDriver.AllocateNetwork (the VNI is allocated there and travels to every node in the
 * options); each engine then calls RequestPool/RequestAddress again in the *local* address
 * space for exactly the addresses the manager chose, then CreateNetwork; DiscoverNew tells
 * every plugin about the swarm nodes.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import {
  INSECURE_REGISTRY_ARGS,
  MANAGED_NETNS_DIR,
  PLUGIN_DRIVER,
  REGISTRY_BIN,
  buildPlugin,
  installPlugin,
  pluginLog,
  removePlugin,
  startBuildHost,
  startRegistry,
  type BuildHost,
  type BuiltPlugin,
} from '../helpers/managed-plugin';
import { cleanupAfter, waitFor } from '../helpers/proc';

const skip = e2eSkipReason(['/usr/bin/etcd', REGISTRY_BIN]);

cleanupAfter();

const NET = 'snet';
const SUBNET = '192.168.70.0/24';
let cluster: Cluster;
let build: BuildHost;
let etcd: EtcdServer;
let plugin: BuiltPlugin;
let manager: DockerHost;
let worker: DockerHost;

async function overlay(host: DockerHost, cmd: string): Promise<string> {
  const script = `f=$(ls ${MANAGED_NETNS_DIR} 2>/dev/null | head -n1); [ -n "$f" ] && nsenter --net=${MANAGED_NETNS_DIR}/$f ${cmd}`;
  return (await host.exec(['sh', '-c', script], { allowFailure: true })).stdout;
}

before(async () => {
  if (skip) return;
  [cluster, build] = await Promise.all([
    startCluster({ hosts: 2, docker: { extraArgs: INSECURE_REGISTRY_ARGS } }),
    startBuildHost(),
  ]);
  [manager, worker] = [cluster.hosts[0]!, cluster.hosts[1]!];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  const registry = await startRegistry(cluster.underlay.gateway);
  plugin = await buildPlugin(build.host, `${registry.address}/tsoverlay:swarm`);
  process.stderr.write(`[swarm] build.sh (${build.storageDriver}) + push ${plugin.buildMs} ms\n`);
});

after(async () => {
  if (skip) return;
  // Swarm networks go from the manager; then every node leaves (its swarm state goes with the
  // dockerd data directory anyway); then the plugins.
  if (manager?.running()) {
    const ids = (await manager.cli(['ps', '-aq'], { allowFailure: true })).stdout.split('\n').filter(Boolean);
    if (ids.length > 0) await manager.cli(['rm', '-f', ...ids], { allowFailure: true });
    await manager.cli(['network', 'rm', NET], { allowFailure: true });
  }
  for (const h of [worker, manager]) {
    if (h?.running()) await h.cli(['swarm', 'leave', '--force'], { allowFailure: true, timeoutMs: 30_000 });
  }
  await Promise.all([manager, worker, build?.host].filter((h): h is DockerHost => !!h).map((h) => removePlugin(h).catch(() => undefined)));
});

test('two-node swarm: attachable global-scope tsoverlay network, containers on both nodes reach each other', { skip, timeout: 300_000 }, async (t) => {
  const endpoint = etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!;
  await Promise.all(
    [manager, worker].map((h) =>
      installPlugin(h, plugin.ref, { STORE: `etcd://${endpoint}`, SCOPE: 'global', HOST_NAME: h.name, LOG_LEVEL: 'debug' }),
    ),
  );
  const t0 = Date.now();
  await manager.cli(['swarm', 'init', '--advertise-addr', manager.underlay!.address]);
  const token = (await manager.cli(['swarm', 'join-token', '-q', 'worker'])).stdout.trim();
  await worker.cli(['swarm', 'join', '--token', token, `${manager.underlay!.address}:2377`], { timeoutMs: 60_000 });
  await waitFor(async () => (await manager.cli(['node', 'ls', '--format', '{{.Status}}'])).stdout.split('\n').filter((s) => s === 'Ready').length === 2, {
    timeoutMs: 30_000,
    what: 'two Ready swarm nodes',
  });
  t.diagnostic(`swarm of 2 formed in ${Date.now() - t0} ms`);

  // The network driver reports global scope: Docker routes the create to the swarm manager.
  const caps = (await manager.cli(['plugin', 'inspect', '--format', '{{json .Settings.Env}}', PLUGIN_DRIVER])).stdout;
  assert.match(caps, /"SCOPE=global"/);
  await manager.cli([
    'network', 'create', '-d', PLUGIN_DRIVER, '--attachable', '--scope', 'swarm',
    '--ipam-driver', PLUGIN_DRIVER, '--subnet', SUBNET, '-o', 'mode=static', NET,
  ]);
  const scope = (await manager.cli(['network', 'inspect', '--format', '{{.Scope}} {{.Attachable}}', NET])).stdout.trim();
  assert.equal(scope, 'swarm true');

  await manager.cli(['run', '-d', '--name', 'on-manager', '--net', NET, cluster.image, 'sleep', '3600']);
  const ip = (await manager.cli(['inspect', '--format', `{{(index .NetworkSettings.Networks "${NET}").IPAddress}}`, 'on-manager'])).stdout.trim();
  assert.match(ip, /^192\.168\.70\.\d+$/);
  const ping = await worker.cli(['run', '--rm', '--net', NET, cluster.image, 'ping', '-c', '3', '-W', '2', ip], { allowFailure: true, timeoutMs: 90_000 });
  assert.equal(ping.code, 0, `worker → manager's container ${ip}: ${ping.stdout}${ping.stderr}\n--- worker plugin ---\n${pluginLog(worker)}`);
  assert.match(ping.stdout, /3 packets received/);

  await worker.cli(['run', '-d', '--name', 'on-worker', '--net', NET, cluster.image, 'sleep', '3600']);
  const wip = (await worker.cli(['inspect', '--format', `{{(index .NetworkSettings.Networks "${NET}").IPAddress}}`, 'on-worker'])).stdout.trim();
  assert.notEqual(wip, ip);
  const back = await manager.cli(['exec', 'on-manager', 'ping', '-c', '2', '-W', '2', wip], { allowFailure: true });
  if (back.code !== 0) {
    const tables = async (h: DockerHost) =>
      `${h.name}:\n${await overlay(h, 'ip neigh show dev vxlan0')}${await overlay(h, 'bridge fdb show dev vxlan0')}${await overlay(h, 'ip -o link')}`;
    const arp = (await manager.cli(['exec', 'on-manager', 'ip', 'neigh'], { allowFailure: true })).stdout;
    assert.fail(
      `manager → worker's container ${wip}: ${back.stdout}${back.stderr}\n${await tables(manager)}\n${await tables(worker)}\ncontainer arp: ${arp}\n` +
        `--- manager plugin ---\n${pluginLog(manager, 5000)}\n--- worker plugin ---\n${pluginLog(worker, 5000)}`,
    );
  }

  // One VNI everywhere: the one AllocateNetwork allocated on the manager (the first is 256).
  for (const h of [manager, worker]) assert.match(await overlay(h, 'ip -d link show vxlan0'), /vxlan id 256 /, `VNI on ${h.name}`);
  const mlog = pluginLog(manager, 400_000);
  assert.match(mlog, /NetworkDriver\.AllocateNetwork/, 'the manager allocated the network');
  assert.match(mlog, /discovery: new/, 'DiscoverNew reached the plugin');
  assert.match(pluginLog(worker, 400_000), /discovery: new/);

  // A service on the network, the way docs/operations.md says: --endpoint-mode dnsrr (the
  // default VIP needs a load-balancer endpoint Docker makes only for its own overlay). Its
  // name resolves to the tasks' addresses on both nodes, and they answer.
  await manager.cli([
    'service', 'create', '--detach', '--no-resolve-image', '--name', 'websvc', '--network', NET,
    '--endpoint-mode', 'dnsrr', '--replicas', '2', '--replicas-max-per-node', '1', cluster.image, 'sleep', '3600',
  ], { timeoutMs: 60_000 });
  await waitFor(
    async () => (await manager.cli(['service', 'ps', '--filter', 'desired-state=running', '--format', '{{.CurrentState}}', 'websvc'])).stdout.split('\n').filter((l) => l.startsWith('Running')).length === 2,
    { timeoutMs: 90_000, intervalMs: 500, what: 'two websvc tasks running' },
  );
  // A task's name record reaches the other node by swarm's gossip, after the manager already
  // reports the task running: the name is asked again until both records are there.
  let lookup = { stdout: '', stderr: '' };
  let taskIps: string[] = [];
  await waitFor(
    async () => {
      lookup = await manager.cli(['exec', 'on-manager', 'nslookup', 'websvc'], { allowFailure: true });
      taskIps = [...new Set([...lookup.stdout.matchAll(/Address(?: \d+)?:\s*(192\.168\.70\.\d+)/g)].map((m) => m[1]!))];
      return taskIps.length === 2;
    },
    { timeoutMs: 30_000, intervalMs: 500, what: 'websvc to resolve to both tasks' },
  ).catch(() => undefined);
  assert.equal(taskIps.length, 2, `websvc resolves to both tasks (dnsrr): ${lookup.stdout}${lookup.stderr}`);
  for (const tip of taskIps) {
    const r = await manager.cli(['exec', 'on-manager', 'ping', '-c', '2', '-W', '2', tip], { allowFailure: true });
    assert.equal(r.code, 0, `on-manager → websvc task ${tip}: ${r.stdout}${r.stderr}`);
  }
  const byName = await worker.cli(['exec', 'on-worker', 'ping', '-c', '2', '-W', '2', 'websvc'], { allowFailure: true });
  assert.equal(byName.code, 0, `on-worker → websvc by name: ${byName.stdout}${byName.stderr}`);
  await manager.cli(['service', 'rm', 'websvc']);
  for (const h of [manager, worker]) {
    await waitFor(async () => (await h.cli(['ps', '-aq', '--filter', 'name=websvc'])).stdout.trim() === '', { timeoutMs: 60_000, what: `websvc tasks gone on ${h.name}` });
  }

  // Removing the network frees it on the manager.
  for (const c of ['on-manager']) await manager.cli(['rm', '-f', c]);
  await worker.cli(['rm', '-f', 'on-worker']);
  await manager.cli(['network', 'rm', NET]);
  await waitFor(() => /NetworkDriver\.FreeNetwork/.test(pluginLog(manager, 400_000)), { timeoutMs: 20_000, what: 'FreeNetwork on the manager' });
});
