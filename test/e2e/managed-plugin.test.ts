/**
 * Issue "Ship it the way Docker plugins ship": the managed plugin built by plugin/build.sh
 * (from a locally made stand-in for node:20: no registry is reachable here), pushed to a real
 * registry (Debian's docker-registry on the underlay), installed from it on two Docker hosts
 * with settings, a cross-host ping, then `docker plugin disable -f` + `enable` on one host while
 * a ping runs between the hosts: the overlay namespaces outlive the plugin's container, so
 * (almost) no packet is lost and nothing is duplicated afterwards. Last, the upgrade exactly as
 * docs/install.md writes it (run with no terminal, as scripts do) to a second tag in the registry.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import {
  INSECURE_REGISTRY_ARGS,
  MANAGED_INFLIGHT_DIR,
  MANAGED_NETNS_DIR,
  PLUGIN_DRIVER,
  REGISTRY_BIN,
  buildPlugin,
  installPlugin,
  pluginLog,
  pluginPid,
  socketsVisibleTo,
  REPO_ROOT,
  removePlugin,
  startBuildHost,
  startRegistry,
  type BuildHost,
  type BuiltPlugin,
  type Registry,
} from '../helpers/managed-plugin';
import { cleanupAfter, run, sleep, waitFor } from '../helpers/proc';

const skip = e2eSkipReason(['/usr/bin/etcd', REGISTRY_BIN]);

cleanupAfter();

const NET = 'mnet';
const SUBNET = '192.168.60.0/24';
const GATEWAY = '192.168.60.1';
let cluster: Cluster;
let build: BuildHost;
let etcd: EtcdServer;
let registry: Registry;
let plugin: BuiltPlugin;
let hosts: [DockerHost, DockerHost];
let targetIp = '';

interface PingStats {
  transmitted: number;
  received: number;
  lost: number;
}

function pingStats(output: string): PingStats {
  const m = /(\d+) packets transmitted, (\d+) packets received/.exec(output);
  if (!m) throw new Error(`no ping statistics in: ${output.slice(-2000)}`);
  const transmitted = Number(m[1]);
  const received = Number(m[2]);
  return { transmitted, received, lost: transmitted - received };
}

async function sh(host: DockerHost, script: string): Promise<string> {
  return (await host.exec(['sh', '-c', script], { allowFailure: true })).stdout;
}

async function containerIp(host: DockerHost, name: string): Promise<string> {
  const info = (await host.docker.getContainer(name).inspect()) as {
    NetworkSettings: { Networks: Record<string, { IPAddress: string }> };
  };
  return info.NetworkSettings.Networks[NET]!.IPAddress;
}

async function startSleeper(host: DockerHost, name: string): Promise<string> {
  await host.cli(['run', '-d', '--name', name, '--net', NET, cluster.image, 'sleep', '3600']);
  return containerIp(host, name);
}

/** What exists in the kernel of one host for tsoverlay: namespace files and their contents. */
interface KernelView {
  namespaces: string[];
  /**
   * Distinct namespaces mounted under /run/tsoverlay/netns on the host. (The same namespace
   * shows twice in mountinfo: the plugin's self-bind of netns/ is a peer of the shared
   * /run/tsoverlay, so each file mount propagates to both, as with `ip netns` on /run/netns.)
   */
  nsMounts: number;
  mountLines: string[];
  links: string[];
  fdb: string[];
  neigh: string[];
  hostVeths: string[];
}

