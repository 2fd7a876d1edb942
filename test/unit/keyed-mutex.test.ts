/**
 * KeyedMutex with a deadline: a caller whose turn does not come in time fails with the error it
 * was given, leaves the queue at once, and lets nobody skip the work still running ahead of it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KeyedMutex } from '../../src/util/keyed-mutex';

const within = (ms: number) => {
  const at = performance.now() + ms;
  return { remaining: () => Math.max(0, at - performance.now()), onTimeout: () => new Error(`timed out waiting for its turn after ${ms} ms`) };
};

test('a waiter behind stuck work gives up at its deadline; later callers still wait for the stuck work', async () => {
  const mutex = new KeyedMutex();
  const order: string[] = [];
  let finishStuck!: () => void;
  const stuck = mutex.run('k', () => new Promise<void>((resolve) => (finishStuck = resolve)).then(() => void order.push('stuck done')));
  const t0 = performance.now();
  await assert.rejects(mutex.run('k', async () => void order.push('waiter ran'), within(100)), /timed out waiting for its turn after 100 ms/);
  const waited = performance.now() - t0;
  assert.ok(waited >= 95 && waited < 400, `gave up after ${Math.round(waited)} ms`);
  // A newcomer after the waiter gave up must not overtake the work still running.
  const newcomer = mutex.run('k', async () => void order.push('newcomer ran'));
  const other = await mutex.run('other-key', async () => 'parallel');
  assert.equal(other, 'parallel', 'other keys are not blocked');
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(order, []);
  finishStuck();
  await stuck;
  await newcomer;
  assert.deepEqual(order, ['stuck done', 'newcomer ran'], 'the waiter that gave up never ran');
});

test('a free key runs at once even with a deadline; a waiter whose turn comes in time runs', async () => {
  const mutex = new KeyedMutex();
  assert.equal(await mutex.run('k', async () => 1, within(50)), 1);
  const first = mutex.run('k', () => new Promise((r) => setTimeout(() => r('first'), 30)));
  assert.equal(await mutex.run('k', async () => 'second', within(500)), 'second');
  assert.equal(await first, 'first');
});
