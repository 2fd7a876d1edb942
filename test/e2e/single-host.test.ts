/**
 * Issue "plugin on a real Docker engine": a real dockerd 20.10 loads tsoverlay (embedded
 * store) as network + IPAM driver; a user creates a network, runs two containers that ping
 * each other through br0, removes everything, and nothing is left behind. Bad requests get
 * a clear Err while the daemon keeps serving.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type Dockerode from 'dockerode';
import { e2eSkipReason, runContainer, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { NETNS_DIR, startPlugin, type PluginProcess } from '../helpers/plugin';
import { cleanupAfter } from '../helpers/proc';
import { readLocalStoreSnapshot } from '../../src/store/local';

const skip = e2eSkipReason();

cleanupAfter();

let cluster: Cluster;
let host: DockerHost;
let docker: Dockerode;
let plugin: PluginProcess;
const NETWORK = 'demo';

async function inHost(argv: string[]): Promise<string> {
  const r = await host.exec(argv);
  assert.equal(r.code, 0, `${argv.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** Commands inside the overlay namespace, seen from the host's mount namespace. */
async function inOverlay(args: string[]): Promise<string> {
  const files = await overlayFiles();
  assert.equal(files.length, 1, `expected one overlay namespace, found ${files.join(', ')}`);
  return inHost(['nsenter', `--net=${NETNS_DIR}/${files[0]}`, ...args]);
}

async function overlayFiles(): Promise<string[]> {
  return (await inHost(['sh', '-c', `ls ${NETNS_DIR} 2>/dev/null || true`])).split('\n').filter(Boolean);
}

/** The embedded store's committed state (snapshot + log, as `tsoverlay inspect` reads it), by full key. */
async function storeFile(): Promise<Record<string, unknown>> {
  const entries = await readLocalStoreSnapshot(`${host.dir}/tsoverlay-state`, '');
  return Object.fromEntries(entries.map((e) => [e.key, e.value]));
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 1 });
  host = cluster.hosts[0]!;
  docker = host.docker;
  plugin = await startPlugin(host);
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
});

test('user flow: create network, two containers ping through br0, clean removal', { skip, timeout: 180_000 }, async () => {
  const net = await docker.createNetwork({
    Name: NETWORK,
    Driver: 'tsoverlay',
    IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.20.0.0/24' }] },
  });
  const info = (await net.inspect()) as { Id: string; IPAM: { Config: { Subnet: string }[] } };
  assert.equal(info.IPAM.Config[0]?.Subnet, '10.20.0.0/24');
  assert.deepEqual(await overlayFiles(), [], 'no namespace before the first container');

  const a = await docker.createContainer({ Image: cluster.image, name: 'ca', Cmd: ['sleep', '3600'], HostConfig: { NetworkMode: NETWORK } });
  await a.start();
  const aInfo = (await a.inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string; MacAddress: string }> } };
  const aNet = aInfo.NetworkSettings.Networks[NETWORK]!;
  assert.equal(aNet.IPAddress, '10.20.0.2');
  assert.equal(aNet.MacAddress, '02:42:0a:14:00:02', 'MAC derived from the IP');

  // What a host must show: the overlay namespace file, br0 with the gateway, vxlan0 with the VNI.
  const files = await overlayFiles();
  assert.equal(files.length, 1);
  assert.match(files[0]!, new RegExp(`^\\d+-${info.Id.slice(0, 10)}$`));
  const vxlan = await inOverlay(['ip', '-d', 'link', 'show', 'vxlan0']);
  assert.match(vxlan, /vxlan id 256 /);
  assert.match(vxlan, /dstport 4789/);
  assert.match(vxlan, /proxy l2miss l3miss/);
  assert.match(vxlan, /mtu 1450 /);
  assert.match(vxlan, /master br0/);
  assert.match(await inOverlay(['ip', '-o', 'addr', 'show', 'br0']), /inet 10\.20\.0\.1\/24/);
  assert.match(await inOverlay(['ip', '-o', 'link', 'show', 'br0']), /mtu 1450 /);

  const ping = await runContainer(docker, cluster.image, ['sh', '-c', 'ip -o addr show eth0; ip -o link show eth0; ping -c 3 -W 2 10.20.0.2'], {
    network: NETWORK,
  });
  assert.equal(ping.exitCode, 0, `ping failed: ${ping.stdout}${ping.stderr}`);
  assert.match(ping.stdout, /inet 10\.20\.0\.3\/24/);
  assert.match(ping.stdout, /mtu 1450 /);
  assert.match(ping.stdout, /3 packets received/);
  // Names on the embedded store: the network's DNS listener at the gateway answers `ca` itself
  // (asked directly, not through Docker's resolver, which knows local names on its own).
  const byName = await runContainer(docker, cluster.image, ['nslookup', 'ca', '10.20.0.1'], { network: NETWORK });
  assert.equal(byName.exitCode, 0, `nslookup ca at the gateway: ${byName.stdout}${byName.stderr}`);
  assert.match(byName.stdout, /Name:\s+ca[\s\S]*Address:\s+10\.20\.0\.2/);

  // Where the engines differ: both reserve the gateway themselves (tsoverlay does not advertise
  // GwAllocChecker, so no engine asks GwAllocCheck); 28 asks EndpointOperInfo after every Join,
  // and the answer keeps the container running.
  const calls = plugin.process.output();
  assert.doesNotMatch(calls, /NetworkDriver\.GwAllocCheck/, 'no GwAllocCheck without the capability');
  if (host.engine.name === '28') assert.match(calls, /NetworkDriver\.EndpointOperInfo/, 'Docker 28 asks EndpointOperInfo');
  assert.equal(((await a.inspect()) as { State: { Running: boolean } }).State.Running, true);

  await a.remove({ force: true });
  assert.deepEqual(await overlayFiles(), [], 'namespace removed with the last container');
  await net.remove();

  // What stays is the host's own: its registration, and the mark that its endpoint index is complete.
  const leftKeys = Object.keys(await storeFile()).filter((k) => !k.includes('/hosts/') && !k.includes('/hostendpoints-indexed/'));
  assert.deepEqual(leftKeys, [], 'no store record but the host registration and its index mark');
  const links = await inHost(['ip', '-o', 'link']);
  assert.doesNotMatch(links, /\bv[ce][0-9a-f]{11}\b/, 'no veth left in the host namespace');
  const mounts = await inHost(['cat', '/proc/self/mountinfo']);
  assert.doesNotMatch(mounts, new RegExp(`${NETNS_DIR}/\\d+-`), 'no namespace mount left');
  assert.ok(plugin.process.running());
});

