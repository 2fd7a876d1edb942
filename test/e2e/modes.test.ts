/**
 * Issue 7: resolution modes and the operator's view, on three Docker hosts in network
 * namespaces with etcd on the underlay (the layout of multi-host.test.ts).
 *
 * - mode=miss: nothing before traffic; the first ping makes the kernel ask (L3MISS) and the
 *   plugin answer; a peer that leaves is withdrawn again.
 * - mode=p2p: two hosts, each naming the other as remote; no peer entries at all.
 * - mode=multicast: three hosts, unknown traffic to 239.1.1.1, learning.
 * - `tsoverlay inspect --check` clean on every host, non-zero after `ip neigh del` by hand.
 * - /metrics (parsed with a Prometheus text-format parser) and /healthz on the plugin socket
 *   and on --metrics-address.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import type { InspectReport } from '../../src/cli/inspect-model';
import { e2eSkipReason, runContainer, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { NETNS_DIR, PLUGIN_MAIN, startPlugin, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter, spawnTracked, waitFor } from '../helpers/proc';

const skip = e2eSkipReason(['/usr/bin/etcd']);

cleanupAfter();

const METRICS_PORT = 9464;
let cluster: Cluster;
let etcd: EtcdServer;
let storeUrl: string;
let hosts: [DockerHost, DockerHost, DockerHost];
const plugins: PluginProcess[] = [];

const re = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const addr = (h: DockerHost) => h.underlay!.address;

async function sh(host: DockerHost, script: string): Promise<string> {
  return (await host.exec(['sh', '-c', script], { allowFailure: true })).stdout;
}

/** The overlay namespace file of a Docker network on a host (`<epoch>-<first 10 of its id>`). */
async function netnsOf(host: DockerHost, network: string): Promise<string | undefined> {
  const id = ((await host.docker.getNetwork(network).inspect()) as { Id: string }).Id.slice(0, 10);
  const name = (await sh(host, `ls ${NETNS_DIR} 2>/dev/null`)).split('\n').find((f) => f.endsWith(`-${id}`));
  return name ? `${NETNS_DIR}/${name}` : undefined;
}

/** Runs an ip/bridge command in a network's overlay namespace on a host. */
async function inOverlay(host: DockerHost, network: string, cmd: string): Promise<string> {
  const ns = await netnsOf(host, network);
  assert.ok(ns, `no overlay namespace for ${network} on ${host.name}`);
  return sh(host, `nsenter --net=${ns} ${cmd}`);
}

async function createNetwork(host: DockerHost, name: string, subnet: string, options: Record<string, string> = {}): Promise<void> {
  await host.docker.createNetwork({ Name: name, Driver: 'tsoverlay', Options: options, IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: subnet }] } });
}

interface Started {
  ip: string;
  mac: string;
}

async function startSleeper(host: DockerHost, name: string, network: string): Promise<Started> {
  const c = await host.docker.createContainer({ Image: cluster.image, name, Cmd: ['sleep', '3600'], HostConfig: { NetworkMode: network } });
  await c.start();
  const info = (await c.inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string; MacAddress: string }> } };
  const n = info.NetworkSettings.Networks[network]!;
  return { ip: n.IPAddress, mac: n.MacAddress };
}

/** Pings from a fresh container; returns the round-trip times (ms) by sequence number. */
async function ping(from: DockerHost, network: string, ip: string, count = 2): Promise<number[]> {
  const r = await runContainer(from.docker, cluster.image, ['ping', '-c', String(count), '-W', '3', ip], { network });
  assert.equal(r.exitCode, 0, `${from.name} → ${ip} on ${network}: ${r.stdout}${r.stderr}`);
  return [...r.stdout.matchAll(/seq=(\d+) ttl=\d+ time=([\d.]+) ms/g)].map((m) => Number(m[2]));
}

