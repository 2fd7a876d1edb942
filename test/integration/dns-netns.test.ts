/**
 * The per-network DNS listener in a real network namespace: its sockets are created inside
 * the namespace (bound to the gateway address on a bridge there), a client in that namespace
 * gets answers over UDP and TCP, the host namespace has no such listener, and release closes it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DnsListeners } from '../../src/dns/listeners';
import { Forwarder } from '../../src/dns/upstream';
import { silentLogger } from '../../src/log';
import { MapView } from '../helpers/dns';
import { inNs, ipIn, registerKernelCleanup, run, throwawayNetns } from '../helpers/kernel';
import { run as runAsync } from '../helpers/proc';

/** Asynchronous: the server under test runs in this very process and must keep its event loop. */
async function inNsAsync(ns: string, argv: string[]): Promise<string> {
  const r = await runAsync(['nsenter', `--net=${ns}`, ...argv], { timeoutMs: 15_000, allowFailure: true });
  return r.stdout + r.stderr;
}

const skip = process.getuid?.() !== 0 ? 'needs root (network namespaces)' : false;

const listeners: DnsListeners[] = [];
registerKernelCleanup(async () => {
  for (const l of listeners) await l.close();
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
