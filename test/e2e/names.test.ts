/**
 * Issue "Containers find each other by name across hosts": three Docker hosts, etcd on the
 * underlay, one tsoverlay per host. Containers started with `--dns <gateway>` resolve, through
 * Docker's embedded resolver, the names, aliases and addresses of containers on other hosts;
 * names follow stop, rename, connect and disconnect; networks are isolated; outside names are
 * forwarded to the host's resolver (dnsmasq on the underlay, put in the hosts' resolv.conf);
 * a plugin restart and a dockerd restart lose no names.
 *
 * The engine is whatever test/helpers/docker.ts starts (20.10 today); nothing here depends on
 * its version: names are read back through `nslookup` inside containers.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { currentEngine, e2eSkipReason, runContainer, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { PLUGIN_MAIN, startPlugin, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter, runDir, spawnTracked, waitFor, type ManagedProcess } from '../helpers/proc';

const skip = e2eSkipReason(['/usr/bin/etcd', '/usr/sbin/dnsmasq']);

cleanupAfter();

const NET = 'names1';
const SUBNET = '10.61.0.0/24';
const GATEWAY = '10.61.0.1';
const NET2 = 'names2';
const SUBNET2 = '10.62.0.0/24';
const GATEWAY2 = '10.62.0.1';
const OUTSIDE_IP = '198.51.100.7';

let cluster: Cluster;
let etcd: EtcdServer;
let hosts: DockerHost[];
let upstream: ManagedProcess;
let etcdEndpoint = '';
const plugins = new Map<string, PluginProcess>();

function pluginArgs(host: DockerHost): string[] {
  return ['--docker-socket', host.socketPath, '--lease-ttl', '5'];
}

async function restartPlugin(host: DockerHost): Promise<void> {
  await plugins.get(host.name)?.stop();
  plugins.set(host.name, await startPlugin(host, { store: `etcd://${etcdEndpoint}`, extraArgs: pluginArgs(host) }));
}

async function run(host: DockerHost, name: string, network: string, opts: { aliases?: string[]; dns?: string } = {}): Promise<void> {
  const c = await host.docker.createContainer({
    Image: cluster.image,
    name,
    Cmd: ['sleep', '3600'],
    HostConfig: { NetworkMode: network, ...(opts.dns ? { Dns: [opts.dns] } : {}) },
    ...(opts.aliases ? { NetworkingConfig: { EndpointsConfig: { [network]: { Aliases: opts.aliases } } } } : {}),
  });
  await c.start();
}

async function ipOf(host: DockerHost, name: string, network: string): Promise<string> {
  const info = (await host.docker.getContainer(name).inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string }> } };
  return info.NetworkSettings.Networks[network]!.IPAddress;
}

/** `nslookup` in a throw-away container on `network` whose external DNS is the network's gateway. */
async function lookup(host: DockerHost, query: string, network = NET, gateway = GATEWAY): Promise<string> {
  const r = await runContainer(host.docker, cluster.image, ['nslookup', query], { network, hostConfig: { Dns: [gateway] }, timeoutMs: 30_000 });
  return `${r.stdout}${r.stderr}`;
}

/** Addresses in an nslookup answer (the server's own address lines excluded). */
function answers(out: string): string[] {
  const afterName = out.split(/\nName:/).slice(1).join('\n');
  return [...afterName.matchAll(/Address(?: \d+)?:\s*([0-9.]+)/g)].map((m) => m[1]!).sort();
}

