/**
 * IPv6 in the dataplane against the real kernel, across two test "hosts" (namespaces on a test
 * underlay, test/helpers/hosts.ts), each driving the Dataplane from its own namespace
 * (test/helpers/dataplane-agent.ts): a dual-stack overlay on an IPv4 underlay and an IPv6-only
 * overlay on an IPv6 underlay. Containers are throwaway namespaces holding the veth ends.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { AgentCall } from '../helpers/dataplane-agent';
import type { OverlaySpec, Peer } from '../../src/dataplane/types';
import { createUnderlay, type Underlay, type UnderlayHost } from '../helpers/hosts';
import { spawnTracked, waitFor } from '../helpers/proc';
import { inNs, registerKernelCleanup, runDir, testId, throwawayNetns } from '../helpers/kernel';

registerKernelCleanup();
const AGENT = path.join(__dirname, '..', 'helpers', 'dataplane-agent.js');

async function agent<T>(h: UnderlayHost, c: AgentCall): Promise<T> {
  const r = await h.exec([process.execPath, AGENT, JSON.stringify(c)], { allowFailure: true });
  if (r.code !== 0) throw new Error(`agent ${c.op} on ${h.shortName}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as T;
}

interface Container {
  ns: string;
  mac: string;
  ip: string;
  ip6: string;
}

/** An endpoint on host `h`: the veth pair from the dataplane, the host end moved into a container namespace as eth0. */
async function container(h: UnderlayHost, netnsDir: string, networkId: string, n: number, v4Net: string | undefined, v6Net: string): Promise<Container> {
  const endpointId = testId(`e${h.index}${n}`);
  const mac = `02:42:0a:99:${h.index.toString(16).padStart(2, '0')}:${n.toString(16).padStart(2, '0')}`;
  const att = await agent<{ srcName: string }>(h, { op: 'attachEndpoint', netnsDir, endpoint: { networkId, endpointId, mac, mtu: 1400 } });
  const ns = throwawayNetns(`c${h.index}${n}-${networkId.slice(-6)}`);
  const ip = v4Net ? `${v4Net}.${h.index * 10 + n}` : '';
  const ip6 = `${v6Net}::${(h.index * 16 + n).toString(16)}`;
  await h.exec(['ip', 'link', 'set', att.srcName, 'netns', ns]);
  inNs(ns, 'sh', ['-c', 'echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 0 > /proc/sys/net/ipv6/conf/default/accept_ra']);
  inNs(ns, 'ip', ['link', 'set', att.srcName, 'name', 'eth0']);
  inNs(ns, 'ip', ['link', 'set', 'lo', 'up']);
  if (ip) inNs(ns, 'ip', ['addr', 'add', `${ip}/24`, 'dev', 'eth0']);
  inNs(ns, 'ip', ['addr', 'add', `${ip6}/64`, 'dev', 'eth0', 'nodad']);
  inNs(ns, 'ip', ['link', 'set', 'eth0', 'up']);
  return { ns, mac, ip, ip6 };
}

const peerOf = (c: Container, vtep: string): Peer => ({ ip: c.ip, ip6: c.ip6, mac: c.mac, vtep });

/** A capture of VXLAN (UDP 4789) on a host's underlay interface, decoded by tcpdump (inner frames included). */
async function capture(h: UnderlayHost, filter: string) {
  const p = spawnTracked(['nsenter', `--net=${h.netnsPath}`, '--', 'tcpdump', '-l', '-n', '-v', '-i', 'eth0', filter], { name: `tcpdump-${h.shortName}` });
  await p.waitForOutput(/listening on/, 10_000);
  return p;
}

const ping6 = (c: Container, to: string): string => inNs(c.ns, 'ping', ['-6', '-c', '2', '-i', '0.2', '-W', '2', to]);
const vxlanNs = (info: { netnsPath: string }, ...args: string[]): string => inNs(info.netnsPath, 'ip', args);