function inspectArgs(host: DockerHost, extra: string[]): string[] {
  return [process.execPath, PLUGIN_MAIN, 'inspect', '--store', storeUrl, '--netns-dir', NETNS_DIR, '--host-name', host.name, '--docker-host', host.socketPath, ...extra];
}

async function inspect(host: DockerHost, ...extra: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const r = await host.exec(inspectArgs(host, extra), { allowFailure: true, timeoutMs: 30_000 });
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

function get(options: http.RequestOptions): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(options, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

type Families = Map<string, parsePrometheusTextFormat.MetricFamily>;

async function scrape(plugin: PluginProcess): Promise<Families> {
  const r = await get({ socketPath: plugin.socketPath, path: '/metrics', method: 'GET' });
  assert.equal(r.status, 200, r.body);
  assert.match(r.type, /^text\/plain/);
  return new Map(parsePrometheusTextFormat(r.body).map((f) => [f.name, f]));
}

/** Sum of a counter/gauge family's samples whose labels include `labels`. */
function value(families: Families, name: string, labels: Record<string, string> = {}): number {
  const f = families.get(name);
  assert.ok(f, `metric family ${name} missing`);
  let sum = 0;
  for (const m of f.metrics) {
    if (!('value' in m)) continue;
    if (Object.entries(labels).every(([k, v]) => m.labels?.[k] === v)) sum += Number(m.value);
  }
  return sum;
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 3 });
  hosts = [...cluster.hosts] as [DockerHost, DockerHost, DockerHost];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  storeUrl = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  for (const host of hosts) {
    // A long reconcile period: the hand-made drift below must still be there when inspect looks.
    const extra = ['--reconcile-interval', '600', ...(host === hosts[0] ? ['--metrics-address', `${addr(host)}:${METRICS_PORT}`] : [])];
    plugins.push(await startPlugin(host, { store: storeUrl, extraArgs: extra }));
  }
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
});

test('mode=miss: no entries before traffic, the kernel asks on first traffic, a peer that leaves is withdrawn', { skip, timeout: 120_000 }, async (t) => {
  const [a, b] = hosts;
  for (const h of [a, b]) await createNetwork(h, 'missnet', '10.77.1.0/24', { mode: 'miss' });
  const target = await startSleeper(a, 'miss-a', 'missnet');
  const idle = await startSleeper(b, 'miss-b', 'missnet');

  const link = await inOverlay(b, 'missnet', 'ip -d link show vxlan0');
  assert.match(link, /vxlan id \d+ .*dstport 4789/s);
  assert.match(link, /proxy l2miss l3miss/);
  // The store knows both containers, yet nothing is programmed on either side.
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal((await inOverlay(b, 'missnet', 'ip neigh show dev vxlan0')).trim(), '', 'no neighbour on B before traffic');
  assert.doesNotMatch(await inOverlay(b, 'missnet', 'bridge fdb show dev vxlan0'), new RegExp(re(target.mac)));
  assert.equal((await inOverlay(a, 'missnet', 'ip neigh show dev vxlan0')).trim(), '', 'no neighbour on A before traffic');

  const rtts = await ping(b, 'missnet', target.ip, 3);
  // Each side's first ARP is consumed by the proxy and reported as a miss; the retry 1 s later is answered.
  t.diagnostic(`miss mode, first contact B → A: round trips ${rtts.map((x) => `${x} ms`).join(', ')}`);
  assert.match(await inOverlay(b, 'missnet', 'ip neigh show dev vxlan0'), new RegExp(`${re(target.ip)} lladdr ${re(target.mac)} PERMANENT`));
  assert.match(
    await inOverlay(b, 'missnet', 'bridge fdb show dev vxlan0'),
    new RegExp(`${re(target.mac)} dst ${re(addr(a))}( link-netnsid \\d+)? self permanent`),
  );
  // Only what was asked for: B's idle container never talked, so A holds nothing for it.
  assert.doesNotMatch(await inOverlay(a, 'missnet', 'ip neigh show dev vxlan0'), new RegExp(`${re(idle.ip)} `));
  // A answered the reply's ARP for the (now removed) ping container; it left, so A withdrew it.
  await waitFor(async () => (await inOverlay(a, 'missnet', 'ip neigh show dev vxlan0 nud permanent')).trim() === '', {
    timeoutMs: 10_000,
    what: 'the departed ping container withdrawn on A',
  });

  // A container that leaves is withdrawn where it had been asked for.
  await a.docker.getContainer('miss-a').remove({ force: true });
  await waitFor(async () => !new RegExp(re(target.ip)).test(await inOverlay(b, 'missnet', 'ip neigh show dev vxlan0 nud permanent')), {
    timeoutMs: 10_000,
    what: 'miss-a withdrawn on B',
  });
  assert.doesNotMatch(await inOverlay(b, 'missnet', 'bridge fdb show dev vxlan0'), new RegExp(`${re(target.mac)} dst`));
  // And a new one is answered again.
  const again = await startSleeper(a, 'miss-a2', 'missnet');
  await ping(b, 'missnet', again.ip);
});

