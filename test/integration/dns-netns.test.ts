/**
 * The per-network DNS listener in a real network namespace: its sockets are created inside
 * the namespace (bound to the gateway address on a bridge there), a client in that namespace
 * gets answers over UDP and TCP, the host namespace has no such listener, and release closes it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Dataplane } from '../../src/dataplane/dataplane';
import { DnsListeners } from '../../src/dns/listeners';
import { Forwarder } from '../../src/dns/upstream';
import { silentLogger } from '../../src/log';
import { MapView } from '../helpers/dns';
import { inNs, ipIn, registerKernelCleanup, run, runDir, testId, throwawayNetns } from '../helpers/kernel';
import { run as runAsync } from '../helpers/proc';

/** Asynchronous: the server under test runs in this very process and must keep its event loop. */
async function inNsAsync(ns: string, argv: string[]): Promise<string> {
  const r = await runAsync(['nsenter', `--net=${ns}`, ...argv], { timeoutMs: 15_000, allowFailure: true });
  return r.stdout + r.stderr;
}

const skip = process.getuid?.() !== 0 ? 'needs root (network namespaces)' : false;

const listeners: DnsListeners[] = [];
const dataplanes: Dataplane[] = [];
registerKernelCleanup(async () => {
  for (const l of listeners) await l.close();
  for (const dp of dataplanes) {
    for (const o of dp.listOverlays()) await dp.removeOverlay(o.networkIdPrefix).catch(() => undefined);
    dp.close();
  }
});

test('a listener bound inside the overlay namespace answers there, over UDP and TCP, and only there', { skip }, async () => {
  const ns = throwawayNetns('dns');
  ipIn(ns, 'link', 'set', 'lo', 'up');
  ipIn(ns, 'link', 'add', 'br0', 'type', 'bridge');
  ipIn(ns, 'link', 'set', 'br0', 'up');
  const view = new MapView('demo', '10.251.7.');
  view.set('web', ['10.251.7.2']);
  const forwarder = new Forwarder({ upstreams: () => [], timeoutMs: 200 });
  const dns = new DnsListeners({ zone: () => view, forwarder, logger: silentLogger() });
  listeners.push(dns);
  // Bound before the address exists (IP_FREEBIND): activation order does not matter.
  await dns.activate({ networkId: 'n1', networkKey: '10.251.7.0-24', netnsPath: ns, gateway: '10.251.7.1' });
  assert.equal(dns.list().length, 1);
  ipIn(ns, 'addr', 'add', '10.251.7.1/24', 'dev', 'br0');

  const udp = await inNsAsync(ns, ['busybox', 'nslookup', 'web', '10.251.7.1']);
  assert.match(udp, /10\.251\.7\.2/);
  const ss = inNs(ns, 'ss', ['-Hlnt']);
  assert.match(ss, /10\.251\.7\.1:53/, 'TCP listener in the namespace');
  const ptr = await inNsAsync(ns, ['busybox', 'nslookup', '10.251.7.2', '10.251.7.1']);
  assert.match(ptr, /web/);
  const nx = await inNsAsync(ns, ['busybox', 'nslookup', 'nobody', '10.251.7.1']);
  assert.match(nx, /NXDOMAIN|can't find/i);
  assert.doesNotMatch(nx, /Address: 10\.251\.7\./);
  // TCP from inside the namespace: a real client and the framing on the wire.
  const tcp = await inNsAsync(ns, ['sh', '-c', "printf '\\000\\025\\000\\001\\001\\000\\000\\001\\000\\000\\000\\000\\000\\000\\003web\\000\\000\\001\\000\\001' | busybox nc -w 2 10.251.7.1 53 | od -An -tx1"]);
  assert.match(tcp.replace(/\s+/g, ' '), /0a fb 07 02/, 'A record 10.251.7.2 over TCP');

  const hostSs = run('ss', ['-Hlnu']);
  assert.doesNotMatch(hostSs, /10\.251\.7\.1:53/, 'nothing listens in the host namespace');

  await dns.release('n1');
  assert.equal(dns.list().length, 0);
  assert.doesNotMatch(inNs(ns, 'ss', ['-Hlnu']), /:53\b/, 'released: the sockets are closed');
  forwarder.close();
});

/** br0's MAC address as `ip link` shows it. */
function bridgeMac(ns: string): string {
  return /link\/ether ([0-9a-f:]{17})/.exec(ipIn(ns, 'link', 'show', 'br0'))?.[1] ?? '';
}

test('a client that resolved the gateway keeps reaching the DNS listener when more ports join br0', { skip }, async () => {
  // Left to the kernel, a bridge takes the lowest of its ports' MAC addresses and changes it
  // as ports come and go; a container that had already resolved the gateway then kept sending
  // to the old address, which br0 drops as not its own, until its neighbour entry expired
  // (seen as a long-polling container that never resolved a name while fresh ones did).
  const dp = new Dataplane({ netnsDir: runDir('dns-netns'), logger: silentLogger() });
  dataplanes.push(dp);
  const spec = { networkId: testId('d'), vni: 4000, mtu: 1450, gatewayCidr: '10.251.8.1/24', mode: 'static' as const };
  const overlay = await dp.ensureOverlay(spec);
  const view = new MapView('demo', '10.251.8.');
  view.set('web', ['10.251.8.9']);
  const forwarder = new Forwarder({ upstreams: () => [], timeoutMs: 200 });
  const dns = new DnsListeners({ zone: () => view, forwarder, logger: silentLogger() });
  listeners.push(dns);
  await dns.activate({ networkId: spec.networkId, networkKey: '10.251.8.0-24', netnsPath: overlay.netnsPath, gateway: '10.251.8.1' });

  // A client on br0, as a container is: its own namespace, a veth pair, an address.
  const client = throwawayNetns('dns-client');
  const tag = spec.networkId.slice(-6);
  ipIn(overlay.netnsPath, 'link', 'add', `c${tag}`, 'type', 'veth', 'peer', 'name', `p${tag}`);
  ipIn(overlay.netnsPath, 'link', 'set', `p${tag}`, 'master', 'br0', 'up');
  ipIn(overlay.netnsPath, 'link', 'set', `c${tag}`, 'netns', client);
  ipIn(client, 'addr', 'add', '10.251.8.2/24', 'dev', `c${tag}`);
  ipIn(client, 'link', 'set', `c${tag}`, 'up');
  const ask = (): Promise<string> => inNsAsync(client, ['busybox', 'nslookup', '-timeout=2', '-retry=1', 'web', '10.251.8.1']);
  assert.match(await ask(), /10\.251\.8\.9/, 'answered before');
  const mac = bridgeMac(overlay.netnsPath);

  // Another port with the lowest possible address joins (a new container's veth would, by chance).
  ipIn(overlay.netnsPath, 'link', 'add', `l${tag}`, 'type', 'veth', 'peer', 'name', `m${tag}`);
  ipIn(overlay.netnsPath, 'link', 'set', `l${tag}`, 'address', '00:00:00:00:00:01');
  ipIn(overlay.netnsPath, 'link', 'set', `l${tag}`, 'master', 'br0', 'up');
  assert.equal(bridgeMac(overlay.netnsPath), mac, "br0's address does not follow its ports");
  assert.match(await ask(), /10\.251\.8\.9/, 'the same client is still answered');

  await dns.release(spec.networkId);
  await dp.removeOverlay(spec.networkId);
  forwarder.close();
});
