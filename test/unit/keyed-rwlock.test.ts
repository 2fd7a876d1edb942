/**
 * KeyedRwLock: shared callers of one key run together, an exclusive one runs alone, turns are
 * first come first served (a waiting exclusive caller holds back later shared ones), and a
 * caller whose deadline passes leaves the queue without blocking those behind it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KeyedRwLock } from '../../src/util/keyed-rwlock';

const within = (ms: number) => {
  const at = performance.now() + ms;
  return { remaining: () => Math.max(0, at - performance.now()), onTimeout: () => new Error(`timed out after ${ms} ms`) };
};

/** A piece of work that runs until `finish()`; `running` says whether it has started. */
function held() {
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  const w = { running: false, finish: () => finish(), work: async () => ((w.running = true), await done) };
  return w;
}

const tick = () => new Promise((r) => setImmediate(r));

test('shared callers of one key run together; an exclusive one waits for all of them, then runs alone', async () => {
  const lock = new KeyedRwLock();
  const a = held();
  const b = held();
  const x = held();
  const pa = lock.shared('n', a.work);
  const pb = lock.shared('n', b.work);
  await tick();
  assert.ok(a.running && b.running, 'both shared callers run at once');
  const px = lock.exclusive('n', x.work);
  const c = held();
  const pc = lock.shared('n', c.work);
  await tick();
  assert.ok(!x.running, 'the exclusive caller waits for the shared ones');
  assert.ok(!c.running, 'a shared caller behind a waiting exclusive one waits too');
  a.finish();
  await pa;
  await tick();
  assert.ok(!x.running, 'still one shared caller running');
  b.finish();
  await pb;
  await tick();
  assert.ok(x.running && !c.running, 'the exclusive caller runs alone');
  x.finish();
  await px;
  await tick();
  assert.ok(c.running);
  c.finish();
  await pc;
  assert.equal(lock.busy('n'), false, 'an idle key is forgotten');
});

test('other keys are not blocked', async () => {
  const lock = new KeyedRwLock();
  const x = held();
  const px = lock.exclusive('n', x.work);
  assert.equal(await lock.exclusive('m', async () => 'other'), 'other');
  x.finish();
  await px;
});

test('an exclusive waiter that gives up lets the shared callers queued behind it run', async () => {
  const lock = new KeyedRwLock();
  const a = held();
  const pa = lock.shared('n', a.work);
  await tick();
  const px = lock.exclusive('n', async () => 'never', within(50));
  const c = held();
  const pc = lock.shared('n', c.work);
  await tick();
  assert.ok(!c.running);
  await assert.rejects(px, /timed out after 50 ms/);
  await tick();
  assert.ok(c.running, 'the shared caller behind the one that gave up runs beside the first');
  a.finish();
  c.finish();
  await Promise.all([pa, pc]);
  assert.equal(lock.busy('n'), false);
});

test('a shared caller behind running exclusive work gives up at its deadline; work that fails releases the lock', async () => {
  const lock = new KeyedRwLock();
  const x = held();
  const px = lock.exclusive('n', x.work);
  await assert.rejects(lock.shared('n', async () => 'late', within(30)), /timed out after 30 ms/);
  x.finish();
  await px;
  await assert.rejects(lock.exclusive('n', async () => Promise.reject(new Error('boom'))), /boom/);
  assert.equal(await lock.shared('n', async () => 'after', within(30)), 'after');
});