test('mode=p2p: two hosts naming each other, no peer entries, ping works', { skip, timeout: 120_000 }, async () => {
  const [a, b] = hosts;
  await createNetwork(a, 'p2pnet', '10.77.2.0/24', { mode: 'p2p', remote: addr(b) });
  await createNetwork(b, 'p2pnet', '10.77.2.0/24', { mode: 'p2p', remote: addr(a) });
  const target = await startSleeper(a, 'p2p-a', 'p2pnet');
  await startSleeper(b, 'p2p-b', 'p2pnet');
  const linkA = await inOverlay(a, 'p2pnet', 'ip -d link show vxlan0');
  assert.match(linkA, new RegExp(`remote ${re(addr(b))} `));
  assert.doesNotMatch(linkA, /\sproxy\s/);
  assert.match(await inOverlay(b, 'p2pnet', 'ip -d link show vxlan0'), new RegExp(`remote ${re(addr(a))} `));
  await ping(b, 'p2pnet', target.ip);
  // Nothing programmed from the store: no PERMANENT neighbour, only the default FDB entry and learned ones.
  for (const h of [a, b]) {
    assert.equal((await inOverlay(h, 'p2pnet', 'ip neigh show dev vxlan0 nud permanent')).trim(), '');
    const fdb = await inOverlay(h, 'p2pnet', 'bridge fdb show dev vxlan0');
    for (const line of fdb.split('\n').filter((l) => / dst .* self permanent/.test(l))) {
      assert.match(line, /^00:00:00:00:00:00 dst /, `only the default entry is permanent on ${h.name}: ${line}`);
    }
  }
  assert.match(await inOverlay(b, 'p2pnet', 'bridge fdb show dev vxlan0'), new RegExp(`${re(target.mac)} dst ${re(addr(a))}.* self\\s*$`, 'm'), 'learned');
});

