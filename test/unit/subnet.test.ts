import assert from 'node:assert/strict';
import { test } from 'node:test';
import { contains, hostRange, intToIp, ipToInt, overlaps, parseAddressCidr, parseSubnet, subnetKey } from '../../src/driver/subnet';

test('parseSubnet normalises host bits and reports size', () => {
  const s = parseSubnet('10.20.0.77/24');
  assert.equal(s.cidr, '10.20.0.0/24');
  assert.equal(s.size, 256);
  assert.equal(subnetKey(s), '10.20.0.0-24');
});

test('parseSubnet rejects malformed and out-of-range subnets', () => {
  for (const bad of ['10.20.0.0', '10.20.0.0/33', '10.20.0.0/31', '300.1.1.1/24', '10.0.0.0/24/1', 'a.b.c.d/24', '10.0.0.0/7', '', '::1/64']) {
    assert.throws(() => parseSubnet(bad), /invalid IPv4 subnet/, bad);
  }
});

test('ip <-> integer round trip, including the top of the range', () => {
  for (const ip of ['0.0.0.0', '10.20.0.1', '192.168.0.100', '255.255.255.255']) assert.equal(intToIp(ipToInt(ip)), ip);
  assert.equal(ipToInt('255.255.255.255'), 0xffffffff);
});

test('hostRange excludes network and broadcast', () => {
  const { first, last } = hostRange(parseSubnet('192.168.0.0/24'));
  assert.equal(intToIp(first), '192.168.0.1');
  assert.equal(intToIp(last), '192.168.0.254');
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
