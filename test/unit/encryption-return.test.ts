/**
 * A host that comes back after its encryption record expired owes the cluster a key rotation:
 * its peers re-create their SAs with it from sequence number 1, while its kernel may keep its
 * receive SAs with their old replay windows. A restart within the TTL (record still there) and a
 * host's first start owe nothing. The kernel side is a recorder; the store is the embedded one.
 */
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { EncryptionController, type EspKernel } from '../../src/crypto/controller';
import { hostKeyFromRaw } from '../../src/crypto/host-key';
import { type EncryptionHostRecord, encryptionKeys, ensureRing, publishHost, readRing } from '../../src/crypto/ring-store';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';

const stores: Store[] = [];
const controllers: EncryptionController[] = [];
const dirs: string[] = [];
after(async () => {
  for (const c of controllers) await c.close();
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function fresh(): Promise<Store> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-enc-return-'));
  dirs.push(dir);
  const s = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(s);
  return s;
}

const kernel = (): EspKernel => ({
  apply: async (_self, peers) => ({ steps: 0, errors: [], sas: 2 * peers.length, policies: peers.length }),
  check: async () => [],
  removeAll: async () => 0,
});

function controller(store: Store, ranBefore: boolean): EncryptionController {
  const c = new EncryptionController({
    store,
    kernel: kernel(),
    key: hostKeyFromRaw(crypto.randomBytes(32)),
    host: { name: 'h1', instance: 'h1-i', vtep: '10.0.0.1' },
    probe: async () => ({ ok: true, missing: [] }),
    rotationIntervalSeconds: 3600,
    reconcileIntervalMs: 100,
    leaseTtlSeconds: 30,
    ranBefore,
    logger: silentLogger(),
  });
  controllers.push(c);
  return c;
}

/** The cluster as the returning host finds it: a ring at epoch 0 and a live peer that applied it. */
async function cluster(store: Store): Promise<void> {
  await ensureRing(store, 'h2');
  const peer: EncryptionHostRecord = { name: 'h2', instance: 'h2-i', publicKey: hostKeyFromRaw(crypto.randomBytes(32)).publicText, vtep: '10.0.0.2', applied: 0, at: new Date().toISOString() };
  await publishHost(store, peer);
}

async function epochAfterSettling(store: Store): Promise<number | undefined> {
  await new Promise((r) => setTimeout(r, 600));
  return (await readRing(store))?.record.epoch;
}

test('a host back after its record expired rotates the keys once', async () => {
  const store = await fresh();
  await cluster(store);
  const c = controller(store, true);
  await c.start();
  await c.activate();
  assert.equal(await epochAfterSettling(store), 1);
  assert.equal(c.epoch, 1);
  assert.equal(await epochAfterSettling(store), 1, 'one rotation, not one per reconcile');
});

test('a restart within the TTL (its record still in the store) rotates nothing', async () => {
  const store = await fresh();
  await cluster(store);
  const before: EncryptionHostRecord = { name: 'h1', instance: 'h1-i', publicKey: 'x25519:old', vtep: '10.0.0.1', applied: 0, at: new Date().toISOString() };
  await store.put(encryptionKeys.host('h1'), JSON.stringify(before));
  const c = controller(store, true);
  await c.start();
  await c.activate();
  assert.equal(await epochAfterSettling(store), 0);
});

test("a host's first start (no key before) rotates nothing", async () => {
  const store = await fresh();
  await cluster(store);
  const c = controller(store, false);
  await c.start();
  await c.activate();
  assert.equal(await epochAfterSettling(store), 0);
});
