import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkUnderlayFamily, overlayMtu, parseNetworkOptions } from '../../src/driver/options';

test('defaults: static mode, no VNI, default IPAM refused', () => {
  assert.deepEqual(parseNetworkOptions({}), { mode: 'static', allowDefaultIpam: false });
});

test('all options parse', () => {
  assert.deepEqual(parseNetworkOptions({ vni: '4096', 'com.docker.network.driver.mtu': '9000', 'allow-default-ipam': 'true' }), {
    mode: 'static',
    vni: 4096,
    mtu: 9000,
    allowDefaultIpam: true,
  });
  assert.equal(parseNetworkOptions({ mode: 'p2p', remote: '10.0.0.2' }).remote, '10.0.0.2');
  assert.equal(parseNetworkOptions({ mode: 'multicast', group: '239.1.1.1' }).group, '239.1.1.1');
});

test('Docker-internal options pass through, unknown ones are refused with the known list', () => {
  assert.doesNotThrow(() => parseNetworkOptions({ 'com.docker.network.enable_ipv6': 'false' }));
  assert.throws(() => parseNetworkOptions({ vin: '300' }), /unknown option "vin" \(known: vni/);
});

test('invalid values say what is wrong', () => {
  assert.throws(() => parseNetworkOptions({ vni: '0' }), /out of range 1\.\.16777215/);
  assert.throws(() => parseNetworkOptions({ vni: '16777216' }), /out of range/);
  assert.throws(() => parseNetworkOptions({ vni: '12a' }), /not a whole number/);
  assert.throws(() => parseNetworkOptions({ mode: 'bogus' }), /not one of static, miss, p2p, multicast/);
  assert.throws(() => parseNetworkOptions({ mode: 'p2p' }), /needs -o remote/);
  assert.throws(() => parseNetworkOptions({ mode: 'multicast', group: '10.1.1.1' }), /not an IPv4 or IPv6 multicast/);
  assert.throws(() => parseNetworkOptions({ remote: '10.0.0.2' }), /only valid with mode=p2p/);
  assert.throws(() => parseNetworkOptions({ mtu: '100' }), /out of range/);
});

test('overlay MTU is the underlay MTU minus the 50-byte VXLAN header, base overridable', () => {
  assert.equal(overlayMtu(1500), 1450);
  assert.equal(overlayMtu(1500, 9000), 8950);
});

test('IPv6 underlay: 70 bytes of VXLAN overhead; remote/group of the underlay family only; no encryption', () => {
  assert.equal(overlayMtu(1500, undefined, false, 'fd00:79::1'), 1430);
  assert.equal(overlayMtu(1500, undefined, false, '10.0.0.1'), 1450);
  assert.equal(parseNetworkOptions({ mode: 'p2p', remote: 'fd00:79::2' }).remote, 'fd00:79::2');
  assert.equal(parseNetworkOptions({ mode: 'multicast', group: 'ff05::79' }).group, 'ff05::79');
  assert.throws(() => parseNetworkOptions({ mode: 'p2p', remote: 'fe80::1' }), /not an IPv4 or IPv6 unicast/);
  assert.throws(() => parseNetworkOptions({ mode: 'multicast', group: 'fd00::1' }), /not an IPv4 or IPv6 multicast/);
  const p2p6 = parseNetworkOptions({ mode: 'p2p', remote: 'fd00:79::2' });
  assert.throws(() => checkUnderlayFamily(p2p6, '10.0.0.1'), /option remote=fd00:79::2 is an IPv6 address but this host's underlay \(VTEP 10\.0\.0\.1\) is IPv4: mixed underlays are not supported/);
  assert.doesNotThrow(() => checkUnderlayFamily(p2p6, 'fd00:79::1'));
  assert.throws(() => checkUnderlayFamily(parseNetworkOptions({ mode: 'multicast', group: '239.1.1.1' }), 'fd00:79::1'), /group=239\.1\.1\.1 is an IPv4 address/);
  assert.throws(() => checkUnderlayFamily(parseNetworkOptions({ encrypted: 'true' }), 'fd00:79::1'), /encrypted is not supported on an IPv6 underlay/);
});
