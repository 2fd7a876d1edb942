/**
 * `tsoverlay inspect`'s pure part: kernel-vs-store differences per mode (--check) and the
 * human-readable rendering.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  allDifferences,
  checkNetwork,
  checkPeers,
  formatReport,
  kernelPart,
  neighbourState,
  table,
  type InspectReport,
  type NetworkReport,
} from '../../src/cli/inspect-model';
import type { OverlayView } from '../../src/dataplane/dataplane';
import type { LinkInfo } from '../../src/dataplane/encode';
import { expectedVxlan, vxlanIncompat } from '../../src/dataplane/overlay-check';

const A = { ip: '10.9.0.2', mac: '02:42:0a:09:00:02', vtep: '192.0.2.1' };
const C = { ip: '10.9.0.4', mac: '02:42:0a:09:00:04', vtep: '192.0.2.3' };
const LOCAL_ID = 'e'.repeat(64);

/** A healthy static-mode network on host b (192.0.2.2) with peers A and C programmed; `edit` changes its kernel side. */
function healthy(edit?: (view: OverlayView) => void): NetworkReport {
  const view: OverlayView = {
    netnsPath: '/run/tsoverlay/netns/1-nnnnnnnnnn',
    epoch: 1,
    links: [
      { index: 1, name: 'lo', flags: 1, mtu: 65536 },
      { index: 2, name: 'br0', flags: 1, mtu: 1450, kind: 'bridge' },
      { index: 3, name: 'vxlan0', flags: 1, mtu: 1450, kind: 'vxlan', master: 2, linkNetnsid: 0, vxlan: { id: 256, port: 4789, local: '192.0.2.2', proxy: 1, learning: 1, l2miss: 1, l3miss: 1 } },
      { index: 4, name: `ve${LOCAL_ID.slice(0, 11)}`, flags: 1, mtu: 1450, kind: 'veth', master: 2 },
    ],
    addresses: [{ index: 2, ip: '10.9.0.1', prefix: 24 }],
    neighbours: [
      { ip: A.ip, mac: A.mac, permanent: true, state: 0x80 },
      { ip: C.ip, mac: C.mac, permanent: true, state: 0x80 },
    ],
    fdb: [
      { mac: A.mac, vtep: A.vtep, self: true, master: false, permanent: true, dynamic: false },
      { mac: C.mac, vtep: C.vtep, self: true, master: false, permanent: true, dynamic: false },
      { mac: '1e:00:00:00:00:01', self: false, master: true, permanent: true, dynamic: false },
    ],
  };
  edit?.(view);
  return {
    networkId: 'n'.repeat(64),
    dockerName: 'demo',
    storeKey: '10.9.0.0-24',
    vni: 256,
    subnet: '10.9.0.0/24',
    gateway: '10.9.0.1',
    mtu: 1450,
    mode: 'static',
    options: { mode: 'static' },
    ...kernelPart(view),
    endpoints: [
      { id: 'a'.repeat(64), ip: A.ip, mac: A.mac, host: 'a', locator: A.vtep, joined: true, local: false },
      { id: LOCAL_ID, name: 'web', container: 'web', ip: '10.9.0.3', mac: '02:42:0a:09:00:03', host: 'b', locator: '192.0.2.2', joined: true, local: true },
      { id: 'c'.repeat(64), ip: C.ip, mac: C.mac, host: 'c', locator: C.vtep, joined: true, local: false },
    ],
    desiredPeers: [A, C],
  };
}

test('a healthy static network has no difference', () => {
  assert.deepEqual(checkNetwork(healthy(), '192.0.2.2'), []);
});

test('static: a neighbour deleted by hand, a wrong lladdr, a moved VTEP and stale entries are each listed', () => {
  const r = healthy();
  r.neighbours = r.neighbours.filter((n) => n.ip !== A.ip);
  assert.deepEqual(checkNetwork(r, '192.0.2.2'), [`missing neighbour ${A.ip} lladdr ${A.mac} PERMANENT (peer at ${A.vtep})`]);

  const r2 = healthy();
  r2.neighbours[1] = { ip: C.ip, mac: '02:42:00:00:00:99', state: 'PERMANENT' };
  r2.fdb = r2.fdb.map((f) => (f.mac === A.mac ? { ...f, dst: '192.0.2.9' } : f));
  r2.neighbours.push({ ip: '10.9.0.77', mac: '02:42:0a:09:00:4d', state: 'PERMANENT' });
  r2.fdb.push({ mac: '02:42:0a:09:00:4d', dst: '192.0.2.7', flags: ['self'], state: 'permanent' });
  assert.deepEqual(checkPeers(r2), [
    `fdb ${A.mac} points at 192.0.2.9, the store says ${A.vtep}`,
    `neighbour ${C.ip} has lladdr 02:42:00:00:00:99, the store says ${C.mac}`,
    'stale neighbour 10.9.0.77 lladdr 02:42:0a:09:00:4d PERMANENT: no such peer in the store',
    'stale fdb 02:42:0a:09:00:4d dst 192.0.2.7 self permanent: no such peer in the store',
  ]);
});

