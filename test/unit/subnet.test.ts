import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  addressAt,
  bigToIp,
  canonicalIp,
  contains,
  firstHost,
  hostRange,
  intToIp,
  ipToBig,
  ipToInt,
  overlaps,
  parseAddressCidr,
  parseSubnet,
  subnetKey,
} from '../../src/driver/subnet';

test('parseSubnet normalises host bits and reports size', () => {
  const s = parseSubnet('10.20.0.77/24');
  assert.equal(s.cidr, '10.20.0.0/24');
  assert.equal(s.size, 256n);
  assert.equal(s.family, 4);
  assert.equal(subnetKey(s), '10.20.0.0-24');
});

test('parseSubnet rejects malformed and out-of-range subnets', () => {
  for (const bad of ['10.20.0.0', '10.20.0.0/33', '10.20.0.0/31', '300.1.1.1/24', '10.0.0.0/24/1', 'a.b.c.d/24', '10.0.0.0/7', '']) {
    assert.throws(() => parseSubnet(bad), /invalid IPv4 subnet/, bad);
  }
});

test('ip <-> integer round trip, including the top of the range', () => {
  for (const ip of ['0.0.0.0', '10.20.0.1', '192.168.0.100', '255.255.255.255']) assert.equal(intToIp(ipToInt(ip)), ip);
  assert.equal(ipToInt('255.255.255.255'), 0xffffffff);
});

test('hostRange excludes network and broadcast', () => {
  const { first, last } = hostRange(parseSubnet('192.168.0.0/24'));
  assert.equal(bigToIp(first, 4), '192.168.0.1');
  assert.equal(bigToIp(last, 4), '192.168.0.254');
});

test('contains and overlaps', () => {
  const a = parseSubnet('10.20.0.0/16');
  assert.ok(contains(a, '10.20.255.1'));
  assert.ok(!contains(a, '10.21.0.1'));
  assert.ok(overlaps(a, parseSubnet('10.20.3.0/24')));
  assert.ok(!overlaps(a, parseSubnet('10.21.0.0/24')));
});

test('parseAddressCidr keeps host bits', () => {
  assert.deepEqual(parseAddressCidr('10.20.0.5/24'), { ip: '10.20.0.5', prefixLength: 24 });
  assert.deepEqual(parseAddressCidr('10.20.0.5'), { ip: '10.20.0.5', prefixLength: 32 });
  assert.throws(() => parseAddressCidr('10.20.0.5/40'));
  assert.throws(() => parseAddressCidr('10.20.0/24'));
});

test('IPv6 subnets: BigInt arithmetic, RFC 5952 text, host range without broadcast', () => {
  const s = parseSubnet('FD00:20:0:0::77/64');
  assert.equal(s.cidr, 'fd00:20::/64');
  assert.equal(s.family, 6);
  assert.equal(s.size, 1n << 64n);
  assert.equal(subnetKey(s), 'fd00:20::-64');
  const { first, last } = hostRange(s);
  assert.equal(bigToIp(first, 6), 'fd00:20::1');
  assert.equal(bigToIp(last, 6), 'fd00:20::ffff:ffff:ffff:ffff');
  assert.equal(firstHost(parseSubnet('fd00:99::/120')), 'fd00:99::1');
  assert.equal(addressAt(parseSubnet('fd00:99::/120'), 255n), 'fd00:99::ff');
  assert.ok(contains(s, 'fd00:20::abcd'));
  assert.ok(!contains(s, 'fd00:21::1'));
  assert.ok(!contains(s, '10.20.0.1'), 'another family is never inside');
  assert.ok(!contains(parseSubnet('10.20.0.0/24'), '::ffff:10.20.0.1'));
  assert.ok(overlaps(parseSubnet('fd00::/48'), s) === false);
  assert.ok(overlaps(parseSubnet('fd00:20::/48'), s));
  assert.ok(!overlaps(parseSubnet('10.0.0.0/8'), s));
  // One address, one text: store keys are built from it.
  assert.equal(canonicalIp('FD00:0020:0000:0000:0000:0000:0000:0001'), 'fd00:20::1');
  assert.deepEqual(parseAddressCidr('fd00:20:0::0:5/64'), { ip: 'fd00:20::5', prefixLength: 64 });
  assert.deepEqual(parseAddressCidr('fd00:20::5'), { ip: 'fd00:20::5', prefixLength: 128 });
  assert.throws(() => parseAddressCidr('fd00::5/129'));
  assert.throws(() => parseAddressCidr('fe80::1%eth0'));
  assert.equal(ipToBig('::ffff:ffff'), 0xffffffffn);
});

test('IPv6 limits: /48 to /120, no link-local, multicast, loopback or mapped ranges', () => {
  assert.equal(parseSubnet('fd00:1::/48').prefixLength, 48);
  assert.equal(parseSubnet('fd00:1::/120').size, 256n);
  assert.equal(parseSubnet('2001:db8::/64').cidr, '2001:db8::/64');
  for (const [bad, why] of [
    ['fd00::/47', /between \/48 and \/120/],
    ['fd00::/121', /between \/48 and \/120/],
    ['fd00::/128', /between \/48 and \/120/],
    ['fe80::/64', /link-local/],
    ['febf:1::/64', /link-local/],
    ['ff02::/64', /multicast/],
    ['::/120', /unspecified/],
    ['::ffff:0:0/96', /IPv4-mapped/],
    ['fd00::/64/1', /invalid IPv6 subnet/],
    ['fd00:::/64', /invalid IPv6 subnet/],
    ['fd00::/', /invalid IPv6 subnet/],
    ['fd00::/1000', /invalid IPv6 subnet/],
    ['10.0.0.0/64', /invalid IPv4 subnet/],
  ] as const) {
    assert.throws(() => parseSubnet(bad), why, bad);
  }
});