async function kernelView(host: DockerHost): Promise<KernelView> {
  const namespaces = (await sh(host, `ls ${MANAGED_NETNS_DIR} 2>/dev/null`)).split('\n').filter(Boolean);
  const mountinfo = fs.readFileSync(`/proc/${host.pid}/mountinfo`, 'utf8');
  const mountLines = mountinfo.split('\n').filter((l) => l.split(' ')[4]?.startsWith(`${MANAGED_NETNS_DIR}/`));
  const nsMounts = new Set(mountLines.map((l) => l.split(' ')[3])).size;
  const view: KernelView = { namespaces, nsMounts, mountLines, links: [], fdb: [], neigh: [], hostVeths: [] };
  for (const ns of namespaces) {
    const inNs = (cmd: string) => sh(host, `nsenter --net=${MANAGED_NETNS_DIR}/${ns} ${cmd}`);
    view.links.push(...(await inNs('ip -o link show')).split('\n').filter(Boolean).map((l) => `${ns}: ${l.split(':')[1]!.trim().split('@')[0]}`));
    view.fdb.push(...(await inNs('bridge fdb show dev vxlan0')).split('\n').filter((l) => l.includes(' dst ')).map((l) => `${ns}: ${l.trim()}`));
    view.neigh.push(...(await inNs('ip neigh show dev vxlan0')).split('\n').filter(Boolean).map((l) => `${ns}: ${l.trim()}`));
  }
  view.hostVeths = (await sh(host, 'ip -o link show')).split('\n').filter(Boolean).map((l) => l.split(':')[1]!.trim().split('@')[0]!).filter((n) => /^v[ce][0-9a-f]{11}$/.test(n));
  return view;
}

function duplicates(list: readonly string[]): string[] {
  const seen = new Set<string>();
  return list.filter((x) => (seen.has(x) ? true : (seen.add(x), false)));
}

before(async () => {
  if (skip) return;
  const t0 = Date.now();
  [cluster, build] = await Promise.all([
    startCluster({ hosts: 2, docker: { extraArgs: INSECURE_REGISTRY_ARGS } }),
    startBuildHost(),
  ]);
  hosts = [cluster.hosts[0]!, cluster.hosts[1]!];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  registry = await startRegistry(cluster.underlay.gateway);
  const t1 = Date.now();
  plugin = await buildPlugin(build.host, `${registry.address}/tsoverlay:e2e`);
  process.stderr.write(
    `[managed-plugin] hosts+etcd+registry ${t1 - t0} ms; local base ${plugin.baseMs} ms; build.sh (${build.storageDriver}) + push ${plugin.buildMs} ms\n`,
  );
});

after(async () => {
  if (skip) return;
  // Containers and networks go while the plugins still answer; then the plugins; then the
  // hosts and the rest (registered cleanups, newest first).
  await Promise.all([...(hosts ?? []), ...(build ? [build.host] : [])].map((h) => removePlugin(h).catch(() => undefined)));
});

