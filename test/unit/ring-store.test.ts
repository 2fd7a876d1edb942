/** The key ring's store records, on the embedded store (the same contract etcd and Consul fulfil). */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { encryptionKeys, ensureRing, readApplied, readRing, reportApplied, rotateOnce } from '../../src/crypto/ring-store';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';

const stores: Store[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function fresh(): Promise<Store> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-ring-'));
  dirs.push(dir);
  const s = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(s);
  return s;
}

const T0 = new Date('2026-01-01T00:00:00Z');
const hours = (h: number): Date => new Date(T0.getTime() + h * 3600_000);

test('the first host creates the ring at epoch 0; later ones read it', async () => {
  const store = await fresh();
  assert.equal(await readRing(store), undefined);
  assert.deepEqual(await ensureRing(store, 'h1', T0), { epoch: 0, rotated: T0.toISOString(), by: 'h1' });
  assert.deepEqual(await ensureRing(store, 'h2', hours(1)), { epoch: 0, rotated: T0.toISOString(), by: 'h1' });
});

test('rotation waits for every live host to apply the current epoch, and for the schedule', async () => {
  const store = await fresh();
  await ensureRing(store, 'h1', T0);
  const live = ['h1', 'h2'];
  let r = await rotateOnce(store, { by: 'cli', liveHosts: live, now: hours(1) });
  assert.equal(r.rotated, false);
  assert.deepEqual(!r.rotated && r.blockers, ['h1', 'h2']);
  await reportApplied(store, 'h1', 0);
  await reportApplied(store, 'h2', 0);
  r = await rotateOnce(store, { by: 'h1', liveHosts: live, now: hours(1), ifDueAfterSeconds: 12 * 3600 });
  assert.deepEqual(r, { rotated: false, record: { epoch: 0, rotated: T0.toISOString(), by: 'h1' }, reason: 'not due yet' });
  r = await rotateOnce(store, { by: 'h1', liveHosts: live, now: hours(12), ifDueAfterSeconds: 12 * 3600 });
  assert.equal(r.rotated, true);
  assert.equal((await readRing(store))!.record.epoch, 1);
  // h2 has not applied epoch 1 yet: no second step.
  await reportApplied(store, 'h1', 1);
  r = await rotateOnce(store, { by: 'cli', liveHosts: live, now: hours(13) });
  assert.ok(!r.rotated && r.reason.includes('h2'));
  // A host that is gone (no hosts/ record) does not hold the ring up.
  r = await rotateOnce(store, { by: 'cli', liveHosts: ['h1'], now: hours(13) });
  assert.equal(r.rotated, true);
  assert.deepEqual((await readApplied(store)).get('h2'), 0);
});

test('two hosts racing for the scheduled step make exactly one', async () => {
  const store = await fresh();
  await ensureRing(store, 'h1', T0);
  await reportApplied(store, 'h1', 0);
  await reportApplied(store, 'h2', 0);
  const rs = await Promise.all(['h1', 'h2', 'h3'].map((by) => rotateOnce(store, { by, liveHosts: ['h1', 'h2'], now: hours(12), ifDueAfterSeconds: 12 * 3600 })));
  assert.equal(rs.filter((r) => r.rotated).length, 1);
  assert.equal((await readRing(store))!.record.epoch, 1);
});

test('no ring yet; malformed records', async () => {
  const store = await fresh();
  const r = await rotateOnce(store, { by: 'cli', liveHosts: [] });
  assert.ok(!r.rotated && /no encrypted network/.test(r.reason));
  await store.put(encryptionKeys.applied('h9'), '{"epoch":"x"}');
  assert.deepEqual([...(await readApplied(store))], [['h9', undefined]]);
  await store.put(encryptionKeys.ring(), 'not json');
  await assert.rejects(readRing(store), /not JSON/);
});