test('mode=multicast: three hosts, unknown traffic to 239.1.1.1, learning', { skip, timeout: 120_000 }, async (t) => {
  const [a, b, c] = hosts;
  for (const h of hosts) await createNetwork(h, 'mcnet', '10.77.3.0/24', { mode: 'multicast', group: '239.1.1.1' });
  const onA = await startSleeper(a, 'mc-a', 'mcnet');
  const onB = await startSleeper(b, 'mc-b', 'mcnet');
  await startSleeper(c, 'mc-c', 'mcnet');
  // `dev` names the underlay by its index in the host namespace (ip resolves it in the overlay one).
  assert.match(await inOverlay(a, 'mcnet', 'ip -d link show vxlan0'), /vxlan id \d+ group 239\.1\.1\.1 local \S+ dev /);
  const capture = spawnTracked(['tcpdump', '-l', '-n', '-i', cluster.underlay.bridge, '-c', '1', 'udp port 4789 and dst host 239.1.1.1'], { name: 'tcpdump-mc' });
  await capture.waitForOutput(/listening on/, 10_000);
  await ping(c, 'mcnet', onA.ip);
  await ping(c, 'mcnet', onB.ip);
  await ping(a, 'mcnet', onB.ip);
  await waitFor(() => !capture.running(), { timeoutMs: 5000, what: 'a VXLAN packet to the group' }).catch(() => capture.stop());
  assert.match(capture.output(), /10\.251\.\d+\.\d+\.\d+ > 239\.1\.1\.1\.4789: VXLAN, flags \[I\] \(0x08\), vni \d+/, capture.output());
  t.diagnostic(`on the underlay: ${capture.output().split('\n').find((l) => l.includes('239.1.1.1'))}`);
  // Learned, not programmed: C knows A's container from the traffic alone.
  assert.match(await inOverlay(c, 'mcnet', 'bridge fdb show dev vxlan0'), new RegExp(`${re(onA.mac)} dst ${re(addr(a))}`));
  assert.equal((await inOverlay(c, 'mcnet', 'ip neigh show dev vxlan0 nud permanent')).trim(), '');
});