describe('IPv6 dataplane (two hosts, real kernel)', () => {
  // One underlay (a run has one prefix) carrying both families: the first test's VTEPs are its
  // IPv4 addresses, the second's its IPv6 ones.
  let ul: Underlay;
  before(async () => {
    ul = await createUnderlay({ hosts: 2, ipv6: true });
  });
  after(async () => {
    await ul?.teardown();
  });

  test('dual-stack overlay on an IPv4 underlay: PERMANENT IPv6 neighbours, NS answered by vxlan0, ping6 across hosts', { timeout: 60_000 }, async (t) => {
    const [h1, h2] = ul.hosts as [UnderlayHost, UnderlayHost];
    const networkId = testId('d');
    const vni = 0x200000 + Math.floor(Math.random() * 0xfffff);
    const spec: OverlaySpec = { networkId, vni, mtu: 1400, gatewayCidr: '10.98.0.1/24', gateway6Cidr: 'fd00:98::1/64', mode: 'static' };
    const dirs = [runDir('ns-d1'), runDir('ns-d2')];
    const info1 = await agent<{ netnsPath: string }>(h1, { op: 'ensureOverlay', netnsDir: dirs[0]!, spec: { ...spec, vtep: h1.address } });
    const info2 = await agent<{ netnsPath: string }>(h2, { op: 'ensureOverlay', netnsDir: dirs[1]!, spec: { ...spec, vtep: h2.address } });
    // The IPv6 gateway is on br0 at once (nodad), with the IPv4 one; no RAs accepted.
    assert.match(vxlanNs(info1, '-6', 'addr', 'show', 'dev', 'br0'), /inet6 fd00:98::1\/64 scope global(?! tentative)/);
    assert.match(vxlanNs(info1, '-4', 'addr', 'show', 'dev', 'br0'), /inet 10\.98\.0\.1\/24/);
    assert.equal(inNs(info1.netnsPath, 'cat', ['/proc/sys/net/ipv6/conf/br0/accept_ra']).trim(), '0');

    const c1 = await container(h1, dirs[0]!, networkId, 1, '10.98.0', 'fd00:98');
    const c2 = await container(h2, dirs[1]!, networkId, 1, '10.98.0', 'fd00:98');
    await agent(h1, { op: 'applyPeers', netnsDir: dirs[0]!, networkId, add: [peerOf(c2, h2.address)], remove: [] });
    await agent(h2, { op: 'applyPeers', netnsDir: dirs[1]!, networkId, add: [peerOf(c1, h1.address)], remove: [] });

    // Programmed before any traffic: both families' neighbours PERMANENT, one FDB entry per MAC.
    assert.match(vxlanNs(info1, '-6', 'neigh', 'show', 'dev', 'vxlan0'), new RegExp(`${c2.ip6} lladdr ${c2.mac} PERMANENT`));
    assert.match(vxlanNs(info1, '-4', 'neigh', 'show', 'dev', 'vxlan0'), new RegExp(`${c2.ip.replace(/\./g, '\\.')} lladdr ${c2.mac} PERMANENT`));
    assert.deepEqual(await agent(h1, { op: 'listPeers', netnsDir: dirs[0]!, networkId }), [peerOf(c2, h2.address)]);

    const cap = await capture(h1, 'udp port 4789');
    try {
      assert.match(ping6(c1, c2.ip6), / 0% packet loss/);
      assert.match(inNs(c1.ns, 'ping', ['-c', '2', '-i', '0.2', '-W', '2', c2.ip]), / 0% packet loss/);
      // c1 learnt c2's MAC by NS/NA…
      assert.match(inNs(c1.ns, 'ip', ['-6', 'neigh', 'show', c2.ip6]), new RegExp(`lladdr ${c2.mac}`));
    } finally {
      await cap.stop();
    }
    const out = cap.output();
    t.diagnostic(out.split('\n').filter((l) => /ICMP6/.test(l)).slice(0, 2).join(' | '));
    // …answered by vxlan0 itself: the echoes crossed the underlay, no Neighbor Solicitation or Advertisement did.
    assert.match(out, /ICMP6, echo request/);
    assert.doesNotMatch(out, /neighbor (solicitation|advertisement)/);

    // Removal takes the IPv6 neighbour with the IPv4 one and the FDB entry.
    await agent(h1, { op: 'applyPeers', netnsDir: dirs[0]!, networkId, add: [], remove: [peerOf(c2, h2.address)] });
    assert.doesNotMatch(vxlanNs(info1, '-6', 'neigh', 'show', 'dev', 'vxlan0', 'nud', 'permanent'), /lladdr/);
    assert.deepEqual(await agent(h1, { op: 'listPeers', netnsDir: dirs[0]!, networkId }), []);
    // A reconcile puts it back, and removes a stale IPv6-only entry added by hand.
    vxlanNs(info1, '-6', 'neigh', 'replace', 'fd00:98::dead', 'lladdr', '02:42:0a:99:ff:ff', 'dev', 'vxlan0', 'nud', 'permanent');
    const r = await agent<{ added: number; removed: number }>(h1, { op: 'setPeers', netnsDir: dirs[0]!, networkId, peers: [peerOf(c2, h2.address)] });
    assert.deepEqual(r, { added: 1, removed: 1 });
    assert.doesNotMatch(vxlanNs(info1, '-6', 'neigh', 'show', 'dev', 'vxlan0'), /fd00:98::dead/);
    assert.deepEqual(await agent(h1, { op: 'setPeers', netnsDir: dirs[0]!, networkId, peers: [peerOf(c2, h2.address)] }), { added: 0, removed: 0 });
    assert.match(ping6(c1, c2.ip6), / 0% packet loss/);
    void info2;
  });

  test('IPv6-only overlay on an IPv6 underlay: VXLAN over IPv6, FDB dst IPv6, ping6 across hosts', { timeout: 60_000 }, async (t) => {
    const [h1, h2] = ul.hosts as [UnderlayHost, UnderlayHost];
    const v1 = h1.address6!;
    const v2 = h2.address6!;
    const networkId = testId('s');
    const vni = 0x200000 + Math.floor(Math.random() * 0xfffff);
    const spec: OverlaySpec = { networkId, vni, mtu: 1400, gateway6Cidr: 'fd00:97::1/64', mode: 'static' };
    const dirs = [runDir('ns-s1'), runDir('ns-s2')];
    const info1 = await agent<{ netnsPath: string }>(h1, { op: 'ensureOverlay', netnsDir: dirs[0]!, spec: { ...spec, vtep: v1 } });
    await agent(h2, { op: 'ensureOverlay', netnsDir: dirs[1]!, spec: { ...spec, vtep: v2 } });
    assert.match(vxlanNs(info1, '-d', 'link', 'show', 'vxlan0'), new RegExp(`vxlan id ${vni} local ${v1} `));
    assert.doesNotMatch(vxlanNs(info1, '-4', 'addr', 'show', 'dev', 'br0'), /inet /);

    const c1 = await container(h1, dirs[0]!, networkId, 1, undefined, 'fd00:97');
    const c2 = await container(h2, dirs[1]!, networkId, 1, undefined, 'fd00:97');
    await agent(h1, { op: 'applyPeers', netnsDir: dirs[0]!, networkId, add: [peerOf(c2, v2)], remove: [] });
    await agent(h2, { op: 'applyPeers', netnsDir: dirs[1]!, networkId, add: [peerOf(c1, v1)], remove: [] });
    assert.match(inNs(info1.netnsPath, 'bridge', ['fdb', 'show', 'dev', 'vxlan0']), new RegExp(`${c2.mac} dst ${v2} .*self permanent`));
    assert.deepEqual(await agent(h1, { op: 'listPeers', netnsDir: dirs[0]!, networkId }), [{ ip: '', ip6: c2.ip6, mac: c2.mac, vtep: v2 }]);

    const cap = await capture(h1, 'ip6 and udp port 4789');
    try {
      assert.match(ping6(c1, c2.ip6), / 0% packet loss/);
      await waitFor(() => /echo reply/.test(cap.output()), { timeoutMs: 5000, what: 'the reply in the capture' });
    } finally {
      await cap.stop();
    }
    const out = cap.output();
    t.diagnostic(out.split('\n').find((l) => l.includes('.4789')) ?? '');
    assert.match(out, new RegExp(`${v1}\\.\\d+ > ${v2}\\.4789: .*VXLAN|${v1}\\.\\d+ > ${v2}\\.4789`));
    assert.match(out, /ICMP6, echo request/);
    assert.doesNotMatch(out, /neighbor (solicitation|advertisement)/);
    // A peer on an IPv4 underlay cannot be reached from an IPv6 one: the kernel refuses it too.
    await assert.rejects(agent(h1, { op: 'applyPeers', netnsDir: dirs[0]!, networkId, add: [{ ip: '', ip6: 'fd00:97::99', mac: '02:42:0a:99:09:09', vtep: '10.0.0.9' }], remove: [] }));
  });

  test('miss mode: a Neighbor Solicitation for an unknown IPv6 address is reported as an IPv6 l3 miss; answering it makes ping6 work', { timeout: 60_000 }, async () => {
    const [h1, h2] = ul.hosts as [UnderlayHost, UnderlayHost];
    const networkId = testId('m');
    const vni = 0x200000 + Math.floor(Math.random() * 0xfffff);
    const spec: OverlaySpec = { networkId, vni, mtu: 1400, gateway6Cidr: 'fd00:96::1/64', mode: 'miss' };
    const dirs = [runDir('ns-m1'), runDir('ns-m2')];
    const info1 = await agent<{ netnsPath: string }>(h1, { op: 'ensureOverlay', netnsDir: dirs[0]!, spec: { ...spec, vtep: h1.address6! } });
    await agent(h2, { op: 'ensureOverlay', netnsDir: dirs[1]!, spec: { ...spec, vtep: h2.address6! } });
    const c1 = await container(h1, dirs[0]!, networkId, 1, undefined, 'fd00:96');
    const c2 = await container(h2, dirs[1]!, networkId, 1, undefined, 'fd00:96');
    // h2 knows c1 statically: only h1's side is left to the miss.
    await agent(h2, { op: 'applyPeers', netnsDir: dirs[1]!, networkId, add: [peerOf(c1, h1.address6!)], remove: [] });
    const watch = spawnTracked(['nsenter', `--net=${h1.netnsPath}`, '--', process.execPath, AGENT, JSON.stringify({ op: 'watchMisses', netnsDir: dirs[0]!, networkId })], { name: 'miss-watch' });
    try {
      await watch.waitForOutput(/watching/, 10_000);
      inNs(c1.ns, 'ping', ['-6', '-c', '1', '-W', '1', c2.ip6], { allowFail: true });
      await watch.waitForOutput(new RegExp(`"kind":"l3","ip":"${c2.ip6}"`), 5000);
    } finally {
      await watch.stop();
    }
    await agent(h1, { op: 'applyPeers', netnsDir: dirs[0]!, networkId, add: [peerOf(c2, h2.address6!)], remove: [] });
    assert.match(vxlanNs({ netnsPath: info1.netnsPath }, '-6', 'neigh', 'show', 'dev', 'vxlan0'), new RegExp(`${c2.ip6} lladdr ${c2.mac} PERMANENT`));
    // The sender's next solicitation (its retry) is the first one answered, as with ARP in miss mode.
    const pinged = await waitFor(() => / 0% packet loss/.test(inNs(c1.ns, 'ping', ['-6', '-c', '1', '-W', '1', c2.ip6], { allowFail: true })), {
      timeoutMs: 10_000,
      what: 'ping6 after the miss was answered',
    }).then(() => true, () => false);
    assert.ok(pinged, inNs(c1.ns, 'ip', ['-6', 'neigh', 'show']) + inNs(info1.netnsPath, 'bridge', ['fdb', 'show', 'dev', 'vxlan0']));
  });

  test('multicast mode with an IPv6 group on an IPv6 underlay: vxlan0 joins ff05::79 on eth0, ping6 across hosts', { timeout: 60_000 }, async (t) => {
    const [h1, h2] = ul.hosts as [UnderlayHost, UnderlayHost];
    const networkId = testId('g');
    const vni = 0x200000 + Math.floor(Math.random() * 0xfffff);
    const spec: OverlaySpec = { networkId, vni, mtu: 1400, gateway6Cidr: 'fd00:95::1/64', mode: 'multicast', group: 'ff05::79' };
    const dirs = [runDir('ns-g1'), runDir('ns-g2')];
    const info1 = await agent<{ netnsPath: string }>(h1, { op: 'ensureOverlay', netnsDir: dirs[0]!, spec: { ...spec, vtep: h1.address6! } });
    await agent(h2, { op: 'ensureOverlay', netnsDir: dirs[1]!, spec: { ...spec, vtep: h2.address6! } });
    assert.match(vxlanNs(info1, '-d', 'link', 'show', 'vxlan0'), /group ff05::79 local fd00:79:\S+ dev /);
    const c1 = await container(h1, dirs[0]!, networkId, 1, undefined, 'fd00:95');
    const c2 = await container(h2, dirs[1]!, networkId, 1, undefined, 'fd00:95');
    const cap = await capture(h1, 'ip6 and udp port 4789 and dst host ff05::79');
    try {
      assert.match(ping6(c1, c2.ip6), / 0% packet loss/);
    } finally {
      await cap.stop();
    }
    t.diagnostic(cap.output().split('\n').find((l) => l.includes('ff05::79.4789')) ?? '');
    assert.match(cap.output(), /> ff05::79\.4789: .*VXLAN/);
  });
});
