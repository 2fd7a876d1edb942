/**
 * Issue 15, item 4, for the network driver: one deadline per request covers its wait for the
 * network's lock and every store call it makes; a request that runs out of time fails with a
 * clear error, leaves no kernel state behind, and an endpoint record the store applies after
 * the request gave up is removed. The driver runs over the real embedded store with endpoint
 * writes held back (as a stalled store would); the dataplane is a recording stand-in.
 */
import { after, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { RecordStore } from '../../src/driver/record-store';
import { NetworkDriver } from '../../src/driver/network-driver';
import { RecordingDataplane } from '../helpers/recording-dataplane';
import { gatedWrites } from '../helpers/gated-store';
import { silentLogger } from '../../src/log';
import { LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { openStore } from '../../src/store/open';
import type { Store } from '../../src/store/store';

/** The real store, with writes of endpoint records held until `release()` (then applied, late). */
function holdingEndpointWrites(store: Store): { store: Store; hold(): void; release(): void } {
  let gate: Promise<void> | undefined;
  let open = (): void => undefined;
  const wait = (key: string): Promise<void> => (gate && key.startsWith('endpoints/') ? gate : Promise.resolve());
  return {
    hold: () => {
      gate = new Promise((resolve) => (open = resolve));
    },
    release: () => {
      gate = undefined;
      open();
    },
    store: gatedWrites(store, wait),
  };
}

const NET = 'n'.repeat(64);
const id = (c: string) => c.repeat(64);
const TIMEOUT_MS = 400;

describe('NetworkDriver: one deadline per request', () => {
  const dirs: string[] = [];
  const stores: Store[] = [];
  let real: Store;
  let held: ReturnType<typeof holdingEndpointWrites>;
  let dp: RecordingDataplane;
  let driver: NetworkDriver;

  beforeEach(async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tso-deadline-'));
    dirs.push(dir);
    real = await openStore(`local://${dir}`, { logger: silentLogger() });
    stores.push(real);
    held = holdingEndpointWrites(real);
    dp = new RecordingDataplane();
    driver = new NetworkDriver(new RecordStore(held.store), dp, { name: 'h1', vtep: '10.0.0.1', underlayMtu: 1500 }, silentLogger(), undefined, undefined, undefined, {
      requestTimeoutMs: TIMEOUT_MS,
    });
    await driver.createNetwork({
      networkId: NET,
      genericOptions: {},
      ipv4: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.9.0.0/24', gateway: '10.9.0.1/24' }],
      ipv6: [],
    });
  });
  after(async () => {
    for (const s of stores) await s.close();
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  const timed = async (p: Promise<unknown>): Promise<{ ms: number; err: Error | undefined }> => {
    const t0 = performance.now();
    try {
      await p;
      return { ms: performance.now() - t0, err: undefined };
    } catch (err) {
      return { ms: performance.now() - t0, err: err as Error };
    }
  };

  test('CreateEndpoint whose write does not answer fails in time, removes its veth pair, and its late record', async () => {
    await driver.createEndpoint({ networkId: NET, endpointId: id('a'), address: '10.9.0.2/24' });
    await driver.join(NET, id('a'));
    dp.calls = [];
    held.hold();
    const r = await timed(driver.createEndpoint({ networkId: NET, endpointId: id('b'), address: '10.9.0.3/24' }));
    assert.ok(r.err, 'CreateEndpoint failed');
    assert.match(r.err.message, /deadline passed/);
    assert.ok(r.ms < TIMEOUT_MS * 3, `answered after ${Math.round(r.ms)} ms`);
    assert.deepEqual(dp.calls, [`attach ${id('b')}`, `detach ${id('b')}`], 'the prepared pair is removed');
    // The store applies the write after all: the record is removed, the joined endpoint's is kept.
    held.release();
    const key = `endpoints/10.9.0.0-24/${id('b')}`;
    for (let i = 0; i < 50 && (await real.get(key)) === undefined; i++) await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < 100 && (await real.get(key)) !== undefined; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(await real.get(key), undefined, 'the late record of the failed CreateEndpoint is gone');
    assert.ok(await real.get(`endpoints/10.9.0.0-24/${id('a')}`), 'the joined endpoint is untouched');
  });

  test('Join whose commit does not answer fails in time and rolls back the overlay it built', async () => {
    await driver.createEndpoint({ networkId: NET, endpointId: id('c'), address: '10.9.0.4/24' });
    dp.calls = [];
    held.hold();
    const r = await timed(driver.join(NET, id('c')));
    held.release();
    assert.ok(r.err, 'Join failed');
    assert.match(r.err.message, /deadline passed/);
    assert.ok(r.ms < TIMEOUT_MS * 3, `answered after ${Math.round(r.ms)} ms`);
    assert.deepEqual(dp.calls, ['ensureOverlay', `attach ${id('c')}`, `detach ${id('c')}`, 'removeOverlay']);
    assert.equal(dp.overlays.size, 0, 'no overlay left');
  });

  test('requests queued behind a stalled one fail when their own deadline passes, not one after another', async () => {
    await driver.createEndpoint({ networkId: NET, endpointId: id('d'), address: '10.9.0.5/24' });
    held.hold();
    const t0 = performance.now();
    const results = await Promise.all([
      timed(driver.join(NET, id('d'))),
      ...['e', 'f', 'g', 'h'].map((c, i) => timed(driver.createEndpoint({ networkId: NET, endpointId: id(c), address: `10.9.0.${10 + i}/24` }))),
      timed(driver.leave(NET, id('d'))),
    ]);
    const total = performance.now() - t0;
    held.release();
    // Every request that must write an endpoint record fails in time. The Leave waits for the
    // Join of its own endpoint; if that Join's failure frees it with time left, the endpoint was
    // never joined and the Leave has nothing to write, so it may succeed: Docker's Leave after a
    // failed Join is answered either way.
    const [join, ...rest] = results;
    const creates = rest.slice(0, 4);
    const leave = rest[4]!;
    assert.match(join!.err?.message ?? 'succeeded', /deadline passed/);
    for (const r of creates) assert.match(r.err?.message ?? 'succeeded', /timed out waiting for its turn|deadline passed/);
    if (leave.err) assert.match(leave.err.message, /timed out waiting for its turn|deadline passed/);
    assert.ok(total < TIMEOUT_MS * 3, `all answered within ${Math.round(total)} ms`);
  });
});