async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<number> {
  const t0 = Date.now();
  await waitFor(check, { timeoutMs, intervalMs: 200, what });
  return Date.now() - t0;
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 3 });
  hosts = [...cluster.hosts];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  etcdEndpoint = etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!;
  // The hosts' own resolver: dnsmasq on the underlay, knowing only outside.test.
  upstream = spawnTracked(
    ['/usr/sbin/dnsmasq', '--keep-in-foreground', '--no-resolv', '--no-hosts', `--listen-address=${cluster.underlay.gateway}`, '--bind-interfaces',
      '--port=53', `--address=/outside.test/${OUTSIDE_IP}`, '--user=root', '--pid-file', '--log-facility=-'],
    { name: 'dnsmasq' },
  );
  await upstream.waitForOutput(/started|compile time options/, 10_000);
  const resolv = path.join(runDir(), 'resolv.conf');
  fs.writeFileSync(resolv, `nameserver 127.0.0.11\nnameserver ${cluster.underlay.gateway}\n`);
  for (const host of hosts) {
    // Only in the host's own mount namespace (it dies with the host).
    await host.exec(['mount', '--bind', resolv, '/etc/resolv.conf']);
    plugins.set(host.name, await startPlugin(host, { store: `etcd://${etcdEndpoint}`, extraArgs: pluginArgs(host) }));
  }
  for (const host of hosts) {
    for (const [name, subnet] of [[NET, SUBNET], [NET2, SUBNET2]] as const) {
      await host.docker.createNetwork({ Name: name, Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: subnet }] } });
    }
  }
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
  await upstream?.stop();
});

test('by name, by alias (several addresses), reverse, from another host', { skip, timeout: 240_000 }, async (t) => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const started = Date.now();
  await run(a, 'web', NET, { aliases: ['frontend'] });
  const ran = Date.now();
  await run(c, 'web2', NET, { aliases: ['frontend'] });
  const webIp = await ipOf(a, 'web', NET);
  const web2Ip = await ipOf(c, 'web2', NET);
  const took = await eventually('web resolves on B', async () => answers(await lookup(b, 'web')).includes(webIp));
  t.diagnostic(`docker run on A took ${ran - started} ms; web resolved on B ${took} ms after that`);
  assert.deepEqual(answers(await lookup(b, 'web')), [webIp]);
  assert.deepEqual(answers(await lookup(b, 'frontend')), [webIp, web2Ip].sort());
  assert.deepEqual(answers(await lookup(b, `web.${NET}`)), [webIp]);
  assert.match(await lookup(b, webIp), new RegExp(`web\\.${NET}`), 'reverse lookup');
});

function metricsOf(host: DockerHost): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath: plugins.get(host.name)!.socketPath, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

test('tsoverlay inspect lists the names a network serves; /metrics counts queries and answers', { skip, timeout: 120_000 }, async () => {
  const b = hosts[1]!;
  const r = await b.exec([process.execPath, PLUGIN_MAIN, 'inspect', NET, '--json', '--store', `etcd://${etcdEndpoint}`, '--host-name', b.name, '--docker-host', b.socketPath]);
  const report = JSON.parse(r.stdout) as { networks: { names?: { container: string; names: string[]; host: string }[] }[] };
  const names = report.networks[0]?.names ?? [];
  assert.ok(names.some((n) => n.container === 'web' && n.names.includes('frontend') && n.host === hosts[0]!.name), JSON.stringify(names));
  const text = (await b.exec([process.execPath, PLUGIN_MAIN, 'inspect', NET, '--store', `etcd://${etcdEndpoint}`, '--host-name', b.name, '--docker-host', b.socketPath])).stdout;
  assert.match(text, new RegExp(`names \\(DNS on ${GATEWAY.replace(/\./g, '\\.')}:53\\)`));
  const metrics = await metricsOf(b);
  assert.match(metrics, /tsoverlay_dns_queries_total\{transport="udp"\} [1-9]/);
  assert.match(metrics, /tsoverlay_dns_answers_total\{rcode="NOERROR"\} [1-9]/);
});

test('isolation: a second network with the same container names answers its own', { skip, timeout: 180_000 }, async () => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  await run(c, 'web-n2', NET2, { aliases: ['web'] });
  const n2Ip = await ipOf(c, 'web-n2', NET2);
  await eventually('web on names2', async () => answers(await lookup(b, 'web', NET2, GATEWAY2)).includes(n2Ip));
  assert.deepEqual(answers(await lookup(b, 'web', NET2, GATEWAY2)), [n2Ip]);
  assert.deepEqual(answers(await lookup(b, 'frontend', NET2, GATEWAY2)), [], 'names1 aliases are not visible on names2');
  const webIp = await ipOf(a, 'web', NET);
  assert.deepEqual(answers(await lookup(b, 'web')), [webIp], 'and names1 still answers its own');
});