test('static: learned (dynamic) entries and non-permanent neighbours are not peers', () => {
  const r = healthy();
  r.neighbours.push({ ip: '10.9.0.50', mac: '02:42:0a:09:00:32', state: 'STALE' });
  r.fdb.push({ mac: '02:42:0a:09:00:32', dst: '192.0.2.5', flags: ['self'], state: 'dynamic' });
  assert.deepEqual(checkPeers(r), []);
});

test('miss: entries not asked for yet are fine, stale or half-programmed ones are not', () => {
  const r = { ...healthy(), mode: 'miss' as const, options: { mode: 'miss' } };
  r.neighbours = [];
  r.fdb = [];
  assert.deepEqual(checkPeers(r), [], 'nothing asked for yet');
  r.neighbours = [{ ip: A.ip, mac: A.mac, state: 'PERMANENT' }];
  assert.deepEqual(checkPeers(r), [`missing fdb ${A.mac} dst ${A.vtep} self permanent (peer ${A.ip})`]);
  r.desiredPeers = [C];
  assert.deepEqual(checkPeers(r), [`stale neighbour ${A.ip} lladdr ${A.mac} PERMANENT: no such peer in the store`]);
});

test('p2p and multicast: the default entry must point at the remote/group; no permanent peers', () => {
  const base = healthy();
  const p2p = { ...base, mode: 'p2p' as const, options: { mode: 'p2p', remote: '192.0.2.2' }, remote: '192.0.2.1', desiredPeers: [A] };
  p2p.fdb = [{ mac: '00:00:00:00:00:00', dst: '192.0.2.1', flags: ['self'], state: 'permanent' }];
  p2p.neighbours = [];
  assert.deepEqual(checkPeers(p2p), [], 'the host-local remote wins over the stored option');
  p2p.fdb.push({ mac: A.mac, dst: A.vtep, flags: ['self'], state: 'permanent' });
  assert.deepEqual(checkPeers(p2p), [`unexpected permanent fdb ${A.mac} dst ${A.vtep} in mode=p2p`]);

  const mc = { ...base, mode: 'multicast' as const, options: { mode: 'multicast', group: '239.1.1.1' }, neighbours: [], fdb: [] };
  assert.deepEqual(checkPeers(mc), ['missing default fdb 00:00:00:00:00:00 dst 239.1.1.1 self permanent (unknown traffic has nowhere to go)']);
});

test('devices: missing, down, wrong VNI/MTU/flags/local and a missing local port are reported', () => {
  const r = healthy();
  r.vxlan = { ...r.vxlan!, id: 300, mtu: 1500, flags: ['learning'], local: '192.0.2.99', up: false };
  r.ports = [];
  assert.deepEqual(checkNetwork(r, '192.0.2.2'), [
    'vxlan0 id 300 != VNI 256 in the store',
    'vxlan0 mtu 1500 != 1450',
    'vxlan0 is down',
    'vxlan0 flags [learning] != [proxy learning l2miss l3miss] for mode=static',
    "vxlan0 local 192.0.2.99 != this host's VTEP 192.0.2.2",
    `local endpoint web (10.9.0.3) is joined but its br0 port ve${LOCAL_ID.slice(0, 11)} is missing`,
  ]);

  const gone = healthy();
  delete gone.bridge;
  delete gone.vxlan;
  assert.deepEqual(checkNetwork(gone, '192.0.2.2').slice(0, 2), ['br0 missing', 'vxlan0 missing']);

  const noNs = healthy();
  delete noNs.namespace;
  assert.deepEqual(checkNetwork(noNs, '192.0.2.2'), ['no overlay namespace, but 1 local endpoint(s) are joined in the store']);

  const leftover = healthy();
  leftover.endpoints = leftover.endpoints.map((e) => ({ ...e, joined: !e.local }));
  assert.match(checkNetwork(leftover, '192.0.2.2')[0]!, /exists but no local endpoint is joined/);
});

