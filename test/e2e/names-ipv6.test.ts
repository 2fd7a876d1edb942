/**
 * Issue 17 on IPv6-only networks (`--ipv4=false`, Docker 28 only: 20.10 has no such network):
 * two hosts on a shared etcd, a container on each. A container on B started with `--dns <the
 * network's IPv6 gateway>` resolves, through Docker's embedded resolver (which dials that IPv6
 * server from inside the container's namespace), the AAAA record of a container on A, its
 * alias, and the reverse (ip6.arpa) name; a name nobody has is NXDOMAIN. The listener is the
 * plugin's, on the IPv6 gateway on br0 in B's overlay namespace.
 *
 * On 20.10 every case is a named skip; test/e2e/docker28/names-ipv6.test.ts runs this file on 28.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { currentEngine, e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { inOverlay } from '../helpers/resilience';
import { startPlugin } from '../helpers/plugin';
import { cleanupAfter, waitFor } from '../helpers/proc';

const skip = e2eSkipReason(['/usr/bin/etcd']) || (currentEngine().name === '28' ? false : 'IPv6-only networks (--ipv4=false) need Docker 28');
cleanupAfter();

const NET = 'names6';
const SUBNET6 = 'fd00:133::/64';
/** The subnet's first address, the gateway tsoverlay's IPAM gives unless `--gateway` says otherwise. */
const gw6 = 'fd00:133::1';

let cluster: Cluster;
let etcd: EtcdServer;
let a: DockerHost;
let b: DockerHost;

async function ok(host: DockerHost, args: string[]): Promise<string> {
  const r = await host.cli(args, { allowFailure: true, timeoutMs: 90_000 });
  assert.equal(r.code, 0, `docker ${args.join(' ')} on ${host.name}: ${r.stdout}${r.stderr}`);
  return r.stdout.trim();
}

/** `nslookup` in B's container, whose external DNS is the IPv6 gateway (its resolv.conf names the embedded resolver). */
async function lookup(args: string[]): Promise<string> {
  const r = await b.cli(['exec', 'near6', 'nslookup', ...args], { allowFailure: true, timeoutMs: 30_000 });
  return `${r.stdout}${r.stderr}`;
}

/** IPv6 addresses in an nslookup answer (the server's own address lines excluded). */
function answers6(out: string): string[] {
  const afterName = out.split(/\nName:/).slice(1).join('\n');
  return [...afterName.matchAll(/Address(?: \d+)?:\s*([0-9a-f:]+:[0-9a-f:]*)/g)].map((m) => m[1]!).sort();
}

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 2 });
  [a, b] = cluster.hosts as [DockerHost, DockerHost];
  etcd = await startEtcd({ alsoListenOn: cluster.underlay.gateway });
  const store = `etcd://${etcd.endpoints.find((e) => e.startsWith(cluster.underlay.gateway))!}`;
  for (const host of [a, b]) await startPlugin(host, { store });
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
  await etcd?.stop();
});

test('IPv6-only network: AAAA, alias and ip6.arpa of a container on another host, through --dns <IPv6 gateway>', { skip, timeout: 180_000 }, async (t) => {
  for (const host of [a, b]) {
    await ok(host, ['network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--ipv4=false', '--ipv6', '--subnet', SUBNET6, NET]);
  }
  const networkId = await ok(b, ['network', 'inspect', '--format', '{{.Id}}', NET]);
  await ok(a, ['run', '-d', '--name', 'far6', '--net', NET, '--network-alias', 'db6', cluster.image, 'sleep', '3600']);
  // B needs a local container for its overlay (and so its listener) to exist.
  await ok(b, ['run', '-d', '--name', 'near6', '--net', NET, '--dns', gw6, cluster.image, 'sleep', '3600']);
  const ip6 = await ok(a, ['inspect', '--format', `{{(index .NetworkSettings.Networks "${NET}").GlobalIPv6Address}}`, 'far6']);
  assert.match(ip6, /^fd00:133::/);
  t.diagnostic(`far6 on A ${ip6}; B's listener at [${gw6}]:53`);

  const listening = new RegExp(`\\[${gw6.replace(/[.:]/g, (c) => `\\${c}`)}\\]:53`);
  await waitFor(async () => listening.test(await inOverlay(b, networkId, 'ss -Hlnu')), { timeoutMs: 10_000, what: "the listener on the IPv6 gateway in B's overlay namespace" });

  await waitFor(async () => answers6(await lookup(['-type=aaaa', 'far6'])).includes(ip6), { timeoutMs: 20_000, intervalMs: 200, what: 'far6 resolves on B' });
  assert.deepEqual(answers6(await lookup(['-type=aaaa', 'far6'])), [ip6]);
  assert.deepEqual(answers6(await lookup(['-type=aaaa', 'db6'])), [ip6], 'the alias');
  assert.deepEqual(answers6(await lookup(['-type=aaaa', `far6.${NET}`])), [ip6], '<name>.<network>');
  assert.match(await lookup([ip6]), new RegExp(`far6\\.${NET}`), 'reverse lookup under ip6.arpa');
  assert.match(await lookup(['-type=aaaa', 'nobody6']), /NXDOMAIN|can't find/i);
  // Straight to the listener, not through Docker's resolver: the answer is the plugin's.
  const direct = await lookup(['-type=aaaa', 'db6', gw6]);
  assert.match(direct, new RegExp(`Server:\\s+${gw6}`), direct);
  assert.deepEqual(answers6(direct), [ip6]);

  await ok(a, ['rm', '-f', 'far6']);
  await waitFor(async () => /NXDOMAIN|can't find/i.test(await lookup(['-type=aaaa', 'far6'])), { timeoutMs: 20_000, intervalMs: 200, what: 'far6 is NXDOMAIN after rm' });
  await ok(b, ['rm', '-f', 'near6']);
  for (const host of [a, b]) await ok(host, ['network', 'rm', NET]);
});
