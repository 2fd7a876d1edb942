/**
 * The per-network DNS listener in a real network namespace: its sockets are created inside
 * the namespace (bound to the gateway address on a bridge there), a client in that namespace
 * gets answers over UDP and TCP, the host namespace has no such listener, and release closes it.
 * IPv6: a dual-stack overlay is served on both gateways, an IPv6-only one on its IPv6 gateway.
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
  await dns.activate({ networkId: 'n1', networkKey: '10.251.7.0-24', netnsPath: ns, addresses: ['10.251.7.1'] });
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
  await dns.activate({ networkId: spec.networkId, networkKey: '10.251.8.0-24', netnsPath: overlay.netnsPath, addresses: ['10.251.8.1'] });

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

test('IPv6 gateways: a dual-stack overlay answers on both gateways, an IPv6-only one on its IPv6 gateway, AAAA and ip6.arpa included', { skip }, async () => {
  const dp = new Dataplane({ netnsDir: runDir('dns-netns'), logger: silentLogger() });
  dataplanes.push(dp);
  const forwarder = new Forwarder({ upstreams: () => [], timeoutMs: 200 });
  const dns = new DnsListeners({ zone: () => view, forwarder, logger: silentLogger() });
  listeners.push(dns);
  const view = new MapView('demo', 'fd00:251:9::');
  view.set('web', ['10.251.9.9', 'fd00:251:9::9']);
  const cases = [
    { id: testId('s'), vni: 4001, gatewayCidr: '10.251.9.1/24', gateway6Cidr: 'fd00:251:9::1/64', addresses: ['10.251.9.1', 'fd00:251:9::1'] },
    { id: testId('6'), vni: 4002, gateway6Cidr: 'fd00:251:9::1/64', addresses: ['fd00:251:9::1'] },
  ];
  for (const c of cases) {
    const spec = { networkId: c.id, vni: c.vni, mtu: 1450, mode: 'static' as const, gateway6Cidr: c.gateway6Cidr, ...(c.gatewayCidr ? { gatewayCidr: c.gatewayCidr } : {}) };
    const overlay = await dp.ensureOverlay(spec);
    await dns.activate({ networkId: c.id, networkKey: c.id, netnsPath: overlay.netnsPath, addresses: c.addresses });
    assert.deepEqual(dns.list().find((l) => l.networkId === c.id)?.addresses, c.addresses);
    const ss = inNs(overlay.netnsPath, 'ss', ['-Hlnu']) + inNs(overlay.netnsPath, 'ss', ['-Hlnt']);
    for (const a of c.addresses) assert.match(ss, new RegExp(`${(a.includes(':') ? `[${a}]` : a).replace(/[.[\]]/g, '\\$&')}:53`), `${a}:53 (UDP and TCP)`);

    // A client on br0 with an IPv6 address, as a container on the network is.
    const tag = c.id.slice(-6);
    const client = throwawayNetns(`dns6-${tag}`);
    ipIn(overlay.netnsPath, 'link', 'add', `c${tag}`, 'type', 'veth', 'peer', 'name', `p${tag}`);
    ipIn(overlay.netnsPath, 'link', 'set', `p${tag}`, 'master', 'br0', 'up');
    ipIn(overlay.netnsPath, 'link', 'set', `c${tag}`, 'netns', client);
    ipIn(client, 'addr', 'add', 'fd00:251:9::2/64', 'dev', `c${tag}`, 'nodad');
    if (c.gatewayCidr) ipIn(client, 'addr', 'add', '10.251.9.2/24', 'dev', `c${tag}`);
    ipIn(client, 'link', 'set', `c${tag}`, 'up');
    const ask = (args: string[], server: string): Promise<string> => inNsAsync(client, ['busybox', 'nslookup', '-timeout=2', '-retry=1', ...args, server]);
    for (const server of c.addresses) {
      assert.match(await ask(['-type=aaaa', 'web'], server), /fd00:251:9::9/, `AAAA from ${server}`);
      assert.match(await ask(['-type=ptr', `${[...'fd000251000900000000000000000009'].reverse().join('.')}.ip6.arpa`], server), /web/, `ip6.arpa from ${server}`);
    }
    // Over TCP to the IPv6 gateway too (AAAA query for "web", id 1).
    const tcp = await inNsAsync(client, ['sh', '-c', "printf '\\000\\025\\000\\001\\001\\000\\000\\001\\000\\000\\000\\000\\000\\000\\003web\\000\\000\\034\\000\\001' | busybox nc -w 2 fd00:251:9::1 53 | od -An -tx1"]);
    assert.match(tcp.replace(/\s+/g, ' '), /fd 00 02 51 00 09 00 00 00 00 00 00 00 00 00 09/, 'AAAA record over TCP');
    await dns.release(c.id);
    assert.doesNotMatch(inNs(overlay.netnsPath, 'ss', ['-Hlnu']), /:53\b/, 'released: the sockets are closed');
    await dp.removeOverlay(c.id);
  }
  forwarder.close();
});
