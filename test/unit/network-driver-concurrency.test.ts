/**
 * Docker's requests on different endpoints of one network run side by side (a burst of
 * `docker run`, a `compose up`): their store waits overlap instead of queueing behind each other,
 * while the overlay is never removed under a Join that is still under way, and a failed Join
 * leaves no overlay nobody uses. The driver runs over the real embedded store with endpoint
 * writes slowed, held or failed per key; the dataplane is a recording stand-in.
 */
import { after, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { RecordStore } from '../../src/driver/record-store';
import { NetworkDriver } from '../../src/driver/network-driver';
import { silentLogger } from '../../src/log';
import { LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { openStore } from '../../src/store/open';
import type { Store } from '../../src/store/store';
import { RecordingDataplane } from '../helpers/recording-dataplane';
import { gatedWrites } from '../helpers/gated-store';

const NET = 'n'.repeat(64);
const id = (n: number) => n.toString(16).padStart(64, 'e');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('NetworkDriver: requests on different endpoints of one network', () => {
  const dirs: string[] = [];
  const stores: Store[] = [];
  let dp: RecordingDataplane;
  let driver: NetworkDriver;
  /** Per-key behaviour of the next endpoint writes. */
  let gate: (key: string) => Promise<void>;

  beforeEach(async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tso-concurrency-'));
    dirs.push(dir);
    const real = await openStore(`local://${dir}`, { logger: silentLogger() });
    stores.push(real);
    gate = async () => undefined;
    dp = new RecordingDataplane();
    driver = new NetworkDriver(new RecordStore(gatedWrites(real, (k) => gate(k))), dp, { name: 'h1', vtep: '10.0.0.1', underlayMtu: 1500 }, silentLogger(), undefined, undefined, undefined, {
      requestTimeoutMs: 5000,
    });
    await driver.createNetwork({
      networkId: NET,
      genericOptions: {},
      ipv4: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.9.0.0/22', gateway: '10.9.0.1/22' }],
      ipv6: [],
    });
  });
  after(async () => {
    for (const s of stores) await s.close();
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  const endpointKey = (n: number) => `endpoints/10.9.0.0-22/${id(n)}`;
  const run = async (n: number) => {
    await driver.createEndpoint({ networkId: NET, endpointId: id(n), address: `10.9.0.${n + 10}/22` });
    await driver.join(NET, id(n));
  };

  test('a burst of containers on one network: their slow store writes overlap', async () => {
    const N = 20;
    const WRITE_MS = 50;
    await run(0); // the overlay exists, as it does after the first container
    gate = async (key) => {
      if (key.startsWith('endpoints/')) await sleep(WRITE_MS);
    };
    const t0 = performance.now();
    await Promise.all(Array.from({ length: N }, (_, i) => run(i + 1)));
    const ms = performance.now() - t0;
    // One after another they would need 2 × N writes (CreateEndpoint's and Join's) in a row.
    assert.ok(ms < (N * 2 * WRITE_MS) / 4, `${N} containers took ${Math.round(ms)} ms; in a row they would take ${N * 2 * WRITE_MS} ms`);
    assert.equal(dp.ports.get(NET)?.size, N + 1, 'every veth pair is in the overlay');
  });

  test('a Leave of the last other container while a Join is under way does not remove the overlay', async () => {
    await run(1);
    await driver.createEndpoint({ networkId: NET, endpointId: id(2), address: '10.9.0.12/22' });
    let open!: () => void;
    const held = new Promise<void>((r) => (open = r));
    gate = async (key) => {
      if (key === endpointKey(2)) await held;
    };
    const joining = driver.join(NET, id(2));
    while (!dp.ports.get(NET)?.has(id(2))) await sleep(1); // its veth pair is attached, its record not yet written
    await driver.leave(NET, id(1));
    await driver.deleteEndpoint(NET, id(1));
    assert.ok(dp.overlays.has(NET), 'the overlay stays for the Join under way');
    open();
    await joining;
    assert.ok(dp.overlays.has(NET));
    assert.deepEqual([...dp.ports.get(NET)!], [id(2)], 'the joined container keeps its veth pair');
  });

  test('a Join that fails after a Leave let the overlay be removes it; another Join beside it keeps it', async () => {
    await run(1);
    await driver.createEndpoint({ networkId: NET, endpointId: id(2), address: '10.9.0.12/22' });
    let fail!: () => void;
    const failing = new Promise<void>((_, reject) => (fail = () => reject(new Error('store refused the write'))));
    failing.catch(() => undefined);
    gate = async (key) => {
      if (key === endpointKey(2)) await failing;
    };
    const joining = driver.join(NET, id(2));
    while (!dp.ports.get(NET)?.has(id(2))) await sleep(1);
    await driver.leave(NET, id(1));
    assert.ok(dp.overlays.has(NET), 'kept while the Join is under way');
    fail();
    await assert.rejects(joining, /store refused the write/);
    assert.equal(dp.overlays.has(NET), false, 'nobody on this host uses the overlay any more: removed');

    // Two first Joins on a cold overlay, one fails: the other keeps the overlay the pair built.
    await driver.createEndpoint({ networkId: NET, endpointId: id(3), address: '10.9.0.13/22' });
    let fail4!: () => void;
    const failing4 = new Promise<void>((_, reject) => (fail4 = () => reject(new Error('store refused the write'))));
    failing4.catch(() => undefined);
    await driver.createEndpoint({ networkId: NET, endpointId: id(4), address: '10.9.0.14/22' });
    gate = async (key) => {
      if (key === endpointKey(4)) await failing4;
    };
    const j4 = driver.join(NET, id(4));
    const j3 = driver.join(NET, id(3));
    await j3;
    fail4();
    await assert.rejects(j4, /store refused the write/);
    assert.ok(dp.overlays.has(NET), 'the overlay stays for the container that joined');
    assert.deepEqual([...dp.ports.get(NET)!], [id(3)]);
  });
});
