/**
 * The Store contract, as node:test tests, run against every backend
 * (local file, etcd, Consul) by the backend's own test file.
 */

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import type { KVEntry, Store, WatchEvent, WatchListener } from '../../src/store/store';

export interface StoreFixture {
  /** A fresh, empty store (its own prefix or its own directory). */
  store: Store;
  /**
   * Another client on the same data, its prefix being the fixture's prefix + `subPrefix`.
   * Local store: only once every other client of the directory is closed.
   */
  open(subPrefix?: string): Promise<Store>;
  /** Closes every client the fixture opened and removes the data. */
  cleanup(): Promise<void>;
}

export interface StoreContractOptions {
  /** Lease TTL used by the lease tests (a backend's minimum), default 2 s. */
  leaseTtlSeconds?: number;
  /** Upper bound for a dead holder's keys to vanish, default 2 × TTL + 3 s. */
  leaseExpiryBoundMs?: number;
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Records what a watch delivers and keeps the level state it implies. */
export class WatchRecorder implements WatchListener {
  readonly resets: KVEntry[][] = [];
  readonly events: WatchEvent[] = [];
  readonly errors: Error[] = [];
  readonly state = new Map<string, KVEntry>();

  readonly resetRevisions: number[] = [];

  onReset(entries: KVEntry[], revision: number): void {
    this.resets.push(entries);
    this.resetRevisions.push(revision);
    this.state.clear();
    for (const e of entries) this.state.set(e.key, e);
  }

  onEvents(events: WatchEvent[]): void {
    for (const ev of events) {
      this.events.push(ev);
      if (ev.type === 'put') this.state.set(ev.key, { key: ev.key, value: ev.value, revision: ev.revision });
      else this.state.delete(ev.key);
    }
  }

  onError(err: Error): void {
    this.errors.push(err);
  }