test('inspect: clean on a healthy three-host cluster, non-zero after a neighbour is deleted by hand', { skip, timeout: 120_000 }, async (t) => {
  const [a, b, c] = hosts;
  for (const h of hosts) await createNetwork(h, 'stnet', '10.77.4.0/24');
  const peers = [await startSleeper(a, 'st-a', 'stnet'), await startSleeper(b, 'st-b', 'stnet'), await startSleeper(c, 'st-c', 'stnet')];
  for (const h of hosts) {
    await waitFor(async () => ((await inOverlay(h, 'stnet', 'ip neigh show dev vxlan0 nud permanent')).match(/PERMANENT/g) ?? []).length === 2, {
      timeoutMs: 10_000,
      what: `two peers on ${h.name}`,
    });
  }
  const staticRtts = await ping(b, 'stnet', peers[0]!.ip, 3);
  t.diagnostic(`static mode, first contact B → A: round trips ${staticRtts.map((x) => `${x} ms`).join(', ')}`);
  for (const h of hosts) {
    const started = Date.now();
    const r = await inspect(h, '--check');
    if (h === a) t.diagnostic(`inspect --check on ${h.name} (4 networks) took ${Date.now() - started} ms`);
    assert.equal(r.code, 0, `inspect --check on ${h.name}:\n${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /check: ok\n$/);
    if (h === b) t.diagnostic(`tsoverlay inspect --check on ${h.name}:\n${r.stdout}`);
  }

  const json = await inspect(b, 'stnet', '--json');
  assert.equal(json.code, 0, json.stderr);
  const report = JSON.parse(json.stdout) as InspectReport;
  assert.equal(report.networks.length, 1);
  const st = report.networks[0]!;
  assert.equal(st.dockerName, 'stnet');
  assert.equal(st.mode, 'static');
  assert.match(st.namespace!.path, new RegExp(`^${re(NETNS_DIR)}/\\d+-[0-9a-f]{10}$`));
  assert.equal(st.vxlan!.id, st.vni);
  assert.equal(st.vxlan!.port, 4789);
  assert.equal(st.vxlan!.mtu, 1450);
  assert.equal(st.vxlan!.local, addr(b));
  assert.deepEqual(st.vxlan!.flags, ['proxy', 'learning', 'l2miss', 'l3miss']);
  assert.deepEqual(st.endpoints.map((e) => e.ip).sort(), peers.map((p) => p.ip).sort());
  assert.deepEqual(st.endpoints.map((e) => e.host).sort(), ['h1', 'h2', 'h3']);
  assert.equal(st.endpoints.find((e) => e.local)!.container, 'st-b', 'Docker name of the local container');
  assert.equal(st.endpoints.find((e) => e.host === 'h1')!.locator, addr(a));
  assert.deepEqual(st.neighbours.map((n) => n.ip).sort(), [peers[0]!.ip, peers[2]!.ip].sort());

  // Drift by hand: the periodic reconcile is 10 minutes away, inspect must see it now.
  await inOverlay(b, 'stnet', `ip neigh del ${peers[0]!.ip} dev vxlan0`);
  const broken = await inspect(b, '--check');
  assert.notEqual(broken.code, 0, broken.stdout);
  assert.match(broken.stdout, new RegExp(`missing neighbour ${re(peers[0]!.ip)} lladdr ${re(peers[0]!.mac)} PERMANENT \\(peer at ${re(addr(a))}\\)`));
  assert.match(broken.stdout, /check: 1 difference/);
  t.diagnostic(`after ip neigh del on ${b.name}:\n${broken.stdout.split('\n').filter((l) => /check|- /.test(l)).join('\n')}`);
  const checkedJson = await inspect(b, '--check', '--json');
  assert.equal(checkedJson.code, 1, `inspect --check --json: ${checkedJson.stderr}`);
  const brokenJson = JSON.parse(checkedJson.stdout) as InspectReport;
  assert.deepEqual(brokenJson.networks.find((n) => n.dockerName === 'stnet')!.differences, [
    `missing neighbour ${peers[0]!.ip} lladdr ${peers[0]!.mac} PERMANENT (peer at ${addr(a)})`,
  ]);
  // Put it back as the plugin would have.
  await inOverlay(b, 'stnet', `ip neigh replace ${peers[0]!.ip} lladdr ${peers[0]!.mac} dev vxlan0 nud permanent`);
  assert.equal((await inspect(b, '--check')).code, 0);

  // Unknown network: an error, not an empty report.
  const unknown = await inspect(b, 'nosuchnet');
  assert.notEqual(unknown.code, 0);
  assert.match(unknown.stderr, /no tsoverlay network "nosuchnet"/);
});

test('/metrics and /healthz on the plugin socket and on --metrics-address', { skip, timeout: 120_000 }, async () => {
  const [a, b] = hosts;
  const before = await scrape(plugins[0]!);
  for (const name of [
    'tsoverlay_plugin_requests_total',
    'tsoverlay_plugin_request_errors_total',
    'tsoverlay_plugin_request_duration_seconds',
    'tsoverlay_peers_programmed',
    'tsoverlay_peer_changes_total',
    'tsoverlay_reconcile_runs_total',
    'tsoverlay_reconcile_repairs_total',
    'tsoverlay_store_watch_resets_total',
    'tsoverlay_store_watch_reconnects_total',
    'tsoverlay_store_watch_errors_total',
    'tsoverlay_vxlan_misses_total',
  ]) {
    assert.ok(before.has(name), `${name} missing`);
  }
  assert.equal(before.get('tsoverlay_plugin_request_duration_seconds')!.type, 'HISTOGRAM');
  assert.ok(value(before, 'tsoverlay_plugin_requests_total', { method: 'NetworkDriver.Join', code: '200' }) >= 4);
  assert.ok(value(before, 'tsoverlay_reconcile_runs_total') >= 1);
  // One endpoint watch per network with a local overlay (issue 19): one first full state each, and
  // no reconnect.
  assert.ok(value(before, 'tsoverlay_store_watch_resets_total', { watch: 'endpoints' }) >= 1);
  assert.equal(value(before, 'tsoverlay_store_watch_reconnects_total', { watch: 'endpoints' }), 0);
  // Misses were answered on B during the miss-mode test.
  assert.ok(value(await scrape(plugins[1]!), 'tsoverlay_vxlan_misses_total', { kind: 'l3', outcome: 'answered' }) >= 1);

  // Counts move: one more container on A (Join), B programs one more peer, a bad request is an error.
  const peersOnB = value(await scrape(plugins[1]!), 'tsoverlay_peers_programmed');
  await startSleeper(a, 'st-a2', 'stnet');
  const bad = await plugins[0]!.call('/NetworkDriver.Join', '{}');
  assert.equal(bad.status, 400);
  const after = await scrape(plugins[0]!);
  assert.equal(
    value(after, 'tsoverlay_plugin_requests_total', { method: 'NetworkDriver.Join', code: '200' }),
    value(before, 'tsoverlay_plugin_requests_total', { method: 'NetworkDriver.Join', code: '200' }) + 1,
  );
  assert.equal(
    value(after, 'tsoverlay_plugin_request_errors_total', { method: 'NetworkDriver.Join' }),
    value(before, 'tsoverlay_plugin_request_errors_total', { method: 'NetworkDriver.Join' }) + 1,
  );
  // (parse-prometheus-text-format folds a labelled histogram into one: read the per-method count line itself.)
  const text = (await get({ socketPath: plugins[0]!.socketPath, path: '/metrics', method: 'GET' })).body;
  const joins = /^tsoverlay_plugin_request_duration_seconds_count\{method="NetworkDriver\.Join"\} (\d+)$/m.exec(text);
  assert.ok(joins && Number(joins[1]) >= 5, 'Join latency observed');
  await waitFor(async () => value(await scrape(plugins[1]!), 'tsoverlay_peers_programmed') === peersOnB + 1, { timeoutMs: 10_000, what: 'B programs one more peer' });

  const health = await get({ socketPath: plugins[0]!.socketPath, path: '/healthz', method: 'GET' });
  assert.equal(health.status, 200);
  assert.equal((JSON.parse(health.body) as { status: string }).status, 'ok');

  // TCP: the same two paths, and nothing of the plugin API.
  const tcp = await get({ host: addr(a), port: METRICS_PORT, path: '/metrics', method: 'GET' });
  assert.equal(tcp.status, 200);
  assert.ok(parsePrometheusTextFormat(tcp.body).some((f) => f.name === 'tsoverlay_plugin_requests_total'));
  assert.equal((await get({ host: addr(a), port: METRICS_PORT, path: '/healthz', method: 'GET' })).status, 200);
  assert.equal((await get({ host: addr(a), port: METRICS_PORT, path: '/NetworkDriver.GetCapabilities', method: 'POST' })).status, 404);
  // No TCP listener where none was configured.
  const none = await b.exec(['sh', '-c', `cat /proc/net/tcp | awk '{print $2}' | grep -ci ':${METRICS_PORT.toString(16).toUpperCase()}$' || true`]);
  assert.equal(none.stdout.trim(), '0');

  // A store outage: /healthz turns 503, inspect still shows the kernel side, and once the store
  // is back the watches reconnect and read the full state again.
  await etcd.down();
  try {
    await waitFor(async () => (await get({ socketPath: plugins[0]!.socketPath, path: '/healthz', method: 'GET' })).status === 503, {
      timeoutMs: 15_000,
      what: '/healthz 503 while the store is down',
    });
    const blind = await inspect(b, '--check');
    assert.equal(blind.code, 1, blind.stdout + blind.stderr);
    assert.match(blind.stdout, /UNREACHABLE/);
    assert.match(blind.stdout, new RegExp(`overlay namespaces on this host: ${re(NETNS_DIR)}/`));
    assert.match(blind.stdout, /the store cannot be read, nothing can be compared/);
  } finally {
    await etcd.up();
  }
  await waitFor(async () => value(await scrape(plugins[0]!), 'tsoverlay_store_watch_reconnects_total', { watch: 'endpoints' }) >= 1, {
    timeoutMs: 30_000,
    what: 'an endpoint watch reconnect counted',
  });
  await waitFor(async () => (await get({ socketPath: plugins[0]!.socketPath, path: '/healthz', method: 'GET' })).status === 200, {
    timeoutMs: 15_000,
    what: '/healthz 200 again',
  });
  assert.equal((await inspect(b, '--check')).code, 0);
});