test('installed from the registry on both hosts with settings; cross-host ping', { skip, timeout: 300_000 }, async (t) => {
  const endpoint = etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!;
  const t0 = Date.now();
  await Promise.all(
    hosts.map((h) =>
      installPlugin(h, plugin.ref, { STORE: `etcd://${endpoint}`, HOST_NAME: h.name, LOG_LEVEL: 'debug', LEASE_TTL: '5' }),
    ),
  );
  t.diagnostic(`docker plugin install on 2 hosts: ${Date.now() - t0} ms (build: ${plugin.buildMs} ms, ${build.storageDriver})`);
  for (const h of hosts) {
    const ls = (await h.cli(['plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}'])).stdout;
    assert.match(ls, /^tsoverlay:latest true$/m, `plugin ls on ${h.name}: ${ls}`);
    const env = (await h.cli(['plugin', 'inspect', '--format', '{{json .Settings.Env}}', PLUGIN_DRIVER])).stdout;
    assert.match(env, new RegExp(`"HOST_NAME=${h.name}"`));
    assert.match(env, /"STORE=etcd:\/\//);
    // Least privilege: exactly the two host directories it uses and the Docker API socket (read
    // for container names, DNS across hosts), not /run with containerd.sock.
    const mounts = JSON.parse((await h.cli(['plugin', 'inspect', '--format', '{{json .Settings.Mounts}}', PLUGIN_DRIVER])).stdout) as Array<{ Source: string }>;
    assert.deepEqual(mounts.map((m) => m.Source).sort(), [MANAGED_INFLIGHT_DIR, MANAGED_NETNS_DIR, h.socketPath].sort());
    const pid = pluginPid(h);
    assert.ok(pid, `the plugin's process on ${h.name}`);
    const sockets = socketsVisibleTo(pid);
    assert.deepEqual(sockets, ['/host/run/docker.sock', '/run/docker/plugins/tsoverlay.sock'], `sockets reachable inside the plugin on ${h.name}`);
    // Secret files (docs/install.md): written on the host in the plugin's propagated mount,
    // read inside the plugin at /var/lib/tsoverlay/<name>, and absent from `docker plugin inspect`.
    const id = (await h.cli(['plugin', 'inspect', '--format', '{{.Id}}', PLUGIN_DRIVER])).stdout.trim();
    const secretFile = path.join(h.dataRoot, 'plugins', id, 'propagated-mount', 'etcd-password');
    fs.writeFileSync(secretFile, 'Pq7-probe-Vt3\n', { mode: 0o600 });
    assert.equal(fs.readFileSync(`/proc/${pid}/root/var/lib/tsoverlay/etcd-password`, 'utf8'), 'Pq7-probe-Vt3\n', 'the file is seen inside the plugin');
    assert.doesNotMatch((await h.cli(['plugin', 'inspect', PLUGIN_DRIVER])).stdout, /Pq7-probe-Vt3/);
    fs.rmSync(secretFile);
  }
  for (const h of hosts) {
    await h.cli(['network', 'create', '-d', PLUGIN_DRIVER, '--ipam-driver', PLUGIN_DRIVER, '--subnet', SUBNET, NET]);
  }
  const [a, b] = hosts;
  targetIp = await startSleeper(b, 'target');
  await startSleeper(a, 'idle-a');
  const ping = await a.cli(['run', '--rm', '--net', NET, cluster.image, 'ping', '-c', '3', '-W', '2', targetIp], { allowFailure: true });
  assert.equal(ping.code, 0, `h1 → ${targetIp}: ${ping.stdout}${ping.stderr}\n${pluginLog(a)}`);
  assert.match(ping.stdout, /3 packets received/);
  // Names across hosts through the managed plugin (it reads names through its Docker socket
  // mount): h1's DNS listener at the gateway answers the name of h2's container.
  await waitFor(
    async () => {
      const r = await a.cli(['run', '--rm', '--net', NET, cluster.image, 'nslookup', 'target', GATEWAY], { allowFailure: true });
      return new RegExp(`Address:\\s+${targetIp.replace(/\./g, '\\.')}`).test(`${r.stdout}${r.stderr}`);
    },
    { timeoutMs: 20_000, what: 'target by name on h1 (nslookup at the gateway)' },
  );
  // The namespace files are on the host (/run/tsoverlay/netns), not inside the plugin.
  for (const h of hosts) {
    const v = await kernelView(h);
    assert.equal(v.namespaces.length, 1, `${h.name}: ${v.namespaces.join(' ')}`);
    assert.equal(v.nsMounts, 1, `${h.name}: namespaces mounted on the host: ${v.mountLines.join('\n')}`);
  }
});

test('docker plugin disable -f && enable on one host while a ping runs between hosts', { skip, timeout: 240_000 }, async (t) => {
  assert.ok(targetIp, 'the first test set up the network');
  const [a, b] = hosts;
  const before = await kernelView(a);
  await a.cli(['run', '-d', '--name', 'pinger', '--net', NET, cluster.image, 'ping', '-i', '0.1', targetIp]);
  await waitFor(async () => /bytes from/.test((await a.cli(['logs', 'pinger'])).stdout), { timeoutMs: 10_000, what: 'pinger running' });
  await sleep(1000);
  const t0 = Date.now();
  await a.cli(['plugin', 'disable', '-f', PLUGIN_DRIVER], { timeoutMs: 60_000 });
  const disabledMs = Date.now() - t0;
  // A new flow while h1's plugin is down, between containers that existed before (a container
  // started meanwhile cannot be reached: h1's plugin is not there to program it): h2 still holds
  // h1's entries, since a stopping plugin keeps its host registration.
  const idleA = await containerIp(a, 'idle-a');
  const during = await b.cli(['exec', 'target', 'ping', '-c', '1', '-W', '2', idleA], { allowFailure: true });
  assert.equal(during.code, 0, `new flow h2 → h1 while h1's plugin is disabled: ${during.stdout}${during.stderr}`);
  const t1 = Date.now();
  await a.cli(['plugin', 'enable', PLUGIN_DRIVER], { timeoutMs: 60_000 });
  const enabledMs = Date.now() - t1;
  await sleep(3000);
  await a.cli(['kill', '-s', 'INT', 'pinger']);
  await waitFor(async () => /packets transmitted/.test((await a.cli(['logs', 'pinger'])).stdout), { timeoutMs: 10_000, what: 'ping statistics' });
  const stats = pingStats((await a.cli(['logs', 'pinger'])).stdout);
  t.diagnostic(
    `ping every 100 ms across disable -f (${disabledMs} ms) + a new h2 → h1 flow while disabled + enable (${enabledMs} ms): ` +
      `${stats.transmitted} sent, ${stats.received} received, ${stats.lost} lost`,
  );
  assert.ok(stats.transmitted >= 30, `too few pings: ${JSON.stringify(stats)}`);
  assert.ok(stats.lost <= 3, `lost ${stats.lost} pings during the plugin restart\n${pluginLog(a)}`);

  // The re-enabled plugin works: a new container on h1 reaches h2 and vice versa.
  const fresh = await startSleeper(a, 'after-enable');
  const back = await b.cli(['run', '--rm', '--net', NET, cluster.image, 'ping', '-c', '2', '-W', '2', fresh], { allowFailure: true });
  assert.equal(back.code, 0, `h2 → new container on h1: ${back.stdout}${back.stderr}\n${pluginLog(a)}`);
  await sleep(500);

  // No duplicated kernel objects on either host.
  for (const h of hosts) {
    const v = await kernelView(h);
    const where = `${h.name}: ${JSON.stringify(v, null, 1)}`;
    assert.equal(v.namespaces.length, 1, `one namespace per network: ${where}`);
    assert.equal(v.nsMounts, 1, `one namespace mount: ${where}`);
    assert.equal(v.links.filter((l) => l.endsWith(': vxlan0')).length, 1, `one vxlan0: ${where}`);
    assert.equal(v.links.filter((l) => l.endsWith(': br0')).length, 1, `one br0: ${where}`);
    const running = (await h.cli(['ps', '-q', '--filter', `network=${NET}`])).stdout.split('\n').filter(Boolean).length;
    assert.equal(v.links.filter((l) => / ve/.test(l)).length, running, `one veth per container (${running}): ${where}`);
    assert.deepEqual(v.hostVeths, [], `no veth ends left in the host namespace: ${where}`);
    assert.deepEqual(duplicates(v.fdb), [], `duplicate FDB entries: ${where}`);
    assert.deepEqual(duplicates(v.neigh), [], `duplicate neighbour entries: ${where}`);
    assert.deepEqual(duplicates(v.neigh.map((l) => l.split(' ')[1])), [], `one neighbour entry per address: ${where}`);
  }
  const afterView = await kernelView(a);
  assert.deepEqual(afterView.namespaces, before.namespaces, 'the same namespace file before and after the restart');
  assert.deepEqual(afterView.mountLines.map((l) => l.split(' ').slice(3, 5).join(' ')), before.mountLines.map((l) => l.split(' ').slice(3, 5).join(' ')), 'no namespace mounted again');
});

/** The shell lines of the "### Upgrade" block of docs/install.md, as users copy them. */
function documentedUpgrade(): string[] {
  const doc = fs.readFileSync(path.join(REPO_ROOT, 'docs/install.md'), 'utf8');
  const m = /### Upgrade\s+```sh\n([\s\S]*?)```/.exec(doc);
  assert.ok(m, 'docs/install.md has an "### Upgrade" sh block');
  return m[1]!.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
}

test('upgrade with the commands docs/install.md gives, without a terminal; containers keep their network', { skip, timeout: 300_000 }, async (t) => {
  const [a, b] = hosts;
  // The "new version": the same build with another description (so another config digest),
  // under a second tag in the registry. The build daemon drops the first one (already pushed):
  // it refuses to create a plugin whose content it holds already.
  const next = `${registry.address}/tsoverlay:e2e-next`;
  const nextDir = path.join(path.dirname(plugin.dir), 'plugin-next');
  fs.rmSync(nextDir, { recursive: true, force: true });
  fs.mkdirSync(nextDir);
  const config = JSON.parse(fs.readFileSync(path.join(plugin.dir, 'config.json'), 'utf8')) as { description?: string };
  fs.writeFileSync(path.join(nextDir, 'config.json'), JSON.stringify({ ...config, description: `${config.description ?? 'tsoverlay'} (next)` }));
  await run(['cp', '-al', path.join(plugin.dir, 'rootfs'), path.join(nextDir, 'rootfs')]); // hard links: no copy of the rootfs
  await build.host.cli(['plugin', 'rm', '-f', plugin.ref], { allowFailure: true, timeoutMs: 60_000 });
  try {
    await build.host.cli(['plugin', 'create', next, nextDir], { timeoutMs: 180_000 });
  } finally {
    fs.rmSync(nextDir, { recursive: true, force: true });
  }
  await build.host.cli(['plugin', 'push', next], { timeoutMs: 180_000 });
  const lines = documentedUpgrade();
  assert.equal(lines.length, 3, `three commands: ${lines.join(' | ')}`);
  const before = (await a.cli(['plugin', 'inspect', '--format', '{{.PluginReference}}', PLUGIN_DRIVER])).stdout.trim();
  assert.equal(before, plugin.ref);
  const t0 = Date.now();
  for (const line of lines) {
    const argv = line.replace('registry.example.com/tsoverlay:0.2.0', next).split(/\s+/);
    assert.equal(argv[0], 'docker', line);
    if (argv[2] === 'enable') {
      // An upgrade takes mount sources from the new config.json: a test host's API socket is not
      // at the default /var/run/docker.sock, so it is set again (docs/install.md says so).
      await a.cli(['plugin', 'set', PLUGIN_DRIVER, `docker-sock.source=${a.socketPath}`], { timeoutMs: 60_000 });
    }
    // stdin at end-of-file, no terminal: what a script or CI run gives a prompt.
    const r = await a.cli(argv.slice(1), { input: '', timeoutMs: 180_000, allowFailure: true });
    assert.equal(r.code, 0, `${line}: ${r.stdout}${r.stderr}`);
    assert.doesNotMatch(r.stdout + r.stderr, /are you sure/i, `${line} asked a question nobody can answer`);
  }
  t.diagnostic(`documented upgrade on ${a.name}: ${Date.now() - t0} ms`);
  const after = (await a.cli(['plugin', 'inspect', '--format', '{{.PluginReference}} {{.Enabled}}', PLUGIN_DRIVER])).stdout.trim();
  assert.equal(after, `${next} true`, 'the plugin now runs the new reference, enabled');
  // Containers from before the upgrade are still reachable, and new ones get connected.
  const ping = await b.cli(['exec', 'target', 'ping', '-c', '2', '-W', '2', await containerIp(a, 'idle-a')], { allowFailure: true });
  assert.equal(ping.code, 0, `h2 → container on h1 started before the upgrade: ${ping.stdout}${ping.stderr}\n${pluginLog(a)}`);
  const fresh = await startSleeper(a, 'after-upgrade');
  const back = await b.cli(['run', '--rm', '--net', NET, cluster.image, 'ping', '-c', '2', '-W', '2', fresh], { allowFailure: true });
  assert.equal(back.code, 0, `h2 → new container on h1 after the upgrade: ${back.stdout}${back.stderr}\n${pluginLog(a)}`);
});