  sortedState(): KVEntry[] {
    return [...this.state.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
}

const kv = (entries: KVEntry[]): Array<[string, string]> => entries.map((e) => [e.key, e.value]);

export function runStoreContract(
  name: string,
  factory: () => Promise<StoreFixture>,
  options: StoreContractOptions = {},
): void {
  const ttl = options.leaseTtlSeconds ?? 2;
  const expiryBound = options.leaseExpiryBoundMs ?? 2 * ttl * 1000 + 3000;

  async function withFixture(fn: (f: StoreFixture) => Promise<void>): Promise<void> {
    const f = await factory();
    try {
      await fn(f);
    } finally {
      await f.cleanup();
    }
  }

  describe(`Store contract: ${name}`, () => {
    test('get/put/list: round-trip, sorted, bounded by prefix', () =>
      withFixture(async ({ store }) => {
        assert.equal(await store.get('nope'), undefined);
        const value = JSON.stringify({ ip: '10.0.0.2', name: 'ünïcødé ✓', nested: { a: [1, 2] } });
        const r1 = await store.put('net/b', value);
        assert.ok(Number.isInteger(r1) && r1 > 0, `revision ${r1}`);
        assert.deepEqual(await store.get('net/b'), { key: 'net/b', value, revision: r1 });

        await store.put('net/c', '3');
        await store.put('net/a', '1');
        await store.put('net', 'bare');
        await store.put('network/x', 'sibling');
        await store.put('a-first', 'other');
        const r2 = await store.put('net/b', 'updated');
        assert.ok(r2 > r1, 'overwrite bumps the revision');
        assert.equal((await store.get('net/b'))?.revision, r2);

        const listed = await store.list('net/');
        assert.deepEqual(kv(listed), [
          ['net/a', '1'],
          ['net/b', 'updated'],
          ['net/c', '3'],
        ]);
        assert.deepEqual(
          (await store.list('')).map((e) => e.key),
          ['a-first', 'net', 'net/a', 'net/b', 'net/c', 'network/x'],
        );
        assert.deepEqual(await store.list('zzz/'), []);
        assert.equal(await store.put('empty', ''), (await store.get('empty'))?.revision);
        assert.equal((await store.get('empty'))?.value, '');
      }));

    test('store prefix isolation: a client with a longer prefix sees only its subtree', () =>
      withFixture(async (f) => {
        await f.store.put('k', 'outer');
        await f.store.put('sub/k', 'inner');
        await f.store.put('subway', 'not-in-sub');
        await f.store.close();

        const inner = await f.open('sub/');
        assert.deepEqual(kv(await inner.list('')), [['k', 'inner']]);
        assert.equal((await inner.get('k'))?.value, 'inner');
        await inner.put('n', 'from-inner');
        await inner.deletePrefix('');
        await inner.put('m', 'kept');
        await inner.close();

        const outer = await f.open();
        assert.deepEqual(kv(await outer.list('')), [
          ['k', 'outer'],
          ['sub/m', 'kept'],
          ['subway', 'not-in-sub'],
        ]);
      }));

    test('create: only if absent', () =>
      withFixture(async ({ store }) => {
        const r = await store.create('c/1', 'first');
        assert.ok(typeof r === 'number' && r > 0);
        assert.equal(await store.create('c/1', 'second'), undefined);
        assert.deepEqual(await store.get('c/1'), { key: 'c/1', value: 'first', revision: r });
        await store.delete('c/1');
        const r2 = await store.create('c/1', 'again');
        assert.ok(r2 !== undefined && r2 > r);
        assert.equal((await store.get('c/1'))?.value, 'again');
      }));

    test('compareAndSet: stale revision fails, current succeeds, 0 means absent', () =>
      withFixture(async ({ store }) => {
        const r1 = await store.put('cas/x', 'v1');
        const r2 = await store.compareAndSet('cas/x', 'v2', r1);
        assert.ok(r2 !== undefined && r2 > r1);
        assert.equal(await store.compareAndSet('cas/x', 'stale', r1), undefined);
        assert.deepEqual(await store.get('cas/x'), { key: 'cas/x', value: 'v2', revision: r2 });
        assert.equal(await store.compareAndSet('cas/missing', 'v', r2), undefined, 'no revision matches a missing key');
        assert.equal(await store.get('cas/missing'), undefined);
        assert.equal(await store.compareAndSet('cas/x', 'v', 0), undefined, 'revision 0 fails on an existing key');
        const r3 = await store.compareAndSet('cas/new', 'made', 0);
        assert.ok(r3 !== undefined, 'revision 0 creates an absent key');
        assert.equal((await store.get('cas/new'))?.value, 'made');
      }));

    test('compareAndDelete', () =>
      withFixture(async ({ store }) => {
        const r1 = await store.put('cad/x', 'v1');
        const r2 = await store.put('cad/x', 'v2');
        assert.equal(await store.compareAndDelete('cad/x', r1), false);
        assert.equal((await store.get('cad/x'))?.value, 'v2');
        assert.equal(await store.compareAndDelete('cad/x', r2), true);
        assert.equal(await store.get('cad/x'), undefined);
        assert.equal(await store.compareAndDelete('cad/x', r2), false, 'already gone');
        assert.equal(await store.compareAndDelete('cad/never', 0), false, 'missing key');
      }));

    test('delete: removes the key; a missing key is not an error', () =>
      withFixture(async ({ store }) => {
        await store.delete('d/missing');
        await store.put('d/x', '1');
        await store.put('d/xy', '2');
        await store.delete('d/x');
        assert.equal(await store.get('d/x'), undefined);
        assert.equal((await store.get('d/xy'))?.value, '2', 'delete is exact, not a prefix');
        await store.delete('d/x');
      }));

    test('deletePrefix: removes exactly the subtree', () =>
      withFixture(async ({ store }) => {
        for (const k of ['p/a', 'p/b/c', 'p', 'pq', 'q/p/a']) await store.put(k, k);
        await store.deletePrefix('p/');
        assert.deepEqual(
          (await store.list('')).map((e) => e.key),
          ['p', 'pq', 'q/p/a'],
        );
        await store.deletePrefix('nothing/');
      }));

    test('revisions increase monotonically across keys and operations', () =>
      withFixture(async ({ store }) => {
        const revs: number[] = [];
        revs.push(await store.put('m/a', '1'));
        revs.push(await store.put('m/b', '1'));
        const c = await store.create('m/c', '1');
        assert.ok(c !== undefined);
        revs.push(c);
        const s = await store.compareAndSet('m/a', '2', revs[0] ?? 0);
        assert.ok(s !== undefined);
        revs.push(s);
        await store.delete('m/b');
        revs.push(await store.put('m/b', '2'));
        revs.push(await store.put('m/a', '3'));
        for (let i = 1; i < revs.length; i++) {
          assert.ok((revs[i] ?? 0) > (revs[i - 1] ?? 0), `revisions ${revs.join(', ')} strictly increase`);
        }
        const listed = await store.list('m/');
        assert.deepEqual(
          listed.map((e) => e.revision),
          [revs[5], revs[4], revs[2]],
          'entries carry the revision of their last write',
        );
      }));

    test('watch: onReset with initial state, then put/delete events in order, nothing outside the prefix', () =>
      withFixture(async ({ store }) => {
        const ra = await store.put('w/a', '1');
        const rb = await store.put('w/b', '2');
        await store.put('x/c', 'outside');
        await store.put('w', 'bare key, not under w/');
        const rec = new WatchRecorder();
        const watch = store.watch('w/', rec);
        try {
          await waitFor(() => rec.resets.length > 0, 10_000, 'onReset');
          assert.deepEqual(rec.resets[0], [
            { key: 'w/a', value: '1', revision: ra },
            { key: 'w/b', value: '2', revision: rb },
          ]);

          const r1 = await store.put('w/c', '3');
          await waitFor(() => rec.events.length >= 1, 10_000, 'put event');
          await store.put('x/d', 'outside');
          await store.put('wx', 'outside');
          await store.delete('w/a');
          await waitFor(() => rec.events.length >= 2, 10_000, 'delete event');
          const r3 = await store.put('w/b', '4');
          await waitFor(() => rec.events.length >= 3, 10_000, 'update event');
          await store.delete('w/none'); // no-op: no event
          await store.put('w/', 'prefix itself');
          await waitFor(() => rec.events.length >= 4, 10_000, 'event for the prefix key itself');

          const [e1, e2, e3, e4] = rec.events;
          assert.deepEqual(e1, { type: 'put', key: 'w/c', value: '3', revision: r1 });
          assert.equal(e2?.type, 'delete');
          assert.equal(e2?.key, 'w/a');
          assert.ok(e2 !== undefined && e2.revision > r1 && e2.revision < r3, 'delete revision between neighbours');
          assert.deepEqual(e3, { type: 'put', key: 'w/b', value: '4', revision: r3 });
          assert.equal(e4?.key, 'w/');
          await new Promise((r) => setTimeout(r, 300));
          assert.equal(rec.events.length, 4, `no further events: ${JSON.stringify(rec.events.slice(4))}`);
          assert.ok(rec.events.every((e) => e.key.startsWith('w/')));
          assert.equal(rec.resets.length, 1, 'no spurious reset');
        } finally {
          await watch.close();
        }
      }));

    test('watch: onReset carries a revision that covers the deletes before it and precedes later events', () =>
      withFixture(async ({ store }) => {
        const ra = await store.put('v/a', '1');
        const rz = await store.put('v/z', 'gone soon');
        await store.delete('v/z');
        const rec = new WatchRecorder();
        const watch = store.watch('v/', rec);
        try {
          await waitFor(() => rec.resets.length > 0, 10_000, 'onReset');
          const at = rec.resetRevisions[0]!;
          assert.deepEqual(rec.resets[0], [{ key: 'v/a', value: '1', revision: ra }]);
          assert.ok(at > rz, `reset revision ${at} reflects the delete made after ${rz}`);
          const rb = await store.put('v/b', '2');
          assert.ok(rb > at, `a later write (${rb}) is above the reset revision (${at})`);
          await waitFor(() => rec.events.length >= 1, 10_000, 'put event');
          assert.ok(rec.events.every((e) => e.revision > at));
        } finally {
          await watch.close();
        }
      }));

    test('watch: reset + events rebuild exactly the listed state after a burst', () =>
      withFixture(async ({ store }) => {
        await store.put('b/0', 'init');
        const rec = new WatchRecorder();
        const watch = store.watch('b/', rec);
        try {
          await waitFor(() => rec.resets.length > 0, 10_000, 'onReset');
          let seed = 7;
          const rnd = (n: number): number => {
            seed = (seed * 1103515245 + 12345) % 2147483648;
            return seed % n;
          };
          for (let i = 0; i < 40; i++) {
            const key = `b/${rnd(5)}`;
            const op = rnd(4);
            if (op === 0) await store.delete(key);
            else if (op === 1) await store.create(key, `c${i}`);
            else if (op === 2) {
              const cur = await store.get(key);
              await store.compareAndSet(key, `s${i}`, cur?.revision ?? 0);
            } else await store.put(key, `p${i}`);
          }
          const expected = await store.list('b/');
          await waitFor(
            () => JSON.stringify(rec.sortedState()) === JSON.stringify(expected),
            10_000,
            `watch state to converge to ${JSON.stringify(expected)}`,
          );
          const revs = rec.events.map((e) => e.revision);
          assert.deepEqual([...revs].sort((a, b) => a - b), revs, 'events arrive in revision order');
        } finally {
          await watch.close();
        }
      }));

    test('watch: close stops delivery; two watches are independent', () =>
      withFixture(async ({ store }) => {
        const a = new WatchRecorder();
        const b = new WatchRecorder();
        const wa = store.watch('c/', a);
        const wb = store.watch('c/', b);
        try {
          await waitFor(() => a.resets.length > 0 && b.resets.length > 0, 10_000, 'both resets');
          await store.put('c/1', 'x');
          await waitFor(() => a.events.length === 1 && b.events.length === 1, 10_000, 'both see the put');
          await wa.close();
          await store.put('c/2', 'y');
          await waitFor(() => b.events.length === 2, 10_000, 'open watch sees the second put');
          await new Promise((r) => setTimeout(r, 200));
          assert.equal(a.events.length, 1, 'closed watch got nothing more');
        } finally {
          await wa.close();
          await wb.close();
        }
      }));

    test('lease: keys written with a lease vanish on revoke; onLost does not fire', { timeout: 30_000 }, () =>
      withFixture(async ({ store }) => {
        const lease = await store.grantLease(ttl);
        assert.ok(lease.id.length > 0);
        assert.ok(lease.ttlSeconds >= ttl);
        let lost = 0;
        lease.onLost(() => lost++);
        await store.put('l/put', 'v', { lease });
        assert.ok((await store.create('l/create', 'v', { lease })) !== undefined);
        const base = await store.put('l/cas', 'v');
        assert.ok((await store.compareAndSet('l/cas', 'v2', base, { lease })) !== undefined);
        await store.put('l/plain', 'v');
        assert.equal((await store.list('l/')).length, 4);

        const rec = new WatchRecorder();
        const watch = store.watch('l/', rec);
        try {
          await waitFor(() => rec.resets.length > 0, 10_000, 'onReset');
          await lease.revoke();
          await waitFor(async () => (await store.list('l/')).length === 1, 5_000, 'leased keys to go');
          assert.deepEqual(kv(await store.list('l/')), [['l/plain', 'v']]);
          await waitFor(() => rec.events.filter((e) => e.type === 'delete').length === 3, 10_000, 'three delete events');
          assert.deepEqual(kv(rec.sortedState()), [['l/plain', 'v']]);
          await new Promise((r) => setTimeout(r, (ttl + 1) * 1000));
          assert.equal(lost, 0, 'revoke is not a loss');
          await assert.rejects(store.put('l/late', 'v', { lease }), 'a revoked lease cannot be used');
        } finally {
          await watch.close();
        }
      }));

    test('lease: keys of a holder that dies without revoking vanish', { timeout: expiryBound + 30_000 }, (t) =>
      withFixture(async (f) => {
        if (!f.store.distributed) {
          // Single process: the holder "dies" with its process; on the next open its leased keys are gone.
          const lease = await f.store.grantLease(ttl);
          await f.store.put('dead/leased', 'v', { lease });
          await f.store.put('dead/plain', 'v');
          await f.store.close();
          const reopened = await f.open();
          assert.deepEqual(kv(await reopened.list('dead/')), [['dead/plain', 'v']]);
          return;
        }
        const holder = await f.open();
        const lease = await holder.grantLease(ttl);
        await holder.put('dead/leased', 'v', { lease });
        await f.store.put('dead/plain', 'v');
        const rec = new WatchRecorder();
        const watch = f.store.watch('dead/', rec);
        try {
          await waitFor(() => rec.resets.length > 0, 10_000, 'onReset');
          assert.equal(rec.state.size, 2);
          await holder.close(); // stops keepalives, does not revoke
          const closedAt = Date.now();
          assert.equal((await f.store.get('dead/leased'))?.value, 'v', 'closing a client does not revoke its lease');
          await waitFor(async () => (await f.store.get('dead/leased')) === undefined, expiryBound, 'the dead holder key to expire');
          const gone = Date.now() - closedAt;
          await waitFor(() => !rec.state.has('dead/leased'), 10_000, 'the watch to report the expiry');
          const seen = Date.now() - closedAt;
          t.diagnostic(`${name}: leased key gone ${gone} ms after its holder stopped renewing (TTL ${ttl} s); watch reported it after ${seen} ms`);
          assert.deepEqual(kv(await f.store.list('dead/')), [['dead/plain', 'v']]);
          assert.equal(rec.events.at(-1)?.type, 'delete');
        } finally {
          await watch.close();
        }
      }));

    test('concurrency: 20 parallel creates of one key have exactly one winner', () =>
      withFixture(async ({ store }) => {
        const results = await Promise.all(Array.from({ length: 20 }, (_, i) => store.create('race/one', `w${i}`)));
        const winners = results.map((r, i) => (r === undefined ? -1 : i)).filter((i) => i >= 0);
        assert.equal(winners.length, 1, `winners: ${winners.join(',')}`);
        const got = await store.get('race/one');
        assert.equal(got?.value, `w${winners[0]}`);
        assert.equal(got?.revision, results[winners[0] ?? 0]);
      }));

    test('concurrency: 20 parallel CAS increments with retry end at 20', { timeout: 60_000 }, (t) =>
      withFixture(async ({ store }) => {
        await store.put('race/counter', '0');
        let retries = 0;
        const worker = async (): Promise<void> => {
          for (let attempt = 0; attempt < 200; attempt++) {
            const cur = await store.get('race/counter');
            assert.ok(cur);
            if ((await store.compareAndSet('race/counter', String(Number(cur.value) + 1), cur.revision)) !== undefined) return;
            retries++;
          }
          throw new Error('CAS increment starved');
        };
        await Promise.all(Array.from({ length: 20 }, worker));
        assert.equal((await store.get('race/counter'))?.value, '20');
        t.diagnostic(`${name}: 20 CAS increments needed ${retries} retries`);
      }));

    test('durability: data survives close and reopen; revisions keep increasing', () =>
      withFixture(async (f) => {
        const ra = await f.store.put('dur/a', 'A');
        const rb = await f.store.put('dur/b', 'B');
        await f.store.delete('dur/a');
        await f.store.put('dur/a', 'A2');
        const last = await f.store.put('dur/c', 'C');
        const before = await f.store.list('');
        await f.store.close();
        const again = await f.open();
        assert.deepEqual(await again.list(''), before);
        assert.deepEqual(await again.get('dur/b'), { key: 'dur/b', value: 'B', revision: rb });
        const next = await again.put('dur/d', 'D');
        assert.ok(next > last && last > ra, 'revision counter continues after reopen');
      }));

    test('a closed store rejects calls; close is idempotent', () =>
      withFixture(async ({ store }) => {
        await store.put('z', '1');
        await store.close();
        await store.close();
        await assert.rejects(store.get('z'));
        await assert.rejects(store.put('z', '2'));
      }));
  });
}
