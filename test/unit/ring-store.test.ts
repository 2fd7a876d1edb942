/** The key ring's store records, on the embedded store (the same contract etcd and Consul fulfil). */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { type EncryptionHostRecord, encryptionKeys, ensureRing, publishHost, readHosts, readRing, rotateOnce } from '../../src/crypto/ring-store';
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

const rec = (name: string, applied: number | null): EncryptionHostRecord => ({
  name,
  instance: `${name}-i`,
  publicKey: 'x25519:hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo',
  vtep: '10.0.0.1',
  applied,
  at: T0.toISOString(),
});

test('rotation waits for every live host to apply the current epoch, and for the schedule', async () => {
  const store = await fresh();
  await ensureRing(store, 'h1', T0);
  await publishHost(store, rec('h1', null));
  await publishHost(store, rec('h2', null));
  let r = await rotateOnce(store, { by: 'cli', now: hours(1) });
  assert.equal(r.rotated, false);
  assert.deepEqual(!r.rotated && r.blockers, ['h1', 'h2']);
  await publishHost(store, rec('h1', 0));
  await publishHost(store, rec('h2', 0));
  r = await rotateOnce(store, { by: 'h1', now: hours(1), ifDueAfterSeconds: 12 * 3600 });
  assert.deepEqual(r, { rotated: false, record: { epoch: 0, rotated: T0.toISOString(), by: 'h1' }, reason: 'not due yet' });
  r = await rotateOnce(store, { by: 'h1', now: hours(12), ifDueAfterSeconds: 12 * 3600 });
  assert.equal(r.rotated, true);
  assert.equal((await readRing(store))!.record.epoch, 1);
  // h2 has not applied epoch 1 yet: no second step.
  await publishHost(store, rec('h1', 1));
  r = await rotateOnce(store, { by: 'cli', now: hours(13) });
  assert.ok(!r.rotated && r.reason.includes('h2'));
  // A host that is gone (its record went with its lease) does not hold the ring up.
  await store.delete(encryptionKeys.host('h2'));
  r = await rotateOnce(store, { by: 'cli', now: hours(13) });
  assert.equal(r.rotated, true);
});

test('a host record under a lease goes with the lease', async () => {
  const store = await fresh();
  const lease = await store.grantLease(30);
  await publishHost(store, rec('h1', 0), lease);
  assert.deepEqual((await readHosts(store)).map((h) => h.name), ['h1']);
  await lease.revoke();
  assert.deepEqual(await readHosts(store), []);
});

test('two hosts racing for the scheduled step make exactly one', async () => {
  const store = await fresh();
  await ensureRing(store, 'h1', T0);
  await publishHost(store, rec('h1', 0));
  await publishHost(store, rec('h2', 0));
  const rs = await Promise.all(['h1', 'h2', 'h3'].map((by) => rotateOnce(store, { by, now: hours(12), ifDueAfterSeconds: 12 * 3600 })));
  assert.equal(rs.filter((r) => r.rotated).length, 1);
  assert.equal((await readRing(store))!.record.epoch, 1);
});

test('no ring yet; malformed records', async () => {
  const store = await fresh();
  const r = await rotateOnce(store, { by: 'cli' });
  assert.ok(!r.rotated && /no encrypted network/.test(r.reason));
  await store.put(encryptionKeys.host('h9'), '{"epoch":"x"}');
  assert.deepEqual(await readHosts(store), [], 'a malformed host record is no participant');
  assert.equal(encryptionKeys.hostOf('encryption/hosts/h9'), 'h9');
  assert.equal(encryptionKeys.hostOf('encryption/ring'), undefined);
  await store.put(encryptionKeys.ring(), 'not json');
  await assert.rejects(readRing(store), /not JSON/);
});
