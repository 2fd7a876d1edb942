/**
 * docker compose on two hosts, as docs/compose.md shows it: one compose file per host whose
 * network uses `driver: tsoverlay` and `ipam: driver: tsoverlay` with the same subnet (so it is
 * one network in the store), a service on each host, each reaching the other by address across
 * the hosts; `docker compose down` on both leaves nothing: no overlay namespace, no endpoint,
 * address or network record of the subnet in the store. The compose CLI plugin (2.40, from
 * Debian sid) is driven by the engine's own CLI (20.10 here, 28 in test/e2e/docker28).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { currentEngine, e2eSkipReason, isCi, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { NETNS_DIR, startPlugin } from '../helpers/plugin';
import { cleanupAfter } from '../helpers/proc';
import { etcdDump } from '../helpers/resilience';

function composeSkipReason(): string | false {
  const base = e2eSkipReason(['/usr/bin/etcd']);
  if (base) return base;
  if (currentEngine().cliPluginsDir !== undefined) return false;
  const why = 'docker-compose CLI plugin missing (run .ci/provision-extras.sh)';
  if (isCi()) throw new Error(`docker compose is required in CI: ${why}`);
  return why;
}

const skip = composeSkipReason();
cleanupAfter();

const SUBNET = '10.90.0.0/24';
const SUBNET_KEY = '10.90.0.0-24';
const WEB_IP = '10.90.0.10';
const CLIENT_IP = '10.90.0.20';

let cluster: Cluster;
let etcd: EtcdServer;
let hosts: DockerHost[];

/** The compose file of one host: one service, a fixed address on the shared network. */
function composeFile(image: string, service: string, ip: string): string {
  return `name: demo
services:
  ${service}:
    image: ${image}
    pull_policy: never
    command: ["sleep", "3600"]
    networks:
      overlay:
        ipv4_address: ${ip}
networks:
  overlay:
    name: demo-overlay
    driver: tsoverlay
    ipam:
      driver: tsoverlay
      config:
        - subnet: ${SUBNET}
`;
}

async function compose(host: DockerHost, args: readonly string[]): Promise<string> {
  const file = path.join(host.dir, 'compose.yaml');
  const r = await host.cli(['compose', '-f', file, ...args], { timeoutMs: 120_000, allowFailure: true });
  assert.equal(r.code, 0, `docker compose ${args.join(' ')} on ${host.name} (docker ${host.engine.name}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout + r.stderr;
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 2 });
  hosts = [...cluster.hosts];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  const store = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  for (const h of hosts) await startPlugin(h, { store });
  const [a, b] = hosts as [DockerHost, DockerHost];
  fs.writeFileSync(path.join(a.dir, 'compose.yaml'), composeFile(cluster.image, 'web', WEB_IP));
  fs.writeFileSync(path.join(b.dir, 'compose.yaml'), composeFile(cluster.image, 'client', CLIENT_IP));
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
});

test('compose up on two hosts: services reach each other across hosts; down leaves nothing', { skip, timeout: 300_000 }, async (t) => {
  const [a, b] = hosts as [DockerHost, DockerHost];
  t.diagnostic((await a.cli(['compose', 'version'])).stdout.trim());
  await compose(a, ['up', '-d']);
  await compose(b, ['up', '-d']);

  const net = (await a.docker.getNetwork('demo-overlay').inspect()) as { Driver: string; IPAM: { Driver: string; Config: { Subnet: string }[] } };
  assert.equal(net.Driver, 'tsoverlay');
  assert.equal(net.IPAM.Driver, 'tsoverlay');
  assert.equal(net.IPAM.Config[0]?.Subnet, SUBNET);

  const fromB = await compose(b, ['exec', '-T', 'client', 'ping', '-c', '3', '-W', '2', WEB_IP]);
  assert.match(fromB, /3 packets received/, 'client on B reaches web on A');
  const fromA = await compose(a, ['exec', '-T', 'web', 'ping', '-c', '3', '-W', '2', CLIENT_IP]);
  assert.match(fromA, /3 packets received/, 'web on A reaches client on B');

  const during = await etcdDump(etcd);
  assert.equal([...during.keys()].filter((k) => k.startsWith('endpoints/')).length, 2, 'one endpoint record per service');

  await compose(a, ['down']);
  await compose(b, ['down']);
  for (const h of hosts) {
    const left = await h.exec(['sh', '-c', `ls ${NETNS_DIR} 2>/dev/null || true`]);
    assert.equal(left.stdout.trim(), '', `overlay namespaces left on ${h.name}`);
    const nets = (await h.docker.listNetworks()).map((n) => n.Name);
    assert.ok(!nets.includes('demo-overlay'), `network left on ${h.name}`);
  }
  const store = [...(await etcdDump(etcd)).keys()];
  assert.deepEqual(
    store.filter((k) => k.startsWith('endpoints/') || k.includes(SUBNET_KEY)),
    [],
    'no endpoint, address, pool or network record of the compose network is left in the store',
  );
});