test('bad requests get a clear Err and the daemon keeps serving', { skip, timeout: 120_000 }, async () => {
  const malformed = await plugin.call('/NetworkDriver.CreateNetwork', '{"NetworkID": "abc",');
  assert.equal(malformed.status, 400);
  assert.match(malformed.contentType, /application\/vnd\.docker\.plugins\.v1\+json/);
  assert.match((malformed.body as { Err: string }).Err, /not valid JSON/);

  const id = (c: string) => c.repeat(64);
  const unknownNet = await plugin.call('/NetworkDriver.Join', JSON.stringify({ NetworkID: id('e'), EndpointID: id('f'), SandboxKey: '/x' }));
  assert.equal(unknownNet.status, 404);
  assert.match((unknownNet.body as { Err: string }).Err, /unknown network e{64}/);

  const badSubnet = await plugin.call('/IpamDriver.RequestPool', JSON.stringify({ AddressSpace: 'tsoverlay-local', Pool: '10.1.2.0/33' }));
  assert.equal(badSubnet.status, 400);
  assert.match((badSubnet.body as { Err: string }).Err, /invalid IPv4 subnet "10\.1\.2\.0\/33"/);

  const unknownMethod = await plugin.call('/NetworkDriver.Frobnicate', '{}');
  assert.equal(unknownMethod.status, 404);

  // Through Docker, as a user sees it.
  await assert.rejects(
    docker.createNetwork({ Name: 'badopt', Driver: 'tsoverlay', Options: { vin: '300' }, IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.22.0.0/24' }] } }),
    /unknown option "vin"/,
  );
  await assert.rejects(
    docker.createNetwork({ Name: 'badvni', Driver: 'tsoverlay', Options: { vni: '99999999' }, IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.23.0.0/24' }] } }),
    /out of range/,
  );
  const names = ((await docker.listNetworks()) as { Name: string }[]).map((n) => n.Name);
  assert.ok(!names.includes('badopt') && !names.includes('badvni'));

  // Still serving: a valid network works afterwards, and its pool was not leaked by the failures.
  const net = await docker.createNetwork({ Name: 'after', Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.22.0.0/24' }] } });
  const r = await runContainer(docker, cluster.image, ['sh', '-c', 'ip -o addr show eth0'], { network: 'after' });
  assert.equal(r.exitCode, 0);
  assert.match(r.stdout, /10\.22\.0\.2\/24/);
  await net.remove();
  assert.ok(plugin.process.running(), 'plugin still running');
});

test('repeated Join/CreateEndpoint (Docker retries) create nothing twice', { skip, timeout: 120_000 }, async () => {
  const net = await docker.createNetwork({ Name: 'retry', Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.24.0.0/24' }] } });
  const netId = (net as unknown as { id: string }).id;
  const epId = 'a1b2c3d4e5f6'.repeat(5) + 'abcd';
  const create = JSON.stringify({ NetworkID: netId, EndpointID: epId, Interface: { Address: '10.24.0.50/24' } });
  const first = await plugin.call('/NetworkDriver.CreateEndpoint', create);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.deepEqual(first.body, { Interface: { MacAddress: '02:42:0a:18:00:32' } });
  assert.deepEqual((await plugin.call('/NetworkDriver.CreateEndpoint', create)).body, first.body);
  const unknownEp = await plugin.call('/NetworkDriver.Join', JSON.stringify({ NetworkID: netId, EndpointID: 'f'.repeat(64), SandboxKey: '/x' }));
  assert.equal(unknownEp.status, 404);
  assert.match((unknownEp.body as { Err: string }).Err, /unknown endpoint f{64}/);
  const join = JSON.stringify({ NetworkID: netId, EndpointID: epId, SandboxKey: '/var/run/docker/netns/x' });
  const j1 = await plugin.call('/NetworkDriver.Join', join);
  const j2 = await plugin.call('/NetworkDriver.Join', join);
  assert.equal(j1.status, 200, JSON.stringify(j1.body));
  assert.deepEqual(j1.body, j2.body);
  const srcName = (j1.body as { InterfaceName: { SrcName: string; DstPrefix: string } }).InterfaceName.SrcName;
  assert.equal((j1.body as { InterfaceName: { DstPrefix: string } }).InterfaceName.DstPrefix, 'eth');
  const hostLinks = (await inHost(['ip', '-o', 'link'])).split('\n').filter((l) => l.includes(`${srcName}@`));
  assert.equal(hostLinks.length, 1, 'one veth end in the host namespace');
  assert.match(hostLinks[0]!, /mtu 1450 /);
  assert.match(hostLinks[0]!, /02:42:0a:18:00:32/);
  const ports = (await inOverlay(['ip', '-o', '-d', 'link', 'show', 'master', 'br0'])).split('\n').filter((l) => l.includes('veth'));
  assert.equal(ports.length, 1, 'one bridge port for the endpoint');

  for (let i = 0; i < 2; i++) assert.equal((await plugin.call('/NetworkDriver.Leave', JSON.stringify({ NetworkID: netId, EndpointID: epId }))).status, 200);
  for (let i = 0; i < 2; i++) {
    assert.equal((await plugin.call('/NetworkDriver.DeleteEndpoint', JSON.stringify({ NetworkID: netId, EndpointID: epId }))).status, 200);
  }
  assert.deepEqual(await overlayFiles(), []);
  assert.doesNotMatch(await inHost(['ip', '-o', 'link']), new RegExp(srcName));
  await net.remove();
});

test('the default route goes through docker_gwbridge; an --internal network gives the overlay only', { skip, timeout: 120_000 }, async () => {
  const show = ['sh', '-c', 'ip -o -4 addr show; echo ---; ip route'];
  await docker.createNetwork({ Name: 'outside', Driver: 'tsoverlay', IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.26.0.0/24' }] } });
  const open = await runContainer(docker, cluster.image, show, { network: 'outside' });
  assert.equal(open.exitCode, 0, open.stderr);
  assert.match(open.stdout, /eth0\s+inet 10\.26\.0\.2\/24/, 'eth0 on the overlay');
  const gw = ((await docker.getNetwork('docker_gwbridge').inspect()) as { IPAM: { Config: { Gateway: string }[] } }).IPAM.Config[0]!.Gateway;
  assert.match(open.stdout, /eth1\s+inet /, `eth1 on docker_gwbridge: ${open.stdout}`);
  assert.match(open.stdout, new RegExp(`default via ${gw.replace(/\./g, '\\.')} dev eth1`), `default route via docker_gwbridge: ${open.stdout}`);
  assert.doesNotMatch(open.stdout, /default via [^\n]* dev eth0/, 'no default route on the overlay');

  await docker.createNetwork({ Name: 'inside', Driver: 'tsoverlay', Internal: true, IPAM: { Driver: 'tsoverlay', Config: [{ Subnet: '10.27.0.0/24' }] } });
  const closed = await runContainer(docker, cluster.image, show, { network: 'inside' });
  assert.equal(closed.exitCode, 0, closed.stderr);
  assert.match(closed.stdout, /eth0\s+inet 10\.27\.0\.2\/24/);
  assert.doesNotMatch(closed.stdout, /eth1/, `--internal: no docker_gwbridge leg: ${closed.stdout}`);
  assert.doesNotMatch(closed.stdout, /^default/m, `--internal: no default route: ${closed.stdout}`);
  await docker.getNetwork('outside').remove();
  await docker.getNetwork('inside').remove();
});
