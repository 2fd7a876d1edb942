import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pingCount } from '../helpers/resilience';

const lines = (seqs: number[]): string => seqs.map((s) => `64 bytes from 10.0.0.2: seq=${s} ttl=64 time=0.123 ms`).join('\n');
const summary = (sent: number, received: number): string =>
  `\n--- 10.0.0.2 ping statistics ---\n${sent} packets transmitted, ${received} packets received, ${Math.round((100 * (sent - received)) / sent)}% packet loss\n`;

test('every request answered: nothing lost', () => {
  assert.deepEqual(pingCount(`PING 10.0.0.2 (10.0.0.2): 56 data bytes\n${lines([0, 1, 2, 3])}${summary(4, 4)}`), { sent: 4, received: 4, lost: 0, missing: [] });
});

test('the request in flight when the monitor stops is not a loss', () => {
  assert.deepEqual(pingCount(`${lines([0, 1, 2, 3])}${summary(5, 4)}`), { sent: 4, received: 4, lost: 0, missing: [] });
});

test('a gap in the middle is a loss', () => {
  assert.deepEqual(pingCount(`${lines([0, 1, 3, 4])}${summary(5, 4)}`), { sent: 5, received: 4, lost: 1, missing: [2] });
});

test('an outage at the end is a loss, less only the last request', () => {
  assert.deepEqual(pingCount(`${lines([0, 1])}${summary(6, 2)}`), { sent: 5, received: 2, lost: 3, missing: [2, 3, 4] });
});

test('no summary is an error, not zero loss', () => {
  assert.throws(() => pingCount(lines([0, 1])), /no summary/);
});