test('neighbour states read as ip neigh prints them', () => {
  assert.equal(neighbourState(0x80), 'PERMANENT');
  assert.equal(neighbourState(0x02), 'REACHABLE');
  assert.equal(neighbourState(0x04), 'STALE');
  assert.equal(neighbourState(0), 'NONE');
});

test('rendering: aligned tables, devices, tables, endpoints and the check verdict', () => {
  assert.deepEqual(table([['a', 'bb', 'c'], ['ccc', 'd', '']]), ['a    bb  c', 'ccc  d']);
  const r = healthy();
  r.differences = checkNetwork(r, '192.0.2.2');
  const report: InspectReport = {
    host: 'b',
    vtep: '192.0.2.2',
    store: 'etcd://192.0.2.100:2379',
    netnsDir: '/run/tsoverlay/netns',
    docker: 'reachable at /var/run/docker.sock',
    networks: [r],
    orphanNamespaces: [],
    differences: [],
  };
  const text = formatReport(report);
  assert.match(text, /^host b {2}vtep 192\.0\.2\.2 {2}store etcd:\/\/192\.0\.2\.100:2379\n/);
  assert.match(text, /network demo {2}\(docker id nnnnnnnnnnnn, store key 10\.9\.0\.0-24\)/);
  assert.match(text, /vni 256 {2}subnet 10\.9\.0\.0\/24 {2}gateway 10\.9\.0\.1 {2}mtu 1450 {2}mode static/);
  assert.match(text, /br0 +UP {2}mtu 1450 {2}10\.9\.0\.1\/24/);
  assert.match(text, /vxlan0 +UP {2}mtu 1450 {2}master br0 {2}id 256 {2}dstport 4789 {2}local 192\.0\.2\.2 {2}proxy learning l2miss l3miss {2}link-netnsid 0/);
  assert.match(text, / {4}10\.9\.0\.2 {2}lladdr 02:42:0a:09:00:02 {2}PERMANENT\n/);
  assert.match(text, / {4}02:42:0a:09:00:02 {2}dst 192\.0\.2\.1 {2}self permanent\n/);
  assert.match(text, / {4}NAME +IP +MAC +LOCATOR +HOST +STATE\n/);
  assert.match(text, / {4}web +10\.9\.0\.3 +02:42:0a:09:00:03 +192\.0\.2\.2 +b \(this host\) +joined\n/);
  assert.match(text, /check: ok \(kernel matches the store\)/);
  assert.deepEqual(allDifferences(report), []);

  r.differences = ['vxlan0 is down'];
  report.differences = ['namespace /x belongs to no tsoverlay network of this host'];
  assert.deepEqual(allDifferences(report), ['namespace /x belongs to no tsoverlay network of this host', 'demo: vxlan0 is down']);
  assert.match(formatReport(report), /check: 1 difference\(s\)\n {4}- vxlan0 is down/);
});

test('rendering without the store: the namespaces found, and why nothing is matched', () => {
  const text = formatReport({
    host: 'b',
    store: 'etcd://192.0.2.100:2379',
    storeError: 'etcd unreachable',
    netnsDir: '/run/tsoverlay/netns',
    docker: 'reachable at /var/run/docker.sock',
    networks: [],
    orphanNamespaces: ['/run/tsoverlay/netns/1-abcdefabcd'],
    differences: ['the store cannot be read, nothing can be compared: etcd unreachable'],
  });
  assert.match(text, /store etcd:\/\/192\.0\.2\.100:2379 UNREACHABLE: etcd unreachable/);
  assert.match(text, /networks unknown: the store cannot be read/);
  assert.match(text, /overlay namespaces on this host: \/run\/tsoverlay\/netns\/1-abcdefabcd/);
  assert.match(text, /host check:\n {2}- the store cannot be read/);
});

