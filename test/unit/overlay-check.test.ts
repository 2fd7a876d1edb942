/**
 * The one definition of a healthy overlay (src/dataplane/overlay-check.ts): what each mode asks
 * of vxlan0 and the ports, and which differences take a new device. That `inspect --check` reports
 * the same differences is in inspect-model.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  bridgeDifferences,
  expectedVxlan,
  overlayTarget,
  peerDifferences,
  portDifferences,
  validateOverlayTarget,
  vxlanDifferences,
  vxlanIncompat,
} from '../../src/dataplane/overlay-check';
import { deviceState, vxlanState } from '../../src/dataplane/overlay-state';
import type { LinkInfo } from '../../src/dataplane/encode';

const network = { vni: 300, mtu: 1450, gateway: '10.30.0.1', subnet: '10.30.0.0/24' };

test('expected vxlan0 per mode: proxy and misses for static/miss, the flood destination for p2p/multicast', () => {
  const vtep = { vtep: '192.0.2.2' };
  const st = expectedVxlan(overlayTarget({ ...network, mode: 'static', options: {} }, vtep));
  assert.deepEqual(st, { name: 'vxlan0', vni: 300, mtu: 1450, learning: true, proxy: true, local: '192.0.2.2' });
  const miss = expectedVxlan(overlayTarget({ ...network, mode: 'miss', options: { mode: 'miss' } }, vtep));
  assert.equal(miss.proxy, true);
  assert.equal(miss.group, undefined);
  // p2p: this host's own remote wins over the one stored by the network's creator.
  const p2pStored = { ...network, mode: 'p2p' as const, options: { mode: 'p2p', remote: '192.0.2.2' } };
  assert.equal(expectedVxlan(overlayTarget(p2pStored, { ...vtep, remote: '192.0.2.1' })).group, '192.0.2.1');
  assert.equal(expectedVxlan(overlayTarget(p2pStored, {})).group, '192.0.2.2');
  assert.equal(expectedVxlan(overlayTarget(p2pStored, {})).proxy, false);
  const mc = expectedVxlan(overlayTarget({ ...network, mode: 'multicast', options: { group: '239.1.1.1' } }, vtep));
  assert.deepEqual([mc.group, mc.proxy], ['239.1.1.1', false]);
  assert.equal(overlayTarget({ ...network, mode: 'static', options: {} }, {}).gatewayCidr, '10.30.0.1/24');
});

test('the write side refuses targets the kernel cannot be asked for', () => {
  const base = { vni: 300, mtu: 1450, gatewayCidr: '10.30.0.1/24' };
  assert.doesNotThrow(() => validateOverlayTarget({ ...base, mode: 'static' }));
  assert.throws(() => validateOverlayTarget({ ...base, mode: 'p2p' }), /p2p mode needs a remote/);
  assert.throws(() => validateOverlayTarget({ ...base, mode: 'multicast', group: '10.0.0.1' }), /multicast group/);
  assert.throws(() => validateOverlayTarget({ ...base, mode: 'static', mtu: 10 }), /invalid MTU/);
  assert.throws(() => validateOverlayTarget({ ...base, mode: 'static', gatewayCidr: '10.30.0.1' }));
});

const goodVxlan: LinkInfo = {
  index: 3,
  name: 'vxlan0',
  flags: 1,
  mtu: 1450,
  master: 2,
  kind: 'vxlan',
  linkNetnsid: 0,
  vxlan: { id: 256, port: 4789, local: '192.0.2.2', proxy: 1, learning: 1, l2miss: 1, l3miss: 1 },
};
const PORT = 've' + 'e'.repeat(11);
const names = (i: number): string | undefined => (i === 2 ? 'br0' : undefined);

test('differences are split into what takes a new device and what is set in place', () => {
  const spec = expectedVxlan({ vni: 256, mtu: 1450, gatewayCidr: '10.9.0.1/24', mode: 'static', vtep: '192.0.2.2' });
  assert.deepEqual(vxlanDifferences(vxlanState(goodVxlan, names), spec), []);
  const drifted = { ...goodVxlan, mtu: 1400, flags: 0, master: undefined, vxlan: { ...goodVxlan.vxlan, id: 7 } };
  assert.deepEqual(
    vxlanDifferences(vxlanState(drifted, names), spec, { mode: 'static' }).map((d) => [d.field, d.rebuild]),
    [
      ['vni', true],
      ['mtu', false],
      ['up', false],
      ['master', false],
    ],
  );
  assert.equal(vxlanIncompat(drifted, spec), 'vni: vxlan0 id 7 != VNI 256 in the store');
  // Without a known VTEP (inspect on an unregistered host) the local address is not judged.
  assert.deepEqual(vxlanDifferences(vxlanState({ ...goodVxlan, vxlan: { ...goodVxlan.vxlan, local: '192.0.2.9' } }, names), spec, { anyLocal: true }), []);
});

test('ports: missing, without br0 as master, down', () => {
  assert.deepEqual(portDifferences(undefined, PORT, 'web (10.9.0.3)').map((d) => d.message), [`local endpoint web (10.9.0.3) is joined but its br0 port ${PORT} is missing`]);
  const loose = deviceState({ index: 4, name: PORT, flags: 0, kind: 'veth' }, names);
  assert.deepEqual(
    portDifferences(loose, PORT).map((d) => d.message),
    [`br0 port ${PORT} is not enslaved to br0 (master none)`, `br0 port ${PORT} is down`],
  );
  assert.deepEqual(portDifferences(deviceState({ index: 4, name: PORT, flags: 1, kind: 'veth', master: 2 }, names), PORT), []);
});

test('IPv6: peers checked per family (canonical text), IPv6 gateway on br0, IPv6 underlay in vxlan0', () => {
  const peer = { ip: '10.9.0.5', ip6: 'FD00:9:0::5', mac: '02:42:0a:09:00:05', vtep: 'fd00:79:0::b' };
  const fdb = [{ mac: '02:42:0a:09:00:05', dst: 'fd00:79::b', flags: ['self'], state: 'permanent' as const }];
  const n4 = { ip: '10.9.0.5', mac: '02:42:0a:09:00:05', state: 'PERMANENT' };
  const n6 = { ip: 'fd00:9::5', mac: '02:42:0a:09:00:05', state: 'PERMANENT' };
  assert.deepEqual(peerDifferences({ mode: 'static' }, { neighbours: [n4, n6], fdb }, [peer]), []);
  assert.deepEqual(peerDifferences({ mode: 'static' }, { neighbours: [n4], fdb }, [peer]), ['missing neighbour fd00:9::5 lladdr 02:42:0a:09:00:05 PERMANENT (peer at fd00:79::b)']);
  assert.deepEqual(peerDifferences({ mode: 'static' }, { neighbours: [n4, n6], fdb }, [{ ip: peer.ip, mac: peer.mac, vtep: peer.vtep }]), [
    'stale neighbour fd00:9::5 lladdr 02:42:0a:09:00:05 PERMANENT: no such peer in the store',
  ]);
  const t = { vni: 9, mtu: 1430, gateway6Cidr: 'fd00:9::1/64', mode: 'static' as const, vtep: 'FD00:79::a' };
  validateOverlayTarget(t);
  assert.equal(expectedVxlan(t).local, 'fd00:79::a');
  assert.throws(() => validateOverlayTarget({ ...t, mtu: 1200 }), /at least 1280/);
  assert.throws(() => validateOverlayTarget({ ...t, gateway6Cidr: 'fe80::1/64' }), /link-local/);
  assert.throws(() => validateOverlayTarget({ ...t, mode: 'p2p', remote: '10.0.0.2' }), /mixed underlays/);
  assert.throws(() => validateOverlayTarget({ ...t, mode: 'multicast', group: '239.1.1.1' }), /mixed underlays/);
  assert.doesNotThrow(() => validateOverlayTarget({ ...t, mode: 'multicast', group: 'ff05::79' }));
  assert.throws(() => validateOverlayTarget({ vni: 9, mtu: 1450, mode: 'static' }), /IPv4 or an IPv6 gateway/);
  const br = { name: 'br0', index: 2, kind: 'bridge', up: true, mtu: 1430, addresses: ['fd00:9::1/64'] };
  assert.deepEqual(bridgeDifferences(br, { mtu: 1430, gateway6Cidr: 'FD00:9::1/64' }), []);
  assert.match(bridgeDifferences({ ...br, addresses: [] }, { mtu: 1430, gateway6Cidr: 'fd00:9::1/64' })[0]!.message, /lacks the IPv6 gateway address fd00:9::1\/64/);
  assert.equal(overlayTarget({ vni: 9, mtu: 1430, gateway6: 'fd00:9::1', subnet6: 'fd00:9::/64', mode: 'static', options: {} }, {}).gateway6Cidr, 'fd00:9::1/64');
});
