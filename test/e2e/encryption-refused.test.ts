/**
 * `docker network create -o encrypted` on a real dockerd 20.10 whose kernel has no ESP/AES-GCM
 * (this machine's): the plugin refuses at once, saying what is missing, and no network exists
 * afterwards; a plain network on the same host works. Where the kernel can encrypt, the refusal
 * is skipped (test/integration/encryption-qemu.test.ts covers that kernel).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { probeEspSupport } from '../../src/dataplane/xfrm';
import { e2eSkipReason, startCluster, type Cluster, type DockerHost } from '../helpers/docker';
import { startPlugin } from '../helpers/plugin';
import { cleanupAfter } from '../helpers/proc';

const skip = e2eSkipReason();
cleanupAfter();

let cluster: Cluster;
let host: DockerHost;

before(async () => {
  if (skip) return;
  cluster = await startCluster({ hosts: 1 });
  host = cluster.hosts[0]!;
  await startPlugin(host);
});

after(async () => {
  if (skip) return;
  await cluster?.teardown();
});

test('-o encrypted is refused at once on a kernel without ESP, saying what is missing', { skip }, async (t) => {
  const support = await probeEspSupport();
  if (support.ok) return t.skip('this kernel can do ESP with AES-GCM');
  const t0 = Date.now();
  const r = await host.cli(['network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--subnet', '10.77.0.0/24', '-o', 'encrypted', 'secret'], { allowFailure: true });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /-o encrypted: this host's kernel cannot encrypt VXLAN \(missing: /);
  assert.ok(r.stderr.includes(support.missing[0]!), r.stderr);
  assert.ok(Date.now() - t0 < 15_000, 'refused at once');
  const ls = await host.cli(['network', 'ls', '--format', '{{.Name}}']);
  assert.ok(!ls.stdout.split('\n').includes('secret'), 'no network was created');
  const plain = await host.cli(['network', 'create', '-d', 'tsoverlay', '--ipam-driver', 'tsoverlay', '--subnet', '10.77.0.0/24', 'plain']);
  assert.equal(plain.code, 0, plain.stderr);
  await host.cli(['network', 'rm', 'plain']);
});