test('outside names go to the host\'s resolver', { skip, timeout: 120_000 }, async () => {
  const b = hosts[1]!;
  assert.deepEqual(answers(await lookup(b, 'www.outside.test')), [OUTSIDE_IP]);
});

test('rename, connect --alias and disconnect are followed', { skip, timeout: 240_000 }, async () => {
  const [a, b, c] = hosts as [DockerHost, DockerHost, DockerHost];
  const web2Ip = await ipOf(c, 'web2', NET);
  await c.docker.getContainer('web2').rename({ name: 'web3' });
  await eventually('web3 resolves after the rename', async () => answers(await lookup(b, 'web3')).includes(web2Ip));
  await eventually('web2 is gone after the rename', async () => /NXDOMAIN|can't find/i.test(await lookup(b, 'web2')));

  await run(a, 'lone', NET2);
  await a.docker.getNetwork(NET).connect({ Container: 'lone', EndpointConfig: { Aliases: ['cache'] } });
  const loneIp = await ipOf(a, 'lone', NET);
  await eventually('cache resolves after connect --alias', async () => answers(await lookup(b, 'cache')).includes(loneIp));
  assert.deepEqual(answers(await lookup(b, 'lone')), [loneIp]);
  await a.docker.getNetwork(NET).disconnect({ Container: 'lone' });
  await eventually('cache is gone after disconnect', async () => /NXDOMAIN|can't find/i.test(await lookup(b, 'cache')));
});

test('a stopped container\'s name is NXDOMAIN on other hosts', { skip, timeout: 180_000 }, async (t) => {
  const [a, b] = hosts as [DockerHost, DockerHost];
  const t0 = Date.now();
  await a.docker.getContainer('web').stop({ t: 1 });
  const stopped = Date.now();
  const took = await eventually('web is NXDOMAIN after stop', async () => /NXDOMAIN|can't find/i.test(await lookup(b, 'web')));
  t.diagnostic(`docker stop took ${stopped - t0} ms; NXDOMAIN on B ${took} ms after it returned`);
  await a.docker.getContainer('web').start();
  const webIp = await ipOf(a, 'web', NET);
  await eventually('web back after start', async () => answers(await lookup(b, 'web')).includes(webIp));
});

const composeSkip = skip || (currentEngine().cliPluginsDir === undefined ? 'docker-compose CLI plugin missing (run .ci/provision-extras.sh)' : false);
const COMPOSE_SUBNET = '10.63.0.0/24';
const COMPOSE_GATEWAY = '10.63.0.1';

function composeFile(service: string, extra: string): string {
  return `name: shop
services:
  ${service}:
    image: ${cluster.image}
    pull_policy: never
    command: ["sleep", "3600"]
${extra}    networks: [shared]
networks:
  shared:
    name: names-compose
    driver: tsoverlay
    ipam:
      driver: tsoverlay
      config:
        - subnet: ${COMPOSE_SUBNET}
`;
}

async function compose(host: DockerHost, args: readonly string[]): Promise<string> {
  const r = await host.cli(['compose', '-f', path.join(host.dir, 'compose.yaml'), ...args], { timeoutMs: 120_000, allowFailure: true });
  return `${r.stdout}${r.stderr}`;
}

test('compose service names across hosts (dns: [gateway] in the compose file)', { skip: composeSkip, timeout: 240_000 }, async () => {
  const [a, , c] = hosts as [DockerHost, DockerHost, DockerHost];
  fs.writeFileSync(path.join(a.dir, 'compose.yaml'), composeFile('api', ''));
  fs.writeFileSync(path.join(c.dir, 'compose.yaml'), composeFile('client', `    dns: [${COMPOSE_GATEWAY}]\n`));
  await compose(a, ['up', '-d']);
  await compose(c, ['up', '-d']);
  const apiIp = ((await a.docker.getContainer('shop-api-1').inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string }> } })
    .NetworkSettings.Networks['names-compose']!.IPAddress;
  await eventually('the api service resolves on C', async () => answers(await compose(c, ['exec', '-T', 'client', 'nslookup', 'api'])).includes(apiIp));
  assert.deepEqual(answers(await compose(c, ['exec', '-T', 'client', 'nslookup', 'shop-api-1'])), [apiIp], 'and its container name');
  await compose(c, ['down']);
  await compose(a, ['down']);
});

test('plugin restarts lose no names (the publishing host, then the asking host)', { skip, timeout: 240_000 }, async () => {
  const [a, b] = hosts as [DockerHost, DockerHost];
  const webIp = await ipOf(a, 'web', NET);
  await restartPlugin(a);
  assert.deepEqual(answers(await lookup(b, 'web')), [webIp], 'served while and after A restarts');
  await restartPlugin(b);
  await eventually('B serves again after its restart', async () => answers(await lookup(b, 'web')).includes(webIp));
  assert.deepEqual(answers(await lookup(b, 'frontend')).length, 2);
});

test('a dockerd restart loses no names: the publishing host re-learns them from the engine', { skip, timeout: 300_000 }, async () => {
  const [a, b] = hosts as [DockerHost, DockerHost];
  const c = await a.docker.createContainer({
    Image: cluster.image,
    name: 'phoenix',
    Cmd: ['sleep', '3600'],
    HostConfig: { NetworkMode: NET, RestartPolicy: { Name: 'always' } },
    NetworkingConfig: { EndpointsConfig: { [NET]: { Aliases: ['firebird'] } } },
  });
  await c.start();
  await eventually('phoenix resolves on B', async () => answers(await lookup(b, 'phoenix')).includes(await ipOf(a, 'phoenix', NET)));
  // dockerd stops its containers (their names go) and starts them again with their restart
  // policy; the plugin's event stream breaks meanwhile and its re-read after reconnecting
  // publishes what runs then.
  await a.restartDaemon();
  const ip = await waitFor(async () => (await a.docker.getContainer('phoenix').inspect()).State.Running && (await ipOf(a, 'phoenix', NET)), {
    timeoutMs: 60_000,
    intervalMs: 500,
    what: 'phoenix running again on A',
  });
  await eventually('phoenix resolves on B after A\'s dockerd restart', async () => answers(await lookup(b, 'phoenix')).includes(ip), 60_000);
  assert.deepEqual(answers(await lookup(b, 'firebird')), [ip], 'and its alias');
  await a.docker.getContainer('phoenix').remove({ force: true });
  await eventually('phoenix is NXDOMAIN once removed', async () => /NXDOMAIN|can't find/i.test(await lookup(b, 'phoenix')));
});

test('cost of a DNS server a container cannot reach (a daemon-wide setting naming another network\'s gateway)', { skip, timeout: 180_000 }, async (t) => {
  const b = hosts[1]!;
  const timed = async (dns: string[]): Promise<{ ms: number; out: string }> => {
    const r = await runContainer(
      b.docker,
      cluster.image,
      ['sh', '-c', 'a=$(cut -d" " -f1 /proc/uptime); nslookup www.outside.test >/tmp/o 2>&1; b=$(cut -d" " -f1 /proc/uptime); cat /tmp/o; awk "BEGIN { print \\"ms=\\" int(($b - $a) * 1000) }"'],
      { network: NET2, hostConfig: { Dns: dns }, timeoutMs: 60_000 },
    );
    return { ms: Number(/ms=(\d+)/.exec(r.stdout)?.[1]), out: r.stdout };
  };
  const own = await timed([GATEWAY2]);
  const other = await timed([GATEWAY]);
  t.diagnostic(`outside name from a container on ${NET2}: --dns ${GATEWAY2} (its own gateway) ${own.ms} ms; --dns ${GATEWAY} (${NET}'s gateway, unreachable from ${NET2}) ${other.ms} ms`);
  assert.deepEqual(answers(own.out), [OUTSIDE_IP]);
  assert.deepEqual(answers(other.out), [], 'another network\'s listener is not reachable (isolation)');
  assert.ok(other.ms > own.ms);
});
