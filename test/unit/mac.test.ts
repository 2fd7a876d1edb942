import assert from 'node:assert/strict';
import { test } from 'node:test';
import { macFromIp, normalizeMac } from '../../src/driver/mac';

test('MAC derived from the IPv4 address: 02:42 and the four address bytes', () => {
  assert.equal(macFromIp('192.168.0.100'), '02:42:c0:a8:00:64');
  assert.equal(macFromIp('10.20.0.2'), '02:42:0a:14:00:02');
  assert.equal(macFromIp('255.255.255.254'), '02:42:ff:ff:ff:fe');
});

test('normalizeMac accepts unicast MACs in any case and refuses the rest', () => {
  assert.equal(normalizeMac('02:42:AC:11:00:02'), '02:42:ac:11:00:02');
  assert.equal(normalizeMac('02-42-ac-11-00-02'), '02:42:ac:11:00:02');
  assert.equal(normalizeMac('01:00:5e:00:00:01'), undefined, 'multicast');
  assert.equal(normalizeMac('00:00:00:00:00:00'), undefined);
  assert.equal(normalizeMac('02:42:ac:11:00'), undefined);
  assert.equal(normalizeMac('zz:42:ac:11:00:02'), undefined);
});
