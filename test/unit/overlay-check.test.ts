/**
 * The one definition of a healthy overlay (src/dataplane/overlay-check.ts): what each mode asks
 * of vxlan0, and that the write side's verdict (rebuild or not) and `inspect --check`'s lines
 * come from the same comparison.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  expectedVxlan,
  overlayTarget,
  portDifferences,
  validateOverlayTarget,
  vxlanDifferences,
  vxlanIncompat,
  vxlanState,
} from '../../src/dataplane/overlay-check';
import { checkNetwork, kernelPart, type NetworkReport } from '../../src/cli/inspect-model';
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
const brLink: LinkInfo = { index: 2, name: 'br0', flags: 1, mtu: 1450, kind: 'bridge' };
const PORT = 've' + 'e'.repeat(11);

function report(vx: LinkInfo, more: LinkInfo[] = []): NetworkReport {
  return {
    networkId: 'n'.repeat(64),
    storeKey: '10.9.0.0-24',
    vni: 256,
    subnet: '10.9.0.0/24',
    gateway: '10.9.0.1',
    mtu: 1450,
    mode: 'static',
    options: {},
    ...kernelPart({
      netnsPath: '/run/tsoverlay/netns/1-nnnnnnnnnn',
      epoch: 1,
      links: [brLink, vx, ...more],
      addresses: [{ index: 2, ip: '10.9.0.1', prefix: 24 }],
      neighbours: [],
      fdb: [],
    }),
    endpoints: [{ id: 'e'.repeat(64), ip: '10.9.0.3', mac: '02:42:0a:09:00:03', host: 'b', locator: '192.0.2.2', joined: true, local: true }],
    desiredPeers: [],
  };
}

test('--check and the dataplane agree: what needs a new vxlan0 is a difference on both sides, an MTU only on --check', () => {
  const spec = expectedVxlan({ vni: 256, mtu: 1450, gatewayCidr: '10.9.0.1/24', mode: 'static', vtep: '192.0.2.2' });
  const port: LinkInfo = { index: 4, name: PORT, flags: 1, mtu: 1450, kind: 'veth', master: 2 };
  assert.equal(vxlanIncompat(goodVxlan, spec), undefined);
  assert.deepEqual(checkNetwork(report(goodVxlan, [port]), '192.0.2.2'), []);

  const noProxy = { ...goodVxlan, vxlan: { ...goodVxlan.vxlan, proxy: 0, l2miss: 0, l3miss: 0 } };
  assert.equal(vxlanIncompat(noProxy, spec), 'flags: vxlan0 flags [learning] != [proxy learning l2miss l3miss]');
  assert.deepEqual(checkNetwork(report(noProxy, [port]), '192.0.2.2'), ['vxlan0 flags [learning] != [proxy learning l2miss l3miss] for mode=static']);

  // Set in place by the dataplane (no rebuild), still reported by --check.
  const smallMtu = { ...goodVxlan, mtu: 1400 };
  assert.equal(vxlanIncompat(smallMtu, spec), undefined);
  const diffs = vxlanDifferences(vxlanState(smallMtu, (i) => (i === 2 ? 'br0' : undefined)), spec);
  assert.deepEqual(diffs, [{ field: 'mtu', message: 'vxlan0 mtu 1400 != 1450', rebuild: false }]);
  assert.deepEqual(checkNetwork(report(smallMtu, [port]), '192.0.2.2'), ['vxlan0 mtu 1400 != 1450']);
});

test('a port that lost br0 is named as such (what the repair re-enslaves), not as missing', () => {
  const loose: LinkInfo = { index: 4, name: PORT, flags: 1, mtu: 1450, kind: 'veth' };
  assert.deepEqual(checkNetwork(report(goodVxlan, [loose]), '192.0.2.2'), [`br0 port ${PORT} of 10.9.0.3 is not enslaved to br0 (master none)`]);
  assert.deepEqual(
    portDifferences({ name: PORT, index: 4, up: false, master: 'br0', addresses: [] }, PORT).map((d) => d.field),
    ['up'],
  );
  assert.deepEqual(checkNetwork(report(goodVxlan), '192.0.2.2'), [`local endpoint 10.9.0.3 is joined but its br0 port ${PORT} is missing`]);
});