test('--check and the dataplane agree: what needs a new vxlan0 is a difference on both sides, an MTU only for --check', () => {
  const spec = expectedVxlan({ vni: 256, mtu: 1450, gatewayCidr: '10.9.0.1/24', mode: 'static', vtep: '192.0.2.2' });
  const setVxlan = (change: (l: LinkInfo) => LinkInfo) => (v: OverlayView) => {
    v.links = v.links.map((l) => (l.name === 'vxlan0' ? change(l) : l));
  };
  let vx: LinkInfo | undefined;
  healthy((v) => (vx = v.links.find((l) => l.name === 'vxlan0')));
  assert.equal(vxlanIncompat(vx!, spec), undefined);

  const noProxy = (l: LinkInfo): LinkInfo => ({ ...l, vxlan: { ...l.vxlan, proxy: 0, l2miss: 0, l3miss: 0 } });
  assert.equal(vxlanIncompat(noProxy(vx!), spec), 'flags: vxlan0 flags [learning] != [proxy learning l2miss l3miss]');
  assert.deepEqual(checkNetwork(healthy(setVxlan(noProxy)), '192.0.2.2'), ['vxlan0 flags [learning] != [proxy learning l2miss l3miss] for mode=static']);

  // Set in place by the dataplane (no new device), still a difference for --check.
  const smallMtu = (l: LinkInfo): LinkInfo => ({ ...l, mtu: 1400 });
  assert.equal(vxlanIncompat(smallMtu(vx!), spec), undefined);
  assert.deepEqual(checkNetwork(healthy(setVxlan(smallMtu)), '192.0.2.2'), ['vxlan0 mtu 1400 != 1450']);
});

test('a local port that lost br0 is named as such (what the repair re-enslaves), not as missing', () => {
  const loose = healthy((v) => {
    v.links = v.links.map((l) => (l.kind === 'veth' ? { ...l, master: undefined } : l));
  });
  assert.deepEqual(checkNetwork(loose, '192.0.2.2'), [`br0 port ve${LOCAL_ID.slice(0, 11)} of web (10.9.0.3) is not enslaved to br0 (master none)`]);
});

test('dual-stack: the IPv6 gateway on br0 and each peer\'s IPv6 neighbour are checked; a missing one is listed', () => {
  const A6 = 'fd00:9::2';
  const C6 = 'fd00:9::4';
  const r = healthy((v) => {
    v.addresses.push({ index: 2, ip: 'fd00:9::1', prefix: 64 });
    v.neighbours.push({ ip: A6, mac: A.mac, permanent: true, state: 0x80 }, { ip: C6, mac: C.mac, permanent: true, state: 0x80 });
  });
  const dual = { ...r, subnet6: 'fd00:9::/64', gateway6: 'fd00:9::1', desiredPeers: [{ ...A, ip6: A6 }, { ...C, ip6: C6 }] };
  assert.deepEqual(checkNetwork(dual, '192.0.2.2'), []);
  assert.ok(neighbours(dual).indexOf(A6) > neighbours(dual).indexOf(C.ip), 'IPv6 after IPv4');
  const lost = { ...dual, neighbours: dual.neighbours.filter((n) => n.ip !== C6), bridge: { ...dual.bridge!, addresses: ['10.9.0.1/24'] } };
  assert.deepEqual(checkNetwork(lost, '192.0.2.2'), [
    'br0 lacks the IPv6 gateway address fd00:9::1/64 (has 10.9.0.1/24)',
    `missing neighbour ${C6} lladdr ${C.mac} PERMANENT (peer at ${C.vtep})`,
  ]);
});

function neighbours(r: NetworkReport): string[] {
  return r.neighbours.map((n) => n.ip);
}

test('names: the DNS addresses are every gateway the network has, and an IPv6-only container shows its IPv6 address', () => {
  const dual = healthy();
  dual.gateway6 = 'fd00:9::1';
  dual.subnet6 = 'fd00:9::/64';
  dual.names = [{ container: 'web', names: ['web', 'frontend'], ip: '10.9.0.3', ip6: 'fd00:9::3', host: 'b' }];
  const only6 = healthy();
  only6.dockerName = 'only6';
  only6.subnet = '';
  only6.gateway = '';
  only6.gateway6 = 'fd00:7::1';
  only6.subnet6 = 'fd00:7::/64';
  only6.names = [{ container: 'db', names: ['db'], ip: '', ip6: 'fd00:7::5', host: 'a' }];
  const base = { host: 'b', vtep: '192.0.2.2', store: 'local', netnsDir: '/run/tsoverlay/netns', docker: 'reachable', orphanNamespaces: [], differences: [] };
  const text = formatReport({ ...base, networks: [dual, only6] });
  assert.match(text, /names \(DNS on 10\.9\.0\.1:53 \[fd00:9::1\]:53\): 1\n {4}web,frontend {2}10\.9\.0\.3 fd00:9::3 {2}b/);
  assert.match(text, /names \(DNS on \[fd00:7::1\]:53\): 1\n {4}db +fd00:7::5 {2}a/);
});
